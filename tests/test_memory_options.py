"""Memory switches for large runs: gradient accumulation, mixed bfloat16,
rematerialized transformer blocks."""

import keras
import numpy as np
import pytest

import keras_ov2
from tests.same_update import assert_same_update
from tests.test_captioner import scenes
from tests.test_captioner import tiny_captioner

LEARNING_RATE = 1e-3


def order_free_captioner():
    """Every visual token, seen as a set ("prefix" attention, no decoder
    positions): the loss does not depend on the masking's random order, so
    runs that draw it a different number of times stay comparable."""
    return tiny_captioner(keep_ratio=1.0, attention_mask="prefix")


def test_gradient_accumulation_updates_as_the_same_batches_would():
    keras.utils.set_random_seed(0)
    plain, accumulated = order_free_captioner(), order_free_captioner()
    initial = plain.get_weights()
    accumulated.set_weights(initial)
    images, captions = scenes(4)
    captions = np.array(captions)
    # Three updates at learning rates 0, 1/2 and 1 x LEARNING_RATE (warmup).
    schedule = dict(learning_rate=LEARNING_RATE, total_steps=3, warmup_steps=2)
    plain.compile(**schedule)
    accumulated.compile(**schedule, gradient_accumulation_steps=2)
    for _ in range(3):
        plain.train_on_batch(images, captions)
    for _ in range(6):  # each update averages the gradients of two batches
        accumulated.train_on_batch(images, captions)
    assert int(accumulated.optimizer.iterations) == 3
    paths = [v.path for v in plain.weights]
    moved = [not np.allclose(a, b) for a, b in zip(plain.get_weights(), initial)]
    assert sum(moved) > len(paths) // 2
    assert_same_update(dict(zip(paths, accumulated.get_weights())),
                       dict(zip(paths, plain.get_weights())), LEARNING_RATE)


def record_output_dtypes(monkeypatch, probes):
    """Wraps each probed `(object, method)` so that a forward pass records,
    under the probe's name, the dtype of what the method returns."""
    seen = {}
    for key, (owner, method) in probes.items():

        def wrapper(*args, _method=getattr(owner, method), _key=key, **kwargs):
            outputs = _method(*args, **kwargs)
            seen[_key] = keras.backend.standardize_dtype(outputs.dtype)
            return outputs

        monkeypatch.setattr(owner, method, wrapper)
    return seen


def test_mixed_bfloat16_from_a_preset_keeps_the_authors_float32_parts(monkeypatch):
    keras.utils.set_random_seed(0)
    captioner = keras_ov2.OpenVision2Captioner.from_preset(
        "openvision2_captioner_tiny_patch14_84",
        load_weights=False,
        dtype="mixed_bfloat16",
    )
    assert {v.dtype for v in captioner.weights} == {"float32"}
    backbone, decoder = captioner.backbone, captioner.decoder
    seen = record_output_dtypes(monkeypatch, {
        "patch convolution": (backbone.patch_embedding, "convolve"),
        "patch embedding": (backbone.patch_embedding, "call"),
        "encoder block": (backbone.transformer_layers[0], "call"),
        "token embedding": (decoder.token_embedding, "call"),
        "decoder input": (decoder, "embed"),
        "decoder block": (decoder.transformer_layers[-1], "call"),
    })
    images, captions = scenes(2)
    x, y, sample_weight = captioner.preprocessor(images, captions)
    captioner.compile()
    logits = captioner(x)
    loss = captioner.compute_loss(x, y, logits, sample_weight)
    seen["logits"] = keras.backend.standardize_dtype(logits.dtype)
    seen["loss"] = keras.backend.standardize_dtype(loss.dtype)
    assert seen == {
        "patch convolution": "float32",
        "patch embedding": "bfloat16",  # the float32 grid, cast for the blocks
        "encoder block": "bfloat16",
        "token embedding": "float32",
        "decoder input": "bfloat16",  # the float32 embeddings, cast for the blocks
        "decoder block": "bfloat16",
        "logits": "float32",
        "loss": "float32",
    }


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="reads the JAX program")
def test_remat_scope_recomputes_every_block_with_the_same_numerics():
    import jax

    blocks = [f"transformer_layer_{i}" for i in range(2)]
    keras.utils.set_random_seed(0)
    plain = order_free_captioner()
    with keras.RematScope(mode="list_of_layers", layer_names=blocks):
        remat = order_free_captioner()
    remat.set_weights(plain.get_weights())
    images, captions = scenes(2)
    x, y, sample_weight = plain.preprocessor(images, captions)

    def gradients(captioner):
        def loss(trainable):
            logits, _ = captioner.stateless_call(
                trainable, [v.value for v in captioner.non_trainable_variables], x
            )
            return captioner.loss(y, logits, sample_weight)

        values = [v.value for v in captioner.trainable_variables]
        program = str(jax.make_jaxpr(jax.grad(loss))(values))
        return program.count("remat"), jax.grad(loss)(values)

    for captioner in (plain, remat):
        captioner.compile(learning_rate=LEARNING_RATE)
    (plain_regions, expected), (remat_regions, actual) = gradients(plain), gradients(remat)
    assert (plain_regions, remat_regions) == (0, 3)  # 1 encoder + 2 decoder blocks
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
