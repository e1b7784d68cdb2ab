import numpy as np
import pytest
from keras import ops

from keras_ov2.layers import ClassToken
from keras_ov2.layers import PatchEmbedding
from keras_ov2.layers import SinCos2DPositionEmbedding
from keras_ov2.layers import sincos_2d_table


def formula(grid_h, grid_w, dim):
    """Row r*W+c = [sin(c w), cos(c w), sin(r w), cos(r w)], w_k = 1e4^(-k/(D/4-1))."""
    table = np.zeros((grid_h * grid_w, dim))
    quarter = dim // 4
    for r in range(grid_h):
        for c in range(grid_w):
            for k in range(quarter):
                omega = 10000.0 ** (-k / (quarter - 1))
                row = table[r * grid_w + c]
                row[k] = np.sin(c * omega)
                row[quarter + k] = np.cos(c * omega)
                row[2 * quarter + k] = np.sin(r * omega)
                row[3 * quarter + k] = np.cos(r * omega)
    return table


def test_table_matches_the_formula_on_a_non_square_grid():
    table = ops.convert_to_numpy(sincos_2d_table(3, 5, 16))
    np.testing.assert_allclose(table, formula(3, 5, 16), atol=1e-6)


def test_x_frequencies_come_first():
    table = ops.convert_to_numpy(sincos_2d_table(2, 2, 8))
    # Moving one column right changes the first half only.
    np.testing.assert_allclose(table[0, 4:], table[1, 4:])
    assert not np.allclose(table[0, :4], table[1, :4])


def test_cls_slot_gets_a_zero_row_and_patches_get_the_table():
    """Zero images, zero CLS: the embedded sequence is [0; table]."""
    dim, patch = 16, 4
    embed = PatchEmbedding(dim, patch)
    position = SinCos2DPositionEmbedding()
    cls = ClassToken()
    images = np.zeros((1, 12, 20, 3), "float32")
    cls.build((1, 3, 5, dim))
    cls.token.assign(np.zeros((1, 1, dim)))
    sequence = ops.convert_to_numpy(cls(position(embed(images))))
    assert sequence.shape == (1, 1 + 3 * 5, dim)
    np.testing.assert_array_equal(sequence[0, 0], np.zeros(dim))
    np.testing.assert_allclose(sequence[0, 1:], formula(3, 5, dim), atol=1e-6)


def test_width_not_divisible_by_four_is_rejected():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_table(2, 2, 10)
