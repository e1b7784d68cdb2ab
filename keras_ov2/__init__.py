"""keras_ov2: OpenVision 2 vision encoders for Keras 3 (JAX, TensorFlow, PyTorch)."""

from keras_ov2 import layers
from keras_ov2.models import OpenVision2Backbone
from keras_ov2.models import OpenVision2Captioner
from keras_ov2.models import OpenVision2CaptionerPreprocessor
from keras_ov2.models import OpenVision2ImageConverter
from keras_ov2.models import OpenVision2TextDecoder
from keras_ov2.models import OpenVision2Tokenizer
from keras_ov2.models import OpenVision1CaptionDecoder
from keras_ov2.models import OpenVision1Preprocessor
from keras_ov2.models import OpenVision1TextEncoder
from keras_ov2.models import OpenVisionCLIPS
from keras_ov2.models.presets import list_presets
from keras_ov2.version import __version__
