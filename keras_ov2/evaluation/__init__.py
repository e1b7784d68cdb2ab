"""Evaluation of encoders: linear probes on frozen features and zero-shot
classification by caption scoring, on the built-in scenes or an image folder."""

from keras_ov2.lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "probe_results": "keras_ov2.evaluation.evaluate",
    "zero_shot_results": "keras_ov2.evaluation.evaluate",
    "extract_features": "keras_ov2.evaluation.features",
    "select_features": "keras_ov2.evaluation.features",
    "FolderError": "keras_ov2.evaluation.image_folder",
    "folder_eval_set": "keras_ov2.evaluation.image_folder",
    "LinearProbe": "keras_ov2.evaluation.linear_probe",
    "chance_accuracy": "keras_ov2.evaluation.linear_probe",
    "fit_linear_probe": "keras_ov2.evaluation.linear_probe",
    "probe_accuracy": "keras_ov2.evaluation.linear_probe",
    "named_objects": "keras_ov2.evaluation.scene_captions",
    "scene_caption_accuracy": "keras_ov2.evaluation.scene_captions",
    "EvalSet": "keras_ov2.evaluation.tasks",
    "Task": "keras_ov2.evaluation.tasks",
    "synthetic_eval_set": "keras_ov2.evaluation.tasks",
    "class_scores": "keras_ov2.evaluation.zero_shot",
    "zero_shot_predict": "keras_ov2.evaluation.zero_shot",
})
