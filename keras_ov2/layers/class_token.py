"""Flattens a token grid and prepends a learned CLS token."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class ClassToken(keras.layers.Layer):
    """(B, H, W, D) grid -> (B, 1 + H*W, D) sequence with CLS at position 0.

    The CLS token takes part in attention but is never pooled; it gets no
    position embedding (the zero row of the authors' table).

    Example:
    ```python
    import numpy as np
    import keras_ov2

    grid = np.zeros((2, 6, 6, 192), dtype="float32")
    keras_ov2.layers.ClassToken()(grid)  # (2, 37, 192), CLS first
    ```
    """

    def build(self, input_shape):
        self.token = self.add_weight(
            name="token",
            shape=(1, 1, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=1e-6),
        )

    def call(self, grid):
        batch, dim = ops.shape(grid)[0], grid.shape[-1]
        tokens = ops.reshape(grid, (batch, -1, dim))
        cls = ops.broadcast_to(ops.cast(self.token, tokens.dtype), (batch, 1, dim))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        batch, height, width, dim = input_shape
        count = None if height is None or width is None else height * width
        return (batch, None if count is None else count + 1, dim)
