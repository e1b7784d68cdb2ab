"""Raw images (+ labels) -> what `OpenVision2ImageClassifier` takes."""

import keras
import keras_hub
from keras_hub.src.utils.preset_utils import IMAGE_CONVERTER_CONFIG_FILE
from keras_hub.src.utils.preset_utils import METADATA_FILE
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter


def metadata_image_size(preset):
    """(size, size) from a preset's metadata.json `image_size` (what the
    shipped encoder configs record), or None."""
    if not check_file_exists(preset, METADATA_FILE):
        return None
    size = load_json(preset, METADATA_FILE).get("image_size")
    return None if size is None else (size, size)


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2ImageClassifierPreprocessor(
    keras_hub.models.ImageClassifierPreprocessor
):
    """Resizes and normalises raw images for `OpenVision2ImageClassifier`;
    labels and sample weights pass through.

    `call(x, y=None, sample_weight=None)` takes one (H, W, 3) image or a
    (B, H, W, 3) batch of 0-255 pixels (uint8 or float) and returns `x`,
    `(x, y)` or `(x, y, sample_weight)`, `x` being the float images
    `OpenVision2Backbone` takes. The image converter always normalises here,
    whatever its own `normalize` default, because the classifier feeds the
    backbone directly. With `image_converter=None` images pass unchanged.

    Runs eagerly and in Grain pipelines (which is where a task's `fit`,
    `predict` and `evaluate` run it), not inside `tf.data`.

    `from_preset` takes the preset's `image_converter.json` when there is
    one. The shipped encoder configs and a bare `Backbone.save_to_preset`
    folder have none: the converter then resizes to the `image_size` in the
    preset's metadata, or keeps each image's size when there is none.

    Args:
        image_converter: an `OpenVision2ImageConverter` or None.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    preprocessor = keras_ov2.OpenVision2ImageClassifierPreprocessor(
        keras_ov2.OpenVision2ImageConverter(image_size=(224, 224))
    )
    images = np.random.randint(0, 256, size=(2, 300, 400, 3), dtype="uint8")
    x = preprocessor(images)  # (2, 224, 224, 3) float32, normalised
    x, y = preprocessor(images, [0, 1])  # labels pass through

    # The preprocessor of an encoder preset.
    preprocessor = keras_ov2.OpenVision2ImageClassifierPreprocessor.from_preset(
        "openvision2_captioner_tiny_patch14_84"
    )
    ```
    """

    backbone_cls = OpenVision2Backbone
    image_converter_cls = OpenVision2ImageConverter

    def call(self, x, y=None, sample_weight=None):
        if self.image_converter is not None:
            x = self.image_converter(x, normalize=True)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        # KerasHub loads image_converter.json, which encoder presets may lack.
        if "image_converter" not in kwargs and not check_file_exists(
            loader.preset, IMAGE_CONVERTER_CONFIG_FILE
        ):
            kwargs["image_converter"] = cls.image_converter_cls(
                image_size=metadata_image_size(loader.preset)
            )
        return super()._add_missing_kwargs(loader, kwargs)
