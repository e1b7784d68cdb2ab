"""ImageNet mean/std normalisation of 0-255 images, done on the device."""

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image_dtype(dtype, owner):
    """Pixels are integers (uint8) or floats on the 0-255 scale; anything else
    (bool, strings, complex) is a mistake worth naming early."""
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" not in dtype and "float" not in dtype:
        raise ValueError(
            f"{owner} expects images of an integer (e.g. uint8) or float "
            f"dtype holding 0-255 pixel values; received dtype {dtype}."
        )


def check_uint8_images(images, owner):
    """The pretraining tasks take the uint8 batches their preprocessors make;
    catch anything else before the functional graph silently casts it."""
    shape = tuple(images.shape)
    dtype = keras.backend.standardize_dtype(images.dtype)
    if len(shape) != 4 or shape[-1] != 3 or dtype != "uint8":
        raise ValueError(
            f"{owner} expects uint8 images of shape (batch, height, width, 3), "
            f"as its preprocessor produces; received {dtype} images of shape "
            f"{shape}."
        )


@keras.saving.register_keras_serializable(package="keras_ov2")
class ImageNormalization(keras.layers.Layer):
    """(B, H, W, 3) uint8 or float 0-255 images -> `(x - 255 * mean) /
    (255 * std)` with the ImageNet mean/std, as the authors do on the device.

    Batches can then travel host -> device as uint8 (4x less than float32).
    The arithmetic runs in float32 whatever the inputs and the policy, and
    only the result is cast to the compute dtype (autocast is off, so a
    bfloat16 policy does not round the pixels before the subtraction).

    Example:
    ```python
    import numpy as np
    import keras_ov2

    images = np.random.randint(0, 256, size=(2, 84, 84, 3), dtype="uint8")
    keras_ov2.layers.ImageNormalization()(images)  # (2, 84, 84, 3), normalised
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(autocast=False, **kwargs)

    def call(self, images):
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(
                "ImageNormalization expects images of shape "
                f"(batch, height, width, 3); received shape {shape}."
            )
        check_image_dtype(images.dtype, "ImageNormalization")
        mean = ops.convert_to_tensor([255.0 * m for m in IMAGENET_MEAN], "float32")
        std = ops.convert_to_tensor([255.0 * s for s in IMAGENET_STD], "float32")
        outputs = (ops.cast(images, "float32") - mean) / std
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
