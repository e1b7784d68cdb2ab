import keras
import numpy as np
import pytest
from keras import ops

from keras_ov2.layers import VisualTokenMasking

BATCH, TOKENS = 6, 40


def index_tokens():
    """Token n of every sample holds the value n, so outputs reveal indices."""
    values = np.broadcast_to(np.arange(TOKENS, dtype="float32"), (BATCH, TOKENS))
    return np.repeat(values[:, :, None], 2, axis=2)


def kept_indices(layer, training=True):
    out = ops.convert_to_numpy(layer(index_tokens(), training=training))
    return out[:, :, 0].astype(int)


def test_kept_count_is_int_of_n_times_keep_ratio():
    for ratio, expected in ((0.35, 14), (0.25, 10), (0.5, 20)):
        assert kept_indices(VisualTokenMasking(ratio, seed=0)).shape == (BATCH, expected)
    # The authors' examples: L/14 at 224 px keeps 89 of 256 tokens.
    assert VisualTokenMasking(0.35).kept_count(256) == 89


def test_no_duplicates_and_only_real_tokens():
    kept = kept_indices(VisualTokenMasking(0.35, seed=1))
    for row in kept:
        assert len(set(row)) == len(row)
        assert row.min() >= 0 and row.max() < TOKENS


def test_each_sample_and_each_step_draws_a_new_subset():
    layer = VisualTokenMasking(0.35, seed=2)
    first, second = kept_indices(layer), kept_indices(layer)
    assert len({tuple(sorted(row)) for row in first}) > 1
    assert any(set(a) != set(b) for a, b in zip(first, second))


def test_order_is_random_not_sorted():
    kept = kept_indices(VisualTokenMasking(0.35, seed=3))
    assert not all(np.all(np.diff(row) > 0) for row in kept)


def test_fixed_seed_is_deterministic():
    a = kept_indices(VisualTokenMasking(0.35, seed=4))
    b = kept_indices(VisualTokenMasking(0.35, seed=4))
    c = kept_indices(VisualTokenMasking(0.35, seed=5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_inference_and_keep_ratio_one_pass_everything_through():
    tokens = index_tokens()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(VisualTokenMasking(0.35)(tokens, training=False)), tokens
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(VisualTokenMasking(1.0)(tokens, training=True)), tokens
    )


def test_bad_keep_ratio_is_rejected():
    for ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="keep_ratio"):
            VisualTokenMasking(ratio)


def test_draw_gives_the_subsets_call_keeps():
    drawn = VisualTokenMasking(0.35, seed=6).draw(BATCH, TOKENS)
    kept = kept_indices(VisualTokenMasking(0.35, seed=6))
    np.testing.assert_array_equal(ops.convert_to_numpy(drawn), kept)


def test_draw_with_its_own_seed_leaves_the_training_stream_alone():
    layer = VisualTokenMasking(0.35, seed=7)
    state = ops.convert_to_numpy(layer.seed_generator.state.value)
    half = layer.draw(BATCH, TOKENS, seed=keras.random.SeedGenerator(1), keep_ratio=0.5)
    assert tuple(half.shape) == (BATCH, 20)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.seed_generator.state.value), state)
    # As `call`: keep_ratio 1.0 keeps every token, in place.
    whole = ops.convert_to_numpy(layer.draw(2, TOKENS, seed=1, keep_ratio=1.0))
    np.testing.assert_array_equal(whole, np.tile(np.arange(TOKENS), (2, 1)))
    with pytest.raises(ValueError, match="keep_ratio"):
        layer.draw(2, TOKENS, keep_ratio=0.0)
