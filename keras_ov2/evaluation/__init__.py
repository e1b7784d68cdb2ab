"""Evaluation of encoders: linear probes on frozen features and zero-shot
classification by caption scoring, on the built-in scenes or an image folder."""

from keras_ov2.evaluation.evaluate import probe_results
from keras_ov2.evaluation.evaluate import zero_shot_results
from keras_ov2.evaluation.features import extract_features
from keras_ov2.evaluation.features import select_features
from keras_ov2.evaluation.image_folder import FolderError
from keras_ov2.evaluation.image_folder import folder_eval_set
from keras_ov2.evaluation.linear_probe import LinearProbe
from keras_ov2.evaluation.linear_probe import chance_accuracy
from keras_ov2.evaluation.linear_probe import fit_linear_probe
from keras_ov2.evaluation.linear_probe import probe_accuracy
from keras_ov2.evaluation.scene_captions import named_objects
from keras_ov2.evaluation.scene_captions import scene_caption_accuracy
from keras_ov2.evaluation.tasks import EvalSet
from keras_ov2.evaluation.tasks import Task
from keras_ov2.evaluation.tasks import synthetic_eval_set
from keras_ov2.evaluation.zero_shot import class_scores
from keras_ov2.evaluation.zero_shot import zero_shot_predict
