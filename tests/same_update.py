"""Checks that two ways of making the same Adam updates end at the same weights."""

import numpy as np


def assert_same_update(weights, reference, learning_rate, label=""):
    """`weights`, `reference`: {path: array} after the same updates.

    Adam moves each weight by up to the learning rate however small its
    gradient, so rounding in tiny gradients shows as a small fraction of it;
    a wrong gradient would move weights by all of it. A key bias's gradient
    is zero in exact arithmetic (softmax ignores a shift shared by all
    keys): Adam's step on it is the sign of rounding noise, so it is skipped.
    """
    assert sorted(weights) == sorted(reference), label
    for path, expected in reference.items():
        if path.endswith("attention/key/bias"):
            continue
        np.testing.assert_allclose(
            weights[path], expected, rtol=1e-5, atol=1e-3 * learning_rate,
            err_msg=f"{label}: {path}",
        )
