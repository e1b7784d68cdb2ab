"""OpenVision v1's caption decoder: learned queries behind an image+text prefix."""

import keras
from keras import ops

from keras_ov2 import variants
from keras_ov2.models.common import layouts
from keras_ov2.models.common.text_transformer import decoder_attention_mask
from keras_ov2.models.common.text_transformer import text_transformer_layers


def query_attention_mask(num_prefix, num_queries):
    """(P+Q, P+Q) bool: the prefix (image tokens, then web-caption tokens) is
    bidirectional and never sees the queries; query i sees the whole prefix
    and queries 0..i. This is the OV2 decoder's "prefix" mask with the
    queries in the place of the caption."""
    total = num_prefix + num_queries
    return decoder_attention_mask(num_prefix, 0, total, total, "prefix")


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision1CaptionDecoder(keras.layers.Layer):
    """[image tokens -> Dense; web-caption token features -> Dense; learned
    queries] -> pre-norm blocks under `query_attention_mask` -> the query
    positions -> `decoder_norm` -> float32 head (no bias) to the vocabulary.

    The caption's own tokens are never inputs: query i predicts caption
    token i+1 (the authors' `text_decoder`, `fusion_style='concat'`). No
    positional embedding; the queries' order comes from the causal mask.

    `call(image_tokens, text_tokens)`: (B, N, D_vit) encoder patch tokens
    (all of them) and (B, T, W_txt) text-encoder token features -> logits
    (B, num_queries, vocabulary_size) in float32.

    Args:
        vocabulary_size: int, head rows (32000).
        hidden_dim, num_layers, num_heads, intermediate_dim: the size (see
            `from_variant`).
        num_queries: int, learned query tokens = caption positions (128).
        layer_norm_epsilon: float.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    # Encoder patch tokens (a 6 x 6 grid of width 192) and the text
    # encoder's token features of the web caption (79 positions of 192).
    image_tokens = np.random.normal(size=(2, 36, 192)).astype("float32")
    text_tokens = np.random.normal(size=(2, 79, 192)).astype("float32")

    decoder = keras_ov2.OpenVision1CaptionDecoder.from_variant("Ti")
    decoder(image_tokens, text_tokens)  # (2, 128, 32000) logits

    # A custom config: 16 queries predict a 16-position caption.
    decoder = keras_ov2.OpenVision1CaptionDecoder(
        vocabulary_size=32000,
        hidden_dim=64,
        num_layers=2,
        num_heads=2,
        intermediate_dim=256,
        num_queries=16,
    )
    decoder(image_tokens, text_tokens)  # (2, 16, 32000)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        num_queries=128,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_queries = num_queries
        self.layer_norm_epsilon = layer_norm_epsilon
        self.transformer_layers = text_transformer_layers(
            hidden_dim,
            num_layers,
            num_heads,
            intermediate_dim,
            layer_norm_epsilon,
            self.dtype_policy,
        )
        self.decoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="decoder_norm"
        )
        self.head = keras.layers.Dense(
            vocabulary_size,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=hidden_dim**-0.5),
            dtype="float32",
            name="head",
        )

    @classmethod
    def from_variant(cls, variant, vocabulary_size=32000, **kwargs):
        """Builds one of the authors' sizes: Ti, S, B, L, So400m, H, g."""
        width, depth, mlp, heads = variants.lookup(variants.TEXT, variant, "text")
        return cls(vocabulary_size, width, depth, heads, mlp, **kwargs)

    get_layout_map = layouts.layout_map_method(layouts.V1_CAPTION_DECODER)

    def build(self, image_tokens_shape, text_tokens_shape):
        def projection(name, input_shape):
            layer = keras.layers.Dense(
                self.hidden_dim,
                use_bias=False,
                kernel_initializer=keras.initializers.RandomNormal(
                    stddev=input_shape[-1] ** -0.5
                ),
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build(input_shape)
            return layer

        self.image_projection = projection("image_projection", image_tokens_shape)
        self.text_projection = projection("text_projection", text_tokens_shape)
        self.learnable_tokens = self.add_weight(
            shape=(self.num_queries, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="learnable_tokens",
        )
        sequence_shape = (None, None, self.hidden_dim)
        for block in self.transformer_layers:
            block.build(sequence_shape)
        self.decoder_norm.build(sequence_shape)
        self.head.build(sequence_shape)

    def call(self, image_tokens, text_tokens):
        return self.head(self.text_states(image_tokens, text_tokens))

    def text_states(self, image_tokens, text_tokens):
        """What the head reads: the query positions after `decoder_norm`,
        (B, num_queries, hidden_dim). A loss that applies the head itself
        (`chunked_caption_loss`) starts from here; see `call`."""
        batch = ops.shape(image_tokens)[0]
        queries = ops.cast(self.learnable_tokens, self.compute_dtype)[None]
        queries = ops.broadcast_to(queries, (batch, self.num_queries, self.hidden_dim))
        prefix = [self.image_projection(image_tokens), self.text_projection(text_tokens)]
        x = ops.concatenate([*prefix, queries], axis=1)
        num_prefix = ops.shape(x)[1] - self.num_queries
        mask = query_attention_mask(num_prefix, self.num_queries)[None]
        for block in self.transformer_layers:
            x = block(x, attention_mask=mask)
        return self.decoder_norm(x[:, -self.num_queries :])

    def compute_output_shape(self, image_tokens_shape, text_tokens_shape):
        return (image_tokens_shape[0], self.num_queries, self.vocabulary_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            num_queries=self.num_queries,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
