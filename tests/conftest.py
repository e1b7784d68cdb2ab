"""Test setup: one Keras backend per run (KERAS_BACKEND, default jax)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
