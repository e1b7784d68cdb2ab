"""Data for keras_ov2: sources of image-caption records for Grain pipelines."""

from keras_ov2.data.synthetic_scenes import COLOURS
from keras_ov2.data.synthetic_scenes import COUNTS
from keras_ov2.data.synthetic_scenes import LABEL_CLASSES
from keras_ov2.data.synthetic_scenes import RELATIONS
from keras_ov2.data.synthetic_scenes import SHAPES
from keras_ov2.data.synthetic_scenes import SIZES
from keras_ov2.data.synthetic_scenes import SyntheticScenes
from keras_ov2.data.array_record_source import ArrayRecordSource
from keras_ov2.data.build import build_array_record
from keras_ov2.data.jsonl_folder_source import JsonlFolderSource
from keras_ov2.data.parquet_source import ParquetSource
from keras_ov2.data.pipeline import make_pretraining_dataset
from keras_ov2.data.record_format import RecordFormatError
from keras_ov2.data.record_format import decode_record
from keras_ov2.data.record_format import encode_record
from keras_ov2.data.record_split import RecordRange
from keras_ov2.data.record_split import split_held_out
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.sources import open_source
from keras_ov2.data.webdataset_source import WebDatasetSource
