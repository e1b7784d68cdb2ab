"""Multi-head self-attention with separate q/k/v/out projections, all biased."""

import keras
from keras import ops

from keras_ov2.layers import lean_gradients


@keras.saving.register_keras_serializable(package="keras_ov2")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Self-attention laid out as the authors' Flax module.

    The q/k/v/out kernels are plain (D, D) matrices with the head index as the
    outer factor of the D axis, so they map one to one onto the JAX
    checkpoints and onto open_clip's packed `in_proj_weight`.

    With `cache` (B, 2, S, heads, head_dim), the new keys and values are written
    at `cache_update_index` and attention runs over the whole cache; the
    updated cache is returned with the output. The caller masks unwritten slots.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    tokens = np.random.normal(size=(2, 37, 192)).astype("float32")
    attention = keras_ov2.layers.MultiHeadSelfAttention(num_heads=3)
    attention(tokens)  # (2, 37, 192)
    ```
    """

    def __init__(
        self,
        num_heads,
        kernel_initializer="glorot_uniform",
        output_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"Attention width {dim} is not divisible by num_heads="
                f"{self.num_heads}."
            )
        self.head_dim = dim // self.num_heads

        def dense(name, initializer):
            layer = keras.layers.Dense(
                dim,
                kernel_initializer=initializer,
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build(input_shape)
            return layer

        self.query = dense("query", self.kernel_initializer)
        self.key = dense("key", self.kernel_initializer)
        self.value = dense("value", self.kernel_initializer)
        self.output_dense = dense("output", self.output_initializer)

    def split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, self.head_dim))

    def call(self, x, attention_mask=None, cache=None, cache_update_index=None):
        query = self.split_heads(self.query(x))
        key = self.split_heads(self.key(x))
        value = self.split_heads(self.value(x))
        if cache is not None:
            start = [0, cache_update_index, 0, 0]
            key = ops.slice_update(cache[:, 0], start, key)
            value = ops.slice_update(cache[:, 1], start, value)
            cache = ops.stack([key, value], axis=1)
        mask = None if attention_mask is None else attention_mask[:, None]
        if lean_gradients.lean_gradients_apply():
            attended = lean_gradients.attention(query, key, value, mask=mask)
        else:
            attended = ops.dot_product_attention(query, key, value, mask=mask)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        attended = ops.reshape(attended, (batch, length, -1))
        output = self.output_dense(attended)
        return output if cache is None else (output, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            kernel_initializer=keras.initializers.serialize(
                self.kernel_initializer
            ),
            output_initializer=keras.initializers.serialize(
                self.output_initializer
            ),
        )
        return config
