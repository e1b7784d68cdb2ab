"""Patch embedding: a bias-free convolution with kernel = stride = patch."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class PatchEmbedding(keras.layers.Layer):
    """Turns (B, H, W, 3) images into a (B, H // p, W // p, D) grid of tokens.

    The convolution is VALID like the authors': when H or W is not a multiple
    of the patch size, the last `H % p` rows and `W % p` columns are dropped.
    The kernel is stored HWIO, (p, p, 3, D), as in the JAX checkpoints.
    The convolution runs in the weights' dtype, float32 under
    "mixed_bfloat16" as the authors keep it; only its output is cast to the
    compute dtype.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    images = np.random.normal(size=(2, 84, 84, 3)).astype("float32")
    patch_embedding = keras_ov2.layers.PatchEmbedding(hidden_dim=192, patch_size=14)
    patch_embedding(images)  # (2, 6, 6, 192)
    ```
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        # No autocast: inputs reach `convolve` unrounded.
        super().__init__(autocast=False, **kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size

    def build(self, input_shape):
        self.check_image_shape(input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.patch_size, self.patch_size, 3, self.hidden_dim),
            initializer="he_uniform",
            autocast=False,  # read in its own dtype, whatever the scope
        )

    def check_image_shape(self, shape):
        """Raises a clear error for images the encoder cannot read."""
        if len(shape) != 4:
            raise ValueError(
                "OpenVision2Backbone expects images of rank 4, "
                f"(batch, height, width, 3); got shape {tuple(shape)}."
            )
        if shape[-1] != 3:
            raise ValueError(
                "OpenVision2Backbone expects RGB images with 3 channels last; "
                f"got shape {tuple(shape)} with {shape[-1]} channels."
            )
        for axis, size in (("height", shape[1]), ("width", shape[2])):
            if size is not None and size < self.patch_size:
                raise ValueError(
                    f"Image {axis} {size} px is smaller than one patch "
                    f"({self.patch_size} px); images of shape {tuple(shape)} "
                    "give no tokens."
                )

    def call(self, images):
        self.check_image_shape(tuple(images.shape))
        return ops.cast(self.convolve(images), self.compute_dtype)

    def convolve(self, images):
        """The patch grid in the weights' dtype."""
        images = ops.cast(images, self.variable_dtype)
        return ops.conv(
            images, self.kernel, strides=self.patch_size, padding="valid"
        )

    def compute_output_shape(self, input_shape):
        grid = [
            None if size is None else size // self.patch_size
            for size in input_shape[1:3]
        ]
        return (input_shape[0], *grid, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, patch_size=self.patch_size)
        return config
