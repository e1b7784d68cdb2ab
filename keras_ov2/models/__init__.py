"""OpenVision models: the encoder backbone, and the tasks built on it."""

from keras_ov2.models import presets
from keras_ov2.models.caption_loss import CaptionLoss
from keras_ov2.models.openvision2_backbone import OpenVision2Backbone
from keras_ov2.models.openvision2_captioner import OpenVision2Captioner
from keras_ov2.models.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.openvision2_image_converter import OpenVision2ImageConverter
from keras_ov2.models.openvision2_text_decoder import OpenVision2TextDecoder
from keras_ov2.models.openvision2_tokenizer import OpenVision2Tokenizer
from keras_ov2.models.openvision1_caption_decoder import OpenVision1CaptionDecoder
from keras_ov2.models.openvision1_preprocessor import OpenVision1Preprocessor
from keras_ov2.models.openvision1_text_encoder import OpenVision1TextEncoder
from keras_ov2.models.openvision_clips import OpenVisionCLIPS

presets.register(OpenVision2Backbone)
