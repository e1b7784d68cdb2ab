"""Training recipes: OpenVision 2 pretraining by captioning, in resolution stages,
on one device or a mesh, checkpointed and resumable."""

from keras_ov2.training.checkpoint import CheckpointError
from keras_ov2.training.pretrain import DEFAULT_PRESET
from keras_ov2.training.pretrain import DEFAULT_STAGES
from keras_ov2.training.pretrain import Progress
from keras_ov2.training.pretrain import RunOptions
from keras_ov2.training.pretrain import Stage
from keras_ov2.training.pretrain import pretrain
from keras_ov2.training.report import tidy
from keras_ov2.training.setup import MULTI_HOST_VARIABLES
from keras_ov2.training.setup import TrainingSetup
from keras_ov2.training.setup import load_captioner
from keras_ov2.training.setup import parse_mesh
from keras_ov2.training.setup import setup_training
