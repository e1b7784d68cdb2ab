"""The recipe optimizer trains the same on JAX, TensorFlow and PyTorch: the
same presets on the same batches give the same per-step losses and final
weights, with and without gradient accumulation. Each backend trains in a
subprocess (tests/train_in_backend.py), in the jax run of the suite.

The captions repeat words, so an Embedding's gradient has repeated rows: on
TensorFlow it is sparse, and Keras's Adam squared those rows one by one.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ov2
from keras_ov2.models.common.recipe_optimizer import recipe_optimizer
from tests import train_in_backend
from tests.once_per_suite import once_per_suite
from tests.test_openvision_clips import VOCABULARY
from tests.test_openvision_clips import tiny_clips

BACKENDS = ("jax", "tensorflow", "torch")
SUBPROCESS_ENV = {
    # Compiling, not running, dominates 10 tiny steps: XLA without LLVM's
    # optimizations compiles the JAX steps twice as fast, same float semantics.
    "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
    " --xla_cpu_multi_thread_eigen=false",
    # One thread each: three processes share the CPUs, and thread pools that
    # spin against each other made PyTorch's steps ten times slower.
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
}
IMAGE_SIZE = 56
CAPTIONS = [  # two batches of 4, words repeated within and across captions
    "a red circle and a red square", "a blue square and a blue square",
    "green circle . green circle .", "a small red circle left of a red circle",
    "a large shape and a small shape", "purple circle above purple square",
    "a circle , a circle , a square", "two red shapes : a red circle",
]


def images(count):
    """Noise: the models only need different inputs, not learnable ones."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8")


def tiny_captioner():
    """Every visual token kept (no random masking), a 44-word vocabulary."""
    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor(
        keras_ov2.OpenVision2Tokenizer(VOCABULARY),
        keras_ov2.OpenVision2ImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
        sequence_length=12,
    )
    backbone = keras_ov2.OpenVision2Backbone(
        patch_size=14, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32
    )
    decoder = keras_ov2.OpenVision2TextDecoder(len(VOCABULARY), 16, 1, 2, 32)
    return keras_ov2.OpenVision2Captioner(backbone, decoder, preprocessor, keep_ratio=1.0)


def save_batches(path, preprocessor, inputs):
    """Preprocesses once here (CLIPS draws sentences at random) and saves
    the batches of 4 in train_in_backend's layout."""
    stacked = {}
    for start in range(0, len(CAPTIONS), 4):
        x, y, sample_weight = preprocessor(*inputs(slice(start, start + 4)))
        arrays = {f"x/{k}": v for k, v in x.items()}
        arrays.update(y=y, sample_weight=sample_weight)
        for key, value in arrays.items():
            stacked.setdefault(key, []).append(keras.ops.convert_to_numpy(value))
    np.savez(path, **{k: np.stack(v) for k, v in stacked.items()})


def save_inputs(folder):
    keras.utils.set_random_seed(0)
    pictures = images(len(CAPTIONS))
    captioner = tiny_captioner()
    captioner.save_to_preset(str(folder / "captioner"))
    save_batches(folder / "captioner.npz", captioner.preprocessor,
                 lambda rows: (pictures[rows], CAPTIONS[rows]))
    clips = tiny_clips(width=16)
    clips.save_to_preset(str(folder / "clips"))
    save_batches(folder / "clips.npz", clips.preprocessor,
                 lambda rows: (pictures[rows], (CAPTIONS[rows], CAPTIONS[rows])))


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    """{backend: its results}, the three trainings run side by side."""
    folder = tmp_path_factory.mktemp("cross_backend_training")
    save_inputs(folder)
    root = Path(__file__).resolve().parent.parent
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.train_in_backend", str(folder)],
            cwd=root, env={**os.environ, **SUBPROCESS_ENV, "KERAS_BACKEND": backend},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for backend in BACKENDS
    ]
    for backend, run in zip(BACKENDS, runs):
        output, _ = run.communicate()
        assert run.returncode == 0, f"{backend}:\n{output[-4000:]}"
    return {backend: np.load(folder / f"results_{backend}.npz") for backend in BACKENDS}


@once_per_suite
@pytest.mark.parametrize("run", train_in_backend.RUNS)
def test_losses_agree_across_backends(results, run):
    losses = {b: results[b][f"{run}/losses"] for b in BACKENDS}
    assert losses["jax"].shape == (train_in_backend.STEPS,)
    assert losses["jax"][-1] < 0.9 * losses["jax"][0]  # it trained
    for backend in BACKENDS[1:]:
        np.testing.assert_allclose(
            losses[backend], losses["jax"], rtol=1e-4, err_msg=f"{backend} vs jax"
        )


def weight_keys(result, run):
    return sorted(k for k in result.files if k.startswith(f"{run}/") and k != f"{run}/losses")


@once_per_suite
@pytest.mark.parametrize("run", train_in_backend.RUNS)
def test_final_weights_agree_across_backends(results, run):
    keys = weight_keys(results["jax"], run)
    assert len(keys) > 10
    for backend in BACKENDS[1:]:
        assert weight_keys(results[backend], run) == keys
        for key in keys:
            if key.endswith("attention/key/bias"):
                continue  # zero gradient: Adam steps on the sign of rounding noise
            # Weights are O(0.1-1). Rounding leaves the backends within 2e-6
            # after 10 steps; squaring repeated rows moved embeddings by 1e-2.
            np.testing.assert_allclose(
                results[backend][key], results["jax"][key], rtol=1e-4, atol=1e-4,
                err_msg=f"{backend} vs jax: {key}",
            )


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="sparse gradients are TensorFlow's"
)
@pytest.mark.parametrize("loss_scaled", [False, True])
def test_repeated_rows_of_a_sparse_gradient_update_as_their_sum(loss_scaled):
    """Also behind the `LossScaleOptimizer` that compile adds under
    "mixed_float16": it hands the inner optimizer the sparse gradient."""
    import tensorflow as tf

    scale = 2.0**15 if loss_scaled else 1.0  # LossScaleOptimizer's initial scale
    rows = scale * tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, -3.0, 1.0]])
    sparse = tf.IndexedSlices(rows, tf.constant([2, 0, 2]), tf.constant([5, 3]))
    embeddings = []
    for gradient in (sparse, tf.convert_to_tensor(sparse)):
        layer = keras.layers.Embedding(5, 3, embeddings_initializer="ones")
        layer.build()
        optimizer = recipe_optimizer(layer, learning_rate=0.1, total_steps=4, warmup_steps=1)
        if loss_scaled:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        for _ in range(3):  # the first at learning rate 0: the moments only
            optimizer.apply([gradient], layer.trainable_variables)
        embeddings.append(keras.ops.convert_to_numpy(layer.embeddings))
    assert not np.allclose(embeddings[1][2], 1.0)  # the repeated row moved
    np.testing.assert_allclose(embeddings[0], embeddings[1], rtol=1e-6)
