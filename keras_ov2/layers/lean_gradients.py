"""GELU, LayerNorm and attention with hand-written gradients that keep less.

Automatic differentiation keeps every intermediate of the forward pass that
its backward formulas read: for the exact GELU the `erfc` and `exp` terms
beside the input, for attention the scores, their exponentials and the
probabilities (batch x heads x L x L each, per block), for LayerNorm the
centred input beside the normalised one. On JAX and TensorFlow these make
most of a train step's peak memory (`benchmarks/step_buffers.py`). The
functions here give the same outputs and gradients (to float32 rounding)
and keep only:

- `gelu_dense` (an MLP's GELU, then its output projection): the GELU's
  input alone, not also the activation the projection's gradient reads;
- `layer_norm`: the normalised input and one inverse deviation per row;
- `attention`: queries, keys, values and one log-sum-exp per row; the
  backward pass recomputes the probabilities from them, as flash attention
  does, so no L x L array outlives its block.

They are also faster on XLA's CPU (the encoder's train step about 1.8x at
S/16, batch 32, 224 px; `benchmarks/README.md`), mostly from attention
laid out heads-major.

PyTorch's own kernels (`F.gelu`, `F.layer_norm`, `scaled_dot_product_attention`)
already keep this little, except the MLP's activation, so on PyTorch the
layers call those instead (`lean_gradients_apply`).
"""

import math

import keras
from keras import ops

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
TANH_SCALE = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
# The fill of masked scores, as JAX's own attention: 0.7 x float32's max.
MASKED_SCORE = -0.7 * 3.4028234663852886e38


def _recomputed(x, upstream):
    """`x`, made to depend on the upstream gradient (of x's shape).

    What the backward pass recomputes from it is then new to the compiler:
    XLA's common-subexpression elimination would otherwise merge it with
    the forward pass's copy and keep that alive until the backward pass
    (it does on the CPU even behind `jax.lax.optimization_barrier`, which
    XLA removes before its last CSE). `0.0 * upstream` is not folded away
    (IEEE: it is not 0 for inf or nan) and costs one fused multiply-add."""
    return x + 0.0 * upstream


def lean_gradients_apply():
    """Whether the layers use these functions: on JAX and TensorFlow."""
    return keras.backend.backend() in ("jax", "tensorflow")


def _gelu_and_slope(x, approximate):
    """GELU(x) and its derivative, computed from shared terms."""
    if approximate:
        square = ops.square(x)
        t = ops.tanh(TANH_SCALE * (x + TANH_CUBIC * x * square))
        d_inner = TANH_SCALE * (1.0 + 3.0 * TANH_CUBIC * square)
        slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - ops.square(t)) * d_inner
        return 0.5 * x * (1.0 + t), slope
    cdf = 0.5 * ops.erfc(-x * SQRT_HALF)
    pdf = INV_SQRT_2PI * ops.exp(-0.5 * ops.square(x))
    return x * cdf, cdf + x * pdf


def gelu_dense(hidden, kernel, bias, approximate=False):
    """`gelu(hidden) @ kernel + bias`: an MLP's activation and output
    projection, keeping only `hidden` for the backward pass. Through
    autodiff the projection would also keep its input, the activation, a
    second array of the MLP's width; here the backward pass recomputes it
    (from the terms the derivative needs anyway). `kernel` (in, out) and
    `bias` (out,) are cast to hidden's dtype, in which everything is
    computed."""
    kernel, bias = (ops.cast(ops.copy(w), hidden.dtype) for w in (kernel, bias))
    return _gelu_dense(approximate)(hidden, kernel, bias)


def _gelu_dense(approximate):
    @ops.custom_gradient
    def project(hidden, kernel, bias):
        activation = keras.activations.gelu(hidden, approximate=approximate)
        outputs = ops.matmul(activation, kernel) + bias

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            d_activation = ops.matmul(upstream, ops.transpose(kernel))
            activation, slope = _gelu_and_slope(
                _recomputed(hidden, d_activation), approximate
            )
            rows_in = ops.reshape(activation, (-1, kernel.shape[0]))
            rows_out = ops.reshape(upstream, (-1, kernel.shape[1]))
            d_kernel = ops.matmul(ops.transpose(rows_in), rows_out)
            return d_activation * slope, d_kernel, ops.sum(rows_out, axis=0)

        return outputs, grad

    return project


