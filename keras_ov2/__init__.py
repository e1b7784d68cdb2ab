"""keras_ov2: OpenVision 2 vision encoders for Keras 3 (JAX, TensorFlow, PyTorch).

Example:

```python
import keras_ov2

# images: (B, H, W, 3) RGB, uint8 or 0-255 floats.
encoder = keras_ov2.OpenVision2Backbone.from_preset("openvision2_vit_large_patch14_224")
converter = keras_ov2.OpenVision2ImageConverter(image_size=(224, 224))
features = encoder.predict(converter(images))["pooled_output"]  # (B, 1024)
```

The converter resizes and normalises with the ImageNet mean/std, which is
what the backbone takes (it refuses integer images).

The names below load on first use: `import keras_ov2` alone loads no Keras
backend and no TensorFlow.
"""

from keras_ov2.lazy_exports import lazy_exports
from keras_ov2.version import __version__

MODELS = "keras_ov2.models"
__getattr__, __dir__ = lazy_exports(__name__, {
    "OpenVision2Backbone": MODELS,
    "OpenVision2Captioner": MODELS,
    "OpenVision2CaptionerPreprocessor": MODELS,
    "OpenVision2ImageClassifier": MODELS,
    "OpenVision2ImageClassifierPreprocessor": MODELS,
    "OpenVision2ImageConverter": MODELS,
    "OpenVision2TextDecoder": MODELS,
    "OpenVision2Tokenizer": MODELS,
    "OpenVision1CaptionDecoder": MODELS,
    "OpenVision1Preprocessor": MODELS,
    "OpenVision1TextEncoder": MODELS,
    "OpenVisionCLIPS": MODELS,
    "OpenVisionLLaVABackbone": MODELS,
    "OpenVisionLLaVACausalLM": MODELS,
    "OpenVisionLLaVACausalLMPreprocessor": MODELS,
    "OpenVisionLLaVAProjector": MODELS,
    "list_presets": MODELS,
    "convert": "keras_ov2.convert",
    "data": "keras_ov2.data",
    "distribution": "keras_ov2.distribution",
    "evaluation": "keras_ov2.evaluation",
    "flops": "keras_ov2.flops",
    "layers": "keras_ov2.layers",
    "models": "keras_ov2.models",
    "training": "keras_ov2.training",
})
