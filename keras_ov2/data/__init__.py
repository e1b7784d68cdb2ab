"""Data for keras_ov2: sources of image-caption records for Grain pipelines."""

from keras_ov2.data.synthetic_scenes import COLOURS
from keras_ov2.data.synthetic_scenes import COUNTS
from keras_ov2.data.synthetic_scenes import LABEL_CLASSES
from keras_ov2.data.synthetic_scenes import RELATIONS
from keras_ov2.data.synthetic_scenes import SHAPES
from keras_ov2.data.synthetic_scenes import SIZES
from keras_ov2.data.synthetic_scenes import SyntheticScenes