def layer_norm(x, gamma, beta, epsilon):
    """LayerNorm over the last axis, in float32 as Keras' own, returned in
    x's dtype. `gamma` and `beta` are tensors of x's last dimension."""

    @ops.custom_gradient
    def normalize(x, gamma, beta):
        x32 = ops.cast(x, "float32")
        mean, variance = ops.moments(x32, axes=[-1], keepdims=True)
        inverse = ops.rsqrt(variance + epsilon)
        normalized = (x32 - mean) * inverse
        outputs = normalized * ops.cast(gamma, "float32") + ops.cast(beta, "float32")

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            upstream = ops.cast(upstream, "float32")
            flat_axes = tuple(range(len(x.shape) - 1))
            d_gamma = ops.sum(upstream * normalized, axis=flat_axes)
            d_beta = ops.sum(upstream, axis=flat_axes)
            scaled = upstream * ops.cast(gamma, "float32")
            d_x = inverse * (
                scaled
                - ops.mean(scaled, axis=-1, keepdims=True)
                - normalized * ops.mean(scaled * normalized, axis=-1, keepdims=True)
            )
            return (
                ops.cast(d_x, x.dtype),
                ops.cast(d_gamma, gamma.dtype),
                ops.cast(d_beta, beta.dtype),
            )

        return ops.cast(outputs, x.dtype), grad

    return normalize(x, gamma, beta)


def attention(query, key, value, mask=None):
    """Softmax attention of (batch, L, heads, head_dim) queries over
    (batch, S, heads, head_dim) keys and values, scaled by 1/sqrt(head_dim);
    `mask` (batch, 1 or heads, L, S), True where a query may look. Scores
    and softmax are float32; the output is in the values' dtype.

    The work runs heads-major, (batch, heads, L, head_dim): batched matmuls
    over leading batch axes, about twice as fast on XLA's CPU as over the
    interleaved layout. A row that may look nowhere gets the mean of the
    values, as the backends' own attention does with its large negative
    fill."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    query, key, value = (ops.transpose(x, (0, 2, 1, 3)) for x in (query, key, value))
    masks = () if mask is None else (ops.cast(mask, "bool"),)
    attended = _attention(scale)(query, key, value, *masks)
    return ops.transpose(attended, (0, 2, 1, 3))


def _scores(query, key, scale, mask):
    scores = ops.einsum("bhld,bhsd->bhls", query, key)
    scores = ops.cast(scores, "float32") * scale
    if mask is not None:
        scores = ops.where(mask, scores, MASKED_SCORE)
    return scores


def _attention_forward(query, key, value, scale, mask):
    """(output, log-sum-exp per query row), heads-major."""
    scores = _scores(query, key, scale, mask)
    row_max = ops.max(scores, axis=-1, keepdims=True)
    exps = ops.exp(scores - row_max)
    row_sum = ops.sum(exps, axis=-1, keepdims=True)
    probs = exps / row_sum
    log_sum_exp = row_max + ops.log(row_sum)
    output = ops.einsum("bhls,bhsd->bhld", ops.cast(probs, value.dtype), value)
    return output, log_sum_exp


def _attention_backward(query, key, value, scale, mask, log_sum_exp, upstream):
    query = _recomputed(query, upstream)
    probs = ops.exp(_scores(query, key, scale, mask) - log_sum_exp)
    d_value = ops.einsum("bhls,bhld->bhsd", ops.cast(probs, value.dtype), upstream)
    d_probs = ops.cast(ops.einsum("bhld,bhsd->bhls", upstream, value), "float32")
    d_scores = probs * (d_probs - ops.sum(d_probs * probs, axis=-1, keepdims=True))
    d_scores = ops.cast(d_scores * scale, query.dtype)
    d_query = ops.einsum("bhls,bhsd->bhld", d_scores, key)
    d_key = ops.einsum("bhls,bhld->bhsd", d_scores, query)
    return d_query, d_key, d_value


def _attention(scale):
    @ops.custom_gradient
    def attend(query, key, value, *mask):
        """`mask`: none, or one boolean tensor. An argument, not a closure,
        so that PyTorch's autograd saves it; it gets no gradient."""
        mask_or_none = mask[0] if mask else None
        output, log_sum_exp = _attention_forward(query, key, value, scale, mask_or_none)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            grads = _attention_backward(
                query, key, value, scale, mask_or_none, log_sum_exp, upstream
            )
            return (*grads, *(None for _ in mask))

        return output, grad

    return attend


@keras.saving.register_keras_serializable(package="keras_ov2")
class LeanLayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis (same weights,
    same config) that trains through `layer_norm` where
    `lean_gradients_apply()`."""

    def call(self, inputs):
        if not lean_gradients_apply():
            return super().call(inputs)
        # Tensors, not the variables: TensorFlow's custom_gradient refuses
        # a function that reads variables itself.
        outputs = layer_norm(
            inputs, ops.copy(self.gamma), ops.copy(self.beta), self.epsilon
        )
        return ops.cast(outputs, self.compute_dtype)
