"""The fused, chunked head + caption loss equals the plain logits path."""

import grain
import keras
import numpy as np
import pytest
from keras import ops

import keras_ov2
from keras_ov2.models import CaptionLoss
from keras_ov2.models.common.caption_loss import chunked_caption_loss
from tests.test_openvision_clips import scenes
from tests.test_openvision_clips import tiny_clips
from tests.test_openvision_clips import tiny_preprocessor

SIZE = 28  # 2 x 2 patches of 14


def value_and_grads(f, *args):
    """f(*args) and its gradients with respect to every argument, as NumPy,
    through the current backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(f, argnums=tuple(range(len(args))))(*args)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(args)
            value = f(*args)
        grads = tape.gradient(value, list(args))
    else:
        args = [a.detach().requires_grad_() for a in args]
        value = f(*args)
        value.backward()
        grads = [a.grad for a in args]
    return ops.convert_to_numpy(value), grads


def head_case(hidden_dtype="float32"):
    """Hidden states (3, 11, 16), a head kernel (16, 997), targets and
    weights with pads (w = 0) of different lengths per row."""
    rng = np.random.default_rng(0)
    hidden = ops.cast(rng.normal(size=(3, 11, 16)), hidden_dtype)
    kernel = ops.convert_to_tensor(rng.normal(scale=0.5, size=(16, 997)).astype("float32"))
    targets = rng.integers(0, 997, size=(3, 11)).astype("int32")
    weights = (np.arange(11)[None] < np.array([[11], [6], [1]])).astype("float32")
    return hidden, kernel, targets, weights


def plain(targets, weights):
    def loss(hidden, kernel):
        logits = ops.matmul(ops.cast(hidden, "float32"), kernel)
        return CaptionLoss(weight=2.0)(targets, logits, sample_weight=weights)

    return loss


def fused(targets, weights, chunk_size):
    def loss(hidden, kernel):
        return chunked_caption_loss(hidden, kernel, targets, weights, 2.0, chunk_size)

    return loss


@pytest.mark.parametrize("chunk_size", [8, 1, 10_000])
def test_value_and_gradients_equal_the_plain_head_and_loss(chunk_size):
    # 8 tokens: 2 positions x 3 rows a chunk, so 11 positions leave a
    # ragged last chunk; 1: one position a chunk; 10_000: one chunk.
    hidden, kernel, targets, weights = head_case()
    expected, expected_grads = value_and_grads(plain(targets, weights), hidden, kernel)
    value, grads = value_and_grads(fused(targets, weights, chunk_size), hidden, kernel)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        expected_grad = ops.convert_to_numpy(expected_grad)
        # Float32 sums over the vocabulary cancel: 1e-5 of the largest entry.
        scale = np.abs(expected_grad).max()
        np.testing.assert_allclose(
            ops.convert_to_numpy(grad), expected_grad, rtol=1e-5, atol=1e-5 * scale
        )
    # Pads take no part: their hidden states get no gradient.
    assert not ops.convert_to_numpy(grads[0])[1, 6:].any()


def test_bfloat16_hidden_states_meet_the_head_in_float32():
    hidden, kernel, targets, weights = head_case("bfloat16")
    expected, expected_grads = value_and_grads(plain(targets, weights), hidden, kernel)
    value, grads = value_and_grads(fused(targets, weights, 8), hidden, kernel)
    assert [keras.backend.standardize_dtype(g.dtype) for g in grads] == ["bfloat16", "float32"]
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        grad, expected_grad = (
            ops.convert_to_numpy(ops.cast(g, "float32")) for g in (grad, expected_grad)
        )
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-2, atol=1e-6)


def captioner(parallel_fraction=0.5):
    """The tiny captioner of tests/checkpoint_run.py, at 28 px with 16
    caption positions, masking and parallel prediction on."""
    keras.utils.set_random_seed(0)
    return keras_ov2.OpenVision2Captioner(
        keras_ov2.OpenVision2Backbone(
            patch_size=14, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64
        ),
        keras_ov2.OpenVision2TextDecoder(30522, 32, 1, 2, 64),
        keras_ov2.OpenVision2CaptionerPreprocessor(
            keras_ov2.OpenVision2Tokenizer(),
            keras_ov2.OpenVision2ImageConverter(image_size=(SIZE, SIZE)),
            sequence_length=16,
        ),
        keep_ratio=0.5,
        parallel_fraction=parallel_fraction,
        seed=3,
    )


def twins(build, chunk_size):
    """The same model twice (`build()`), compiled for the fused path with
    `chunk_size` and for the plain path."""
    fused_model, plain_model = build(), build()
    assert fused_model.fused_loss is fused_model.loss  # KerasHub's __init__ compiles
    plain_model.set_weights(fused_model.get_weights())
    for model, chunks in ((fused_model, chunk_size), (plain_model, None)):
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=CaptionLoss(chunk_size=chunks))
    assert fused_model.fused_loss is fused_model.loss and plain_model.fused_loss is None
    return fused_model, plain_model


def twin_captioners():
    """The same captioner twice, compiled for the fused path (2 positions
    x 4 rows a chunk: 8 chunks, the last one padded) and the plain path."""
    return twins(captioner, chunk_size=8)


def caption_batch():
    """4 random images and captions of different lengths (pads in every
    row but the longest, which is cut)."""
    images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype="uint8")
    captions = [
        "a red circle",
        "two blue squares left of a green cross",
        "a small star",
        " ".join(["a large red circle and a blue square"] * 3),
    ]
    return images, captions


def head_calls_in_train_steps(monkeypatch, model):
    """A list that grows by one each time the decoder's head runs (or is
    traced) inside the model's `train_step`."""
    calls, stepping = [], []
    head_call, train_step = model.decoder.head.call, model.train_step

    def counted_head_call(*args, **kwargs):
        calls.extend(stepping)
        return head_call(*args, **kwargs)

    def flagged_train_step(*args, **kwargs):
        stepping.append(1)
        try:
            return train_step(*args, **kwargs)
        finally:
            stepping.clear()

    monkeypatch.setattr(model.decoder.head, "call", counted_head_call)
    monkeypatch.setattr(model, "train_step", flagged_train_step)
    return calls


