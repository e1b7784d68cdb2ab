"""Test setup: one Keras backend per run (KERAS_BACKEND, default jax)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# No test may reach the real Hugging Face Hub: huggingface_hub reads this when
# imported; tests of downloads point it at tests.local_hub instead.
os.environ["HF_HUB_OFFLINE"] = "1"

# Load the backend before anything imports TensorFlow: with the torch build the
# tests install (2.14.1, CUDA, with Triton), importing Triton after TensorFlow
# crashes the interpreter, while the other order works.
import keras  # noqa: E402, F401

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def release_memory_after_each_file():
    """One process runs the whole suite: without this, Keras' global state
    and JAX's compiled functions from every file pile up (past 24 GB)."""
    yield
    keras.backend.clear_session()
    if keras.backend.backend() == "jax":
        import jax

        jax.clear_caches()
    gc.collect()
