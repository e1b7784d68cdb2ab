"""OpenVision models, one folder per version (KerasHub's layout).

- `common/`: what both versions use: the ViT encoder (`OpenVision2Backbone`,
  the encoder of OpenVision 2 and of v1 alike), its image converter, the
  image classifier that fine-tunes it, the tokenizer, the text-transformer
  blocks, the caption loss, the authors' optimizer recipe and the layout
  maps.
- `openvision2/`: the captioner that pretrains OpenVision 2 (encoder +
  caption decoder, token masking).
- `openvision1/`: OpenVision v1 (CLIPS): text encoder, caption decoder,
  dual contrastive + caption loss.
- `llava/`: a LLaVA-style vision-language model: an OpenVision encoder,
  a projector and any KerasHub causal language model.
- `presets.py`: preset loading for all of them.
"""

from keras_ov2.models import presets
from keras_ov2.models.common.caption_loss import CaptionLoss
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_image_classifier import OpenVision2ImageClassifier
from keras_ov2.models.common.openvision_image_classifier_preprocessor import (
    OpenVision2ImageClassifierPreprocessor,
)
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter
from keras_ov2.models.common.openvision_tokenizer import OpenVision2Tokenizer
from keras_ov2.models.llava.llava_backbone import OpenVisionLLaVABackbone
from keras_ov2.models.llava.llava_causal_lm import OpenVisionLLaVACausalLM
from keras_ov2.models.llava.llava_causal_lm_preprocessor import (
    OpenVisionLLaVACausalLMPreprocessor,
)
from keras_ov2.models.llava.llava_projector import OpenVisionLLaVAProjector
from keras_ov2.models.openvision1.openvision1_caption_decoder import OpenVision1CaptionDecoder
from keras_ov2.models.openvision1.openvision1_clips import OpenVisionCLIPS
from keras_ov2.models.openvision1.openvision1_preprocessor import OpenVision1Preprocessor
from keras_ov2.models.openvision1.openvision1_text_encoder import OpenVision1TextEncoder
from keras_ov2.models.openvision2.openvision2_captioner import OpenVision2Captioner
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.openvision2.openvision2_text_decoder import OpenVision2TextDecoder
from keras_ov2.models.presets import list_presets