def test_training_gives_the_plain_paths_loss_and_update(monkeypatch):
    fused_model, plain_model = twin_captioners()
    start = fused_model.get_weights()
    images, captions = caption_batch()
    # train_on_batch sees the batch's static shape; fit, on TensorFlow, an
    # unknown batch and length (chunks sized in the graph).
    data = grain.MapDataset.source(list(zip(images, captions))).batch(4)
    losses, head_calls = {}, {}
    for name, model in (("fused", fused_model), ("plain", plain_model)):
        head_calls[name] = head_calls_in_train_steps(monkeypatch, model)
        first = model.train_on_batch(images, captions)
        second = model.fit(data, epochs=1, verbose=0).history["loss"][-1]
        losses[name] = (first, second)
    np.testing.assert_allclose(losses["fused"], losses["plain"], rtol=1e-5)
    # The fused steps never build logits; outside a step, training=True
    # still gives them.
    assert not head_calls["fused"] and head_calls["plain"]
    x, _, _ = fused_model.preprocessor(images, captions)
    assert tuple(fused_model(x, training=True).shape) == (4, 15, 30522)
    assert_same_update(fused_model, plain_model, start)


def assert_same_update(fused_model, plain_model, start):
    """The twins' weights agree after training, and training moved them."""
    moved = False
    # Two steps: float32 rounding of the gradient (oneDNN's thread split on
    # TensorFlow) shows as ~1e-5 relative in the weights.
    for a, b, before in zip(fused_model.get_weights(), plain_model.get_weights(), start):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        moved |= not np.allclose(a, before)
    assert moved


def clips():
    """The tiny OpenVisionCLIPS of tests/test_openvision_clips.py (12
    caption queries), without its preprocessor: batches come preprocessed."""
    keras.utils.set_random_seed(0)
    return tiny_clips(width=16, preprocessor=False)


def test_clips_training_gives_the_plain_paths_loss_and_update(monkeypatch):
    # 5 positions x 4 rows a chunk: 3 chunks, the last one padded; the
    # dual contrastive loss added to the caption loss either way.
    fused_model, plain_model = twins(clips, chunk_size=20)
    start = fused_model.get_weights()
    images, web, detailed = scenes(4)
    x, y, w = tiny_preprocessor()(images, (web, detailed))
    assert 0 < np.asarray(w).sum() < np.asarray(w).size  # pads in the caption targets
    losses, head_calls = {}, {}
    for name, model in (("fused", fused_model), ("plain", plain_model)):
        head_calls[name] = head_calls_in_train_steps(monkeypatch, model)
        first = model.train_on_batch(x, y, w, return_dict=True)
        # fit, on TensorFlow, traces with an unknown batch and length
        # (chunks sized in the graph).
        second = model.fit(x, y, sample_weight=w, batch_size=4, verbose=0).history
        losses[name] = [first[k] for k in ("loss", "caption_loss", "clip_loss")]
        losses[name] += [second[k][-1] for k in ("loss", "caption_loss")]
    np.testing.assert_allclose(losses["fused"], losses["plain"], rtol=1e-5)
    # The fused steps never build logits (and leave the switch off).
    assert not head_calls["fused"] and head_calls["plain"]
    assert not fused_model.fuses(training=True)
    assert_same_update(fused_model, plain_model, start)


def test_evaluate_reports_the_caption_loss_of_the_logits():
    fused_model, plain_model = twin_captioners()
    images, captions = caption_batch()
    x, y, w = fused_model.preprocessor(images, captions)
    expected = ops.convert_to_numpy(CaptionLoss()(y, fused_model(x), sample_weight=w))
    data = grain.MapDataset.source(list(zip(images, captions))).batch(4)
    for model in (fused_model, plain_model):
        loss = model.evaluate(data, verbose=0)
        np.testing.assert_allclose(loss, expected, rtol=1e-5)


class Relabelled(CaptionLoss):
    """A CaptionLoss subclass: its `call` may differ, so it is never fused."""


@pytest.mark.parametrize(
    "compile_kwargs, fused",
    [
        ({}, True),
        ({"loss": CaptionLoss(weight=1.0, chunk_size=64)}, True),
        ({"loss": CaptionLoss(chunk_size=None)}, False),
        ({"loss": Relabelled()}, False),
        ({"loss": "sparse_categorical_crossentropy"}, False),
        ({"weighted_metrics": ["sparse_categorical_accuracy"]}, False),
    ],
)
def test_training_fuses_only_a_caption_loss_nothing_else_reads(compile_kwargs, fused):
    model = captioner(parallel_fraction=0.0)
    assert model.fused_loss is model.loss  # KerasHub's __init__ compiles
    model.compile(**compile_kwargs)
    assert (model.fused_loss is not None) == fused
    if fused:
        assert model.fused_loss is model.loss
