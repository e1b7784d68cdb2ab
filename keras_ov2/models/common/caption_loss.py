"""The OpenVision 2 caption loss: a token-weighted cross-entropy."""

import keras
from keras import ops

# Tokens per chunk of the fused head + loss: a chunk's float32 logits take
# CHUNK_SIZE x vocabulary x 4 bytes (16 MiB at 128 x 32000).
CHUNK_SIZE = 128


@keras.saving.register_keras_serializable(package="keras_ov2")
class CaptionLoss(keras.losses.Loss):
    """`weight * sum(nll * w) / sum(w)` over every target token of the batch.

    `w` is the preprocessor's sample weight (1 on word-pieces and `[eos]`, 0
    on pads and `[CLS]`), so long captions weigh more than short ones: a
    token-level mean, not a mean of per-caption means. No label smoothing.
    `weight` is the authors' `coca_caption_loss_weight` (2).

    `chunk_size`: tokens per chunk where a task fuses its vocabulary head
    into this loss (`chunked_caption_loss`; `OpenVision2Captioner` does in
    training); None keeps the plain logits path everywhere.
    """

    def __init__(self, weight=2.0, chunk_size=CHUNK_SIZE, name="caption_loss", **kwargs):
        super().__init__(name=name, reduction="mean_with_sample_weight", **kwargs)
        self.weight = weight
        self.chunk_size = chunk_size

    def call(self, y_true, y_pred):
        nll = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        return self.weight * nll

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)
        config.update(weight=self.weight, chunk_size=self.chunk_size)
        return config


def chunked_caption_loss(
    hidden, kernel, targets, sample_weight=None, weight=2.0, chunk_size=CHUNK_SIZE
):
    """`CaptionLoss(weight)(targets, hidden @ kernel, sample_weight)` without
    the (batch, T, vocabulary) logits, which dwarf every other activation
    of the decoder (and the plain loss makes several float32 copies).

    The tokens go through in chunks of about `chunk_size`, one after the
    other (a loop, so that no compiler holds every chunk at once): the
    forward pass keeps the loss alone and the backward pass recomputes each
    chunk's logits. `hidden` (batch, T, width), in any float dtype, meets
    the (width, vocabulary) `kernel` in float32, as the float32 head does;
    the gradients come back in the inputs' dtypes. `sample_weight` (batch,
    T) defaults to ones, as in the loss.
    """
    if sample_weight is None:
        sample_weight = ops.ones(ops.shape(targets), "float32")
    step, pad, num_chunks = _chunking(hidden, chunk_size)
    fused = _fused_head_loss(weight, step, num_chunks)
    return fused(
        ops.pad(hidden, [[0, 0], [0, pad], [0, 0]]),
        # A tensor, not the variable: TensorFlow's eager custom_gradient
        # refuses a function that reads variables itself.
        ops.copy(kernel),
        ops.pad(ops.cast(targets, "int32"), [[0, 0], [0, pad]]),
        ops.pad(ops.cast(sample_weight, "float32"), [[0, 0], [0, pad]]),
    )


def _chunking(hidden, chunk_size):
    """(step, pad, num_chunks): a chunk holds every row and `step` caption
    positions, about `chunk_size` tokens, and `pad` positions make T a
    multiple of `step`. Whole rows keep the batch axis whole, so that a
    batch-sharded array stays sharded. Python ints for static shapes;
    tensors where TensorFlow's graphs leave the batch or T unknown."""
    batch, length = hidden.shape[0], hidden.shape[1]
    if batch is None or length is None:
        batch, length = ops.shape(hidden)[0], ops.shape(hidden)[1]
        step = ops.minimum(length, ops.maximum(1, chunk_size // batch))
    else:
        step = min(length, max(1, chunk_size // batch))
    num_chunks = (length + step - 1) // step
    return step, num_chunks * step - length, num_chunks


def _fused_head_loss(weight, step, num_chunks):
    """The loss of (hidden, kernel, targets, weights), T a multiple of
    `step`, with its own gradient. Every argument is a tensor (PyTorch
    saves them for the backward pass); targets and weights get none."""

    @ops.custom_gradient
    def fused(hidden, kernel, targets, weights):
        kernel32 = ops.cast(kernel, "float32")
        total = ops.sum(weights)

        def chunk(i):
            """Chunk i's hidden states, float32 logits, targets and weights."""
            rows = _positions(hidden, i, step)
            logits = ops.matmul(ops.cast(rows, "float32"), kernel32)
            return rows, logits, _positions(targets, i, step), _positions(weights, i, step)

        def add_nll(i, nll):
            _, logits, ids, w = chunk(i)
            picked = ops.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
            return nll + ops.sum((ops.logsumexp(logits, axis=-1) - picked) * w)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            scale = ops.divide_no_nan(weight * upstream, total)

            def add_chunk(i, grads):
                d_kernel, d_hidden = grads
                rows, logits, ids, w = chunk(i)
                probs = ops.softmax(logits, axis=-1)
                d_logits = probs - ops.one_hot(ids, ops.shape(kernel)[-1])
                d_logits = d_logits * (w * scale)[..., None]
                d_rows = ops.matmul(d_logits, ops.transpose(kernel32))
                d_hidden = ops.slice_update(
                    d_hidden, [0, i * step, 0], ops.cast(d_rows, hidden.dtype)
                )
                rows = ops.cast(rows, "float32")
                return d_kernel + ops.einsum("btd,btv->dv", rows, d_logits), d_hidden

            d_kernel, d_hidden = ops.fori_loop(
                0, num_chunks, add_chunk, (ops.zeros_like(kernel32), ops.zeros_like(hidden))
            )
            return d_hidden, ops.cast(d_kernel, kernel.dtype), None, None

        nll = ops.fori_loop(0, num_chunks, add_nll, ops.zeros((), "float32"))
        return weight * ops.divide_no_nan(nll, total), grad

    return fused


def _positions(x, i, step):
    """Positions [i * step, (i + 1) * step) of every row of x."""
    start = [0, i * step] + [0] * (len(x.shape) - 2)
    return ops.slice(x, start, [ops.shape(x)[0], step, *x.shape[2:]])
