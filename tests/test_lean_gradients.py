"""GELU, LayerNorm and attention with hand-written gradients equal the plain
ops, forward and backward, and keep less for the backward pass."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_ov2.layers import TransformerBlock
from keras_ov2.layers import lean_gradients
from tests.test_fused_caption_loss import value_and_grads

RTOL = 1e-5


def numpy(x):
    return x if isinstance(x, np.ndarray) else ops.convert_to_numpy(ops.stop_gradient(x))


def assert_close(actual, expected, rtol=RTOL, scale=None):
    """Equal to `rtol` relative to `scale`, by default the largest
    magnitude of `expected`."""
    actual, expected = numpy(actual), numpy(expected)
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def weighted_sum(f, weights):
    """A scalar of f's output whose gradient is `weights` (not all ones, so
    that every output position is told apart)."""
    weights = ops.convert_to_tensor(weights)
    return lambda *args: ops.sum(f(*args) * weights)


def check_same(lean, plain, args, weights):
    lean_value, lean_grads = value_and_grads(weighted_sum(lean, weights), *args)
    plain_value, plain_grads = value_and_grads(weighted_sum(plain, weights), *args)
    assert_close(lean(*args), plain(*args))
    assert_close(lean_value, plain_value)
    assert len(lean_grads) == len(plain_grads) == len(args)
    for lean_grad, plain_grad in zip(lean_grads, plain_grads):
        assert_close(lean_grad, plain_grad)


def tensors(*arrays):
    return [ops.convert_to_tensor(a) for a in arrays]


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_dense_equals_keras_gelu_then_matmul_and_its_gradients(approximate):
    rng = np.random.default_rng(0)
    hidden = (3 * rng.normal(size=(2, 7, 16))).astype("float32")
    kernel = rng.normal(size=(16, 5)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    weights = rng.normal(size=(2, 7, 5)).astype("float32")
    check_same(
        lambda h, k, b: lean_gradients.gelu_dense(h, k, b, approximate=approximate),
        lambda h, k, b: keras.activations.gelu(h, approximate=approximate) @ k + b,
        tensors(hidden, kernel, bias),
        weights,
    )


def test_layer_norm_equals_keras_layer_norm_and_its_gradients():
    rng = np.random.default_rng(1)
    x = (2 + 3 * rng.normal(size=(2, 7, 16))).astype("float32")
    gamma = rng.normal(size=16).astype("float32")
    beta = rng.normal(size=16).astype("float32")
    weights = rng.normal(size=x.shape).astype("float32")
    check_same(
        lambda x, g, b: lean_gradients.layer_norm(x, g, b, 1e-6),
        lambda x, g, b: ops.layer_normalization(x, g, b, epsilon=1e-6),
        tensors(x, gamma, beta),
        weights,
    )


@pytest.mark.parametrize("masked", [False, True])
def test_attention_equals_dot_product_attention_and_its_gradients(masked):
    rng = np.random.default_rng(2)
    query, key, value = (rng.normal(size=(2, 9, 3, 8)).astype("float32") for _ in range(3))
    weights = rng.normal(size=query.shape).astype("float32")
    mask = None
    if masked:  # causal, and row 1 of the second example sees only itself
        mask = np.tril(np.ones((9, 9), bool))[None, None].repeat(2, axis=0)
        mask[1, 0, 1, 0] = False
    check_same(
        lambda q, k, v: lean_gradients.attention(q, k, v, mask=mask),
        lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask),
        tensors(query, key, value),
        weights,
    )


def test_bfloat16_inputs_keep_their_dtype_and_follow_float32():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 3, 8)).astype("float32")
    x16 = ops.cast(x, "bfloat16")
    attended = lean_gradients.attention(x16, x16, x16)
    normalized = lean_gradients.layer_norm(
        x16, ops.ones((8,)), ops.zeros((8,)), 1e-6
    )
    activated = lean_gradients.gelu_dense(x16, np.ones((8, 4), "float32"), np.zeros(4, "float32"))
    for out in (attended, normalized, activated):
        assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert_close(ops.cast(attended, "float32"), lean_gradients.attention(x, x, x), rtol=2e-2)


def test_the_transformer_block_trains_the_same_as_through_the_plain_ops(monkeypatch):
    """On JAX and TensorFlow the block goes through the lean functions; its
    output and every gradient equal the block on Keras' own ops (the path
    PyTorch takes)."""
    rng = np.random.default_rng(4)
    tokens = ops.convert_to_tensor(rng.normal(size=(2, 11, 16)).astype("float32"))
    weights = rng.normal(size=(2, 11, 16)).astype("float32")
    mask = ops.convert_to_tensor(np.tril(np.ones((11, 11), bool))[None].repeat(2, axis=0))
    for activation in ("gelu", "gelu_approximate"):
        block = TransformerBlock(num_heads=2, intermediate_dim=32, activation=activation)
        block.build(tokens.shape)
        for layer_norm in (block.attention_norm, block.mlp_norm):  # not the identity
            layer_norm.gamma.assign(rng.normal(size=16).astype("float32"))
            layer_norm.beta.assign(rng.normal(size=16).astype("float32"))

        def run(*values):
            outputs, _ = block.stateless_call(list(values), [], tokens, attention_mask=mask)
            return ops.sum(outputs * ops.convert_to_tensor(weights))

        variables = [ops.convert_to_tensor(v.numpy()) for v in block.trainable_variables]
        lean = value_and_grads(run, *variables)
        monkeypatch.setattr(lean_gradients, "lean_gradients_apply", lambda: False)
        plain = value_and_grads(run, *variables)
        monkeypatch.undo()
        assert_close(lean[0], plain[0])
        # Relative to the largest gradient: the key bias's is zero (a shift
        # of a whole row of scores), so both are rounding noise.
        largest = max(np.abs(numpy(g)).max() for g in plain[1])
        for lean_grad, plain_grad in zip(lean[1], plain[1]):
            assert_close(lean_grad, plain_grad, scale=largest)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="XLA's memory analysis of a compiled step: JAX's compiler",
)
def test_compiled_backward_keeps_no_attention_probabilities():
    """Four attention layers at L = 64: the compiled gradient of the lean
    attention needs far less temporary memory than the plain one, which
    keeps batch x heads x L x L probabilities (and more) per layer. Guards
    against the compiler merging the recomputed scores with the forward
    pass's (see `_recomputed`)."""
    import jax

    def stack(attention):
        def loss(x, kernels):
            for kernel in kernels:
                q, k, v = (ops.reshape(x @ (kernel * s), (8, 64, 4, 16)) for s in (1.0, 0.5, 2.0))
                x = x + ops.reshape(attention(q, k, v), (8, 64, 64))
            return ops.sum(ops.square(x))

        return loss

    x = np.ones((8, 64, 64), "float32")
    kernels = [np.full((64, 64), 0.01, "float32") for _ in range(4)]

    def temp_bytes(attention):
        compiled = jax.jit(jax.grad(stack(attention), argnums=1)).lower(x, kernels).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    lean = temp_bytes(lean_gradients.attention)
    plain = temp_bytes(lambda q, k, v: ops.dot_product_attention(q, k, v))
    probabilities = 4 * 8 * 4 * 64 * 64 * 4  # every layer's, float32
    assert plain - lean > probabilities, (lean, plain)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="XLA's memory analysis of a compiled step: JAX's compiler",
)
def test_compiled_backward_keeps_one_mlp_width_array_per_gelu_dense():
    """Each further MLP (GELU, then the output projection) adds about one
    array of the MLP's width to the compiled gradient's temporary memory:
    its GELU input. Autodiff keeps about four (the input, the activation
    and the GELU's terms), and `gelu_dense` keeps more still if the
    compiler merges the recomputed activation with the forward pass's (see
    `_recomputed`)."""
    import jax

    def loss(x, kernels):
        for widen, project in kernels:
            x = x + lean_gradients.gelu_dense(x @ widen, project, np.zeros(16, "float32"))
        return ops.sum(ops.square(x))

    x = np.ones((8, 64, 16), "float32")

    def temp_bytes(depth):
        kernels = [
            (np.full((16, 256), 0.01, "float32"), np.full((256, 16), 0.01, "float32"))
            for _ in range(depth)
        ]
        compiled = jax.jit(jax.grad(loss, argnums=1)).lower(x, kernels).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    mlp_width_array = 8 * 64 * 256 * 4
    per_mlp = (temp_bytes(8) - temp_bytes(4)) / 4
    assert per_mlp < 1.5 * mlp_width_array, per_mlp / mlp_width_array
