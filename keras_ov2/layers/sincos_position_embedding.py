"""Fixed 2-D sin-cos position embedding (MoCo v3 formula), computed per grid."""

import keras
from keras import ops


def sincos_2d_table(grid_height, grid_width, dim, dtype="float32"):
    """The (grid_height * grid_width, dim) sin-cos table, rows in raster order.

    Row `r * grid_width + c` is `[sin(c w), cos(c w), sin(r w), cos(r w)]`
    with `w_k = 1 / 10000 ** (k / (dim / 4 - 1))`: x (the column) first,
    then y, as the authors' `posemb_sincos_2d`. Grid sizes may be symbolic.
    """
    if dim % 4:
        raise ValueError(
            f"The sin-cos position embedding needs a width divisible by 4; "
            f"got hidden_dim={dim}."
        )
    quarter = dim // 4
    omega = ops.arange(quarter, dtype="float32") / (quarter - 1)
    omega = 1.0 / ops.power(10000.0, omega)
    rows = ops.arange(grid_height, dtype="float32")
    cols = ops.arange(grid_width, dtype="float32")
    y = ops.reshape(ops.repeat(rows, grid_width), (-1,))
    x = ops.tile(cols, [grid_height])
    x = ops.einsum("n,d->nd", x, omega)
    y = ops.einsum("n,d->nd", y, omega)
    table = ops.concatenate(
        [ops.sin(x), ops.cos(x), ops.sin(y), ops.cos(y)], axis=1
    )
    return ops.cast(table, dtype)


@keras.saving.register_keras_serializable(package="keras_ov2")
class SinCos2DPositionEmbedding(keras.layers.Layer):
    """Adds the sin-cos table of the input's own grid to a (B, H, W, D) grid.

    It has no weights, so one set of encoder weights runs at any resolution
    (84, 224, 336, ... px) without interpolation.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    grid = np.zeros((2, 6, 6, 192), dtype="float32")  # e.g. `PatchEmbedding`'s output
    keras_ov2.layers.SinCos2DPositionEmbedding()(grid)  # (2, 6, 6, 192)
    keras_ov2.layers.sincos_2d_table(6, 6, 192)  # (36, 192), the table it adds
    ```
    """

    def call(self, patch_grid):
        shape = ops.shape(patch_grid)
        table = sincos_2d_table(
            shape[1], shape[2], patch_grid.shape[-1], self.compute_dtype
        )
        return patch_grid + ops.reshape(table, (1, shape[1], shape[2], -1))

    def compute_output_shape(self, input_shape):
        return input_shape
