"""Data for keras_ov2: sources of image-caption records for Grain pipelines."""

from keras_ov2.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "COLOURS": "keras_ov2.data.synthetic_scenes",
    "COUNTS": "keras_ov2.data.synthetic_scenes",
    "LABEL_CLASSES": "keras_ov2.data.synthetic_scenes",
    "RELATIONS": "keras_ov2.data.synthetic_scenes",
    "SHAPES": "keras_ov2.data.synthetic_scenes",
    "SIZES": "keras_ov2.data.synthetic_scenes",
    "SyntheticScenes": "keras_ov2.data.synthetic_scenes",
    "QUESTION_TYPES": "keras_ov2.data.scene_qa",
    "question_records": "keras_ov2.data.scene_qa",
    "scene_questions": "keras_ov2.data.scene_qa",
    "resize": "keras_ov2.data.augment",
    "ArrayRecordSource": "keras_ov2.data.array_record_source",
    "build_array_record": "keras_ov2.data.build",
    "JsonlFolderSource": "keras_ov2.data.jsonl_folder_source",
    "ParquetSource": "keras_ov2.data.parquet_source",
    "make_pretraining_dataset": "keras_ov2.data.pipeline",
    "RecordFormatError": "keras_ov2.data.record_format",
    "decode_record": "keras_ov2.data.record_format",
    "encode_record": "keras_ov2.data.record_format",
    "RecordRange": "keras_ov2.data.record_split",
    "split_held_out": "keras_ov2.data.record_split",
    "SourceError": "keras_ov2.data.source_base",
    "TrainingDefaults": "keras_ov2.data.source_base",
    "open_source": "keras_ov2.data.sources",
    "WebDatasetSource": "keras_ov2.data.webdataset_source",
})
