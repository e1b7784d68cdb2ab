"""A marker for tests that start every backend themselves, in subprocesses:
the suite runs once per Keras backend, and these run in its jax run only,
since the other runs would repeat the very same processes."""

import keras
import pytest

once_per_suite = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="starts its backends itself, in subprocesses: the jax run of the suite runs it",
)
