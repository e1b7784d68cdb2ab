"""The authors' text-transformer blocks, shared by every text tower."""

import keras

from keras_ov2.layers import TransformerBlock

# (width, depth, MLP width, heads) of OpenVision v1's text encoder and caption
# decoder (`text_transformer.decode_variant`, `text_decoder.decode_variant`).
TEXT_VARIANTS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (512, 12, 2048, 8),
    "L": (768, 12, 3072, 12),
    "So400m": (1152, 27, 4304, 16),
    "H": (1024, 24, 4096, 16),
    "g": (1024, 24, 4096, 16),
}


def text_variant(variant):
    """(width, depth, MLP width, heads) of `variant`, or a clear error."""
    if variant not in TEXT_VARIANTS:
        raise ValueError(
            f"Unknown text variant {variant!r}; expected one of "
            f"{sorted(TEXT_VARIANTS)}."
        )
    return TEXT_VARIANTS[variant]


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
