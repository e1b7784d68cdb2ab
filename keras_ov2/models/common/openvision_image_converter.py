"""Raw images -> what `OpenVision2Backbone` takes, or resized uint8 batches."""

import contextlib

import keras
import keras_hub
import numpy as np
from keras import ops
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python
from keras_hub.src.utils.tensor_utils import in_grain_data_pipeline

from keras_ov2.layers.image_normalization import ImageNormalization
from keras_ov2.layers.image_normalization import check_image_dtype
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone


def python_only_error(owner):
    return RuntimeError(
        f"{owner} runs eagerly and inside Grain pipelines "
        "(`grain.MapDataset.map`), not inside `tf.data` or `tf.function`; "
        "map it over a Grain dataset instead."
    )


def standardize_images(images, owner):
    """Checks an image or a batch of images and returns it at rank 4, with
    whether the input was a single (H, W, 3) image. NumPy stays NumPy, so a
    batch that needs no resize crosses a data pipeline without a device
    computation (on several JAX hosts, one in a Grain thread can fail)."""
    if not ops.is_tensor(images):
        images = np.asarray(images)
        if images.dtype.kind not in "iuf":
            raise ValueError(
                f"{owner} expects images of an integer (e.g. uint8) or float "
                "dtype holding 0-255 pixel values; received an array of "
                f"dtype {images.dtype}."
            )
    check_image_dtype(images.dtype, owner)
    shape = tuple(images.shape)
    if len(shape) not in (3, 4) or shape[-1] != 3:
        raise ValueError(
            f"{owner} expects an RGB image of shape (height, width, 3) or a "
            f"batch of shape (batch, height, width, 3); received shape {shape}."
        )
    if len(shape) == 3:
        return images[None], True
    return images, False


def to_uint8(images):
    """Rounds and clips 0-255 pixel values into uint8."""
    if keras.backend.standardize_dtype(images.dtype) == "uint8":
        return images
    if isinstance(images, np.ndarray):
        return np.clip(np.round(images), 0, 255).astype("uint8")
    if "float" in keras.backend.standardize_dtype(images.dtype):
        images = ops.round(images)
    return ops.cast(ops.clip(images, 0, 255), "uint8")


def cpu_scope():
    """Grain workers compute on the CPU, never on an accelerator: on JAX,
    this process's own CPU ("cpu" is the first process's on several hosts,
    whose arrays the others cannot read)."""
    if not in_grain_data_pipeline():
        return contextlib.nullcontext()
    if keras.backend.backend() == "jax":
        import jax

        return keras.device(jax.local_devices(backend="cpu")[0])
    return keras.device("cpu")


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2ImageConverter(keras_hub.layers.ImageConverter):
    """Resizes 0-255 images (uint8 or float) the way the released open_clip
    configs do, a bilinear antialiased "squash" to `image_size` (no crop, no
    pad), then either normalises them for `OpenVision2Backbone` or rounds
    them to uint8.

    - `normalize=True` (default): float images `(x - 255 * mean) /
      (255 * std)` with the ImageNet mean/std, the backbone's input.
    - `normalize=False`: resized uint8 images, for pipelines that ship uint8
      and normalise on the device (`keras_ov2.layers.ImageNormalization`).

    `call(images, normalize=None)` can override the mode per call, so one
    converter (saved as the preset's `image_converter.json`) keeps describing
    the backbone's input while the captioner preprocessor asks it for uint8.
    Takes one (H, W, 3) image or a (B, H, W, 3) batch; channels last only.
    Runs eagerly and in Grain workers (NumPy out there), not in `tf.data`.

    Args:
        image_size: (height, width) or None to keep the input size.
        normalize: bool, the default mode (see above).
        interpolation: resize method, "bilinear" as in the released configs.
        antialias: bool, antialias when downsampling (PIL/open_clip do).
        crop_to_aspect_ratio: bool, False is open_clip's "squash".

    Example:
    ```python
    import numpy as np
    import keras_ov2

    images = np.random.randint(0, 256, size=(2, 300, 400, 3), dtype="uint8")
    converter = keras_ov2.OpenVision2ImageConverter(image_size=(224, 224))

    # Float32, ImageNet-normalised: what `OpenVision2Backbone` takes.
    converter(images)  # (2, 224, 224, 3)

    # Resized uint8, for pipelines that normalise on the device.
    converter(images, normalize=False)  # (2, 224, 224, 3)

    # One image in, one image out.
    converter(images[0])  # (224, 224, 3)
    ```
    """

    backbone_cls = OpenVision2Backbone

    def __init__(
        self,
        image_size=None,
        normalize=True,
        interpolation="bilinear",
        antialias=True,
        crop_to_aspect_ratio=False,
        **kwargs,
    ):
        super().__init__(
            image_size=image_size,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            data_format="channels_last",
            **kwargs,
        )
        self.normalize = normalize
        self.normalization = ImageNormalization(
            dtype=self.dtype_policy, name="normalization"
        )

    def call(self, inputs, normalize=None):
        if self._use_tf_workflow():
            raise python_only_error(type(self).__name__)
        normalize = self.normalize if normalize is None else normalize
        with cpu_scope():
            images, unbatched = standardize_images(inputs, type(self).__name__)
            if self.image_size not in (None, tuple(images.shape[1:3])):
                images = self.resizing(images)
            images = self.normalization(images) if normalize else to_uint8(images)
            if unbatched:
                images = images[0]
        return convert_preprocessing_outputs_python(images)

    def get_config(self):
        config = super().get_config()
        # The normalisation is fixed by `normalize`, not free scale/offset.
        del config["scale"], config["offset"]
        config["normalize"] = self.normalize
        return config
