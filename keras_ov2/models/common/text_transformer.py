"""The authors' text-transformer blocks and decoder attention masks, shared
by every text tower."""

import keras
from keras import ops

from keras_ov2.layers import TransformerBlock


ATTENTION_MASKS = ("causal", "prefix")


def decoder_attention_mask(num_visual, query_start, num_queries, num_keys, mode):
    """(num_queries, num_keys) bool: which key each query position may see.

    Positions count over the whole [visual; text] sequence. `"causal"` lets
    position p see keys 0..p (the authors' published code path). `"prefix"`
    also lets every visual position see all visual tokens (a prefix LM).
    Text positions see all earlier positions in both modes.
    """
    queries = query_start + ops.arange(num_queries)[:, None]
    keys = ops.arange(num_keys)[None, :]
    visible = keys <= queries
    if mode == "prefix":
        visible = visible | ((queries < num_visual) & (keys < num_visual))
    return visible


def text_transformer_layers(
    hidden_dim, num_layers, num_heads, intermediate_dim, layer_norm_epsilon, dtype
):
    """Pre-norm blocks with tanh GELU and the authors' `text_transformer`
    initialisers: q/k/v normal(W^-0.5), attention out and MLP out
    normal(W^-0.5 / sqrt(24)) (their block depth defaults to 12), MLP in
    normal((2W)^-0.5). Named `transformer_layer_{i}`."""

    def normal(stddev):
        return keras.initializers.RandomNormal(stddev=stddev)

    width = hidden_dim**-0.5
    return [
        TransformerBlock(
            num_heads,
            intermediate_dim,
            activation="gelu_approximate",
            layer_norm_epsilon=layer_norm_epsilon,
            attention_initializer=normal(width),
            attention_output_initializer=normal(width * 24**-0.5),
            mlp_initializer=normal((2 * hidden_dim) ** -0.5),
            mlp_output_initializer=normal(width * 24**-0.5),
            dtype=dtype,
            name=f"transformer_layer_{i}",
        )
        for i in range(num_layers)
    ]
