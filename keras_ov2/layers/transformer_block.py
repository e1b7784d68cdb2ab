"""The pre-norm transformer block shared by the encoder and the decoders."""

import keras

from keras_ov2.layers import lean_gradients
from keras_ov2.layers.attention import MultiHeadSelfAttention


@keras.saving.register_keras_serializable(package="keras_ov2")
class TransformerBlock(keras.layers.Layer):
    """`x + attn(LN(x))`, then `x + MLP(LN(x))`; LayerNorm eps 1e-6.

    `activation` is `"gelu"` (exact, the vision encoder) or
    `"gelu_approximate"` (tanh, the text decoders). No dropout, no
    layer-scale: the authors' blocks have neither.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    tokens = np.random.normal(size=(2, 37, 192)).astype("float32")
    block = keras_ov2.layers.TransformerBlock(num_heads=3, intermediate_dim=768)
    block(tokens)  # (2, 37, 192)
    ```
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        attention_initializer=None,
        attention_output_initializer=None,
        mlp_initializer=None,
        mlp_output_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ("gelu", "gelu_approximate"):
            raise ValueError(
                "activation must be 'gelu' (exact) or 'gelu_approximate' "
                f"(tanh); got {activation!r}."
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        normal = keras.initializers.RandomNormal(stddev=0.02)
        self.attention_initializer = keras.initializers.get(
            attention_initializer or normal
        )
        self.attention_output_initializer = keras.initializers.get(
            attention_output_initializer or normal
        )
        self.mlp_initializer = keras.initializers.get(mlp_initializer or normal)
        self.mlp_output_initializer = keras.initializers.get(
            mlp_output_initializer
            or keras.initializers.VarianceScaling(
                0.3072, mode="fan_out", distribution="truncated_normal"
            )
        )

    def build(self, input_shape):
        dim = input_shape[-1]

        def norm(name):
            layer = lean_gradients.LeanLayerNormalization(
                epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build(input_shape)
            return layer

        self.attention_norm = norm("attention_norm")
        self.attention = MultiHeadSelfAttention(
            self.num_heads,
            kernel_initializer=self.attention_initializer,
            output_initializer=self.attention_output_initializer,
            dtype=self.dtype_policy,
            name="attention",
        )
        self.attention.build(input_shape)
        self.mlp_norm = norm("mlp_norm")
        self.mlp_intermediate = keras.layers.Dense(
            self.intermediate_dim,
            kernel_initializer=self.mlp_initializer,
            dtype=self.dtype_policy,
            name="mlp_intermediate",
        )
        self.mlp_intermediate.build(input_shape)
        self.mlp_output = keras.layers.Dense(
            dim,
            kernel_initializer=self.mlp_output_initializer,
            dtype=self.dtype_policy,
            name="mlp_output",
        )
        self.mlp_output.build((*input_shape[:-1], self.intermediate_dim))

    def call(self, x, attention_mask=None, cache=None, cache_update_index=None):
        attended = self.attention(
            self.attention_norm(x),
            attention_mask=attention_mask,
            cache=cache,
            cache_update_index=cache_update_index,
        )
        if cache is not None:
            attended, cache = attended
        x = x + attended
        hidden = self.mlp_intermediate(self.mlp_norm(x))
        approximate = self.activation == "gelu_approximate"
        if lean_gradients.lean_gradients_apply():
            mlp_output = self.mlp_output
            x = x + lean_gradients.gelu_dense(
                hidden, mlp_output.kernel, mlp_output.bias, approximate=approximate
            )
        else:
            hidden = keras.activations.gelu(hidden, approximate=approximate)
            x = x + self.mlp_output(hidden)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        serialize = keras.initializers.serialize
        config.update(
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            attention_initializer=serialize(self.attention_initializer),
            attention_output_initializer=serialize(
                self.attention_output_initializer
            ),
            mlp_initializer=serialize(self.mlp_initializer),
            mlp_output_initializer=serialize(self.mlp_output_initializer),
        )
        return config
