"""OpenVision 2's caption decoder: a visual prefix in front of the caption."""

import keras
from keras import ops

from keras_ov2 import variants
from keras_ov2.models.common import layouts
from keras_ov2.models.common.text_transformer import ATTENTION_MASKS
from keras_ov2.models.common.text_transformer import decoder_attention_mask
from keras_ov2.models.common.text_transformer import text_transformer_layers

@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2TextDecoder(keras.layers.Layer):
    """Visual tokens -> Dense (no bias) -> prefix of the caption embeddings ->
    pre-norm blocks (tanh GELU) -> drop visual positions -> LayerNorm ->
    untied Dense head (no bias) to the vocabulary.

    No positional embedding: order comes from the mask alone, and the visual
    tokens carry the encoder's sin-cos positions. Initialisers follow the
    authors' `text_decoder_v2`.

    Args:
        vocabulary_size: int, rows of the embedding and the head (32000).
        hidden_dim, num_layers, num_heads, intermediate_dim: the decoder size
            (see `keras_ov2.variants.DECODERS` and `from_variant`).
        attention_mask: `"causal"` (default) or `"prefix"`.
        layer_norm_epsilon: float.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    # Patch tokens of an encoder (a 6 x 6 grid of width 192) and caption ids
    # (`x["token_ids"]` of an `OpenVision2CaptionerPreprocessor`).
    visual_tokens = np.random.normal(size=(2, 36, 192)).astype("float32")
    token_ids = np.random.randint(3, 30522, size=(2, 31)).astype("int32")

    # The authors' Ti decoder.
    decoder = keras_ov2.OpenVision2TextDecoder.from_variant("Ti")
    decoder(visual_tokens, token_ids)  # (2, 31, 32000) logits, float32

    # A custom config, with visual tokens that see each other.
    decoder = keras_ov2.OpenVision2TextDecoder(
        vocabulary_size=32000,
        hidden_dim=64,
        num_layers=2,
        num_heads=2,
        intermediate_dim=256,
        attention_mask="prefix",
    )
    decoder(visual_tokens, token_ids)  # (2, 31, 32000)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        attention_mask="causal",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention_mask not in ATTENTION_MASKS:
            raise ValueError(
                f"attention_mask must be one of {ATTENTION_MASKS}; received "
                f"{attention_mask!r}."
            )
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.attention_mask = attention_mask
        self.layer_norm_epsilon = layer_norm_epsilon

        def normal(stddev):
            return keras.initializers.RandomNormal(stddev=stddev)

        width = hidden_dim**-0.5
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=normal(0.02),
            dtype=self.variable_dtype,  # float32 under mixed precision
            name="token_embedding",
        )
        self.transformer_layers = text_transformer_layers(
            hidden_dim,
            num_layers,
            num_heads,
            intermediate_dim,
            layer_norm_epsilon,
            self.dtype_policy,
        )
        self.decoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="decoder_norm",
        )
        self.head = keras.layers.Dense(
            vocabulary_size,
            use_bias=False,
            kernel_initializer=normal(width),
            dtype="float32",
            name="head",
        )

    @classmethod
    def from_variant(cls, variant, vocabulary_size=32000, **kwargs):
        """Builds one of the authors' decoder sizes: Ti, S, M/B, L, H, G."""
        width, depth, mlp, heads = variants.lookup(variants.DECODERS, variant, "decoder")
        return cls(vocabulary_size, width, depth, heads, mlp, **kwargs)

    get_layout_map = layouts.layout_map_method(layouts.TEXT_DECODER)

    def build(self, visual_tokens_shape, token_ids_shape=None):
        self.visual_projection = keras.layers.Dense(
            self.hidden_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=visual_tokens_shape[-1] ** -0.5
            ),
            dtype=self.dtype_policy,
            name="visual_projection",
        )
        self.visual_projection.build(visual_tokens_shape)
        self.token_embedding.build(None)
        sequence_shape = (None, None, self.hidden_dim)
        for block in self.transformer_layers:
            block.build(sequence_shape)
        self.decoder_norm.build(sequence_shape)
        self.head.build(sequence_shape)

    def embed(self, visual_tokens, token_ids):
        """[projected visual tokens; token embeddings] along the sequence, in
        the blocks' compute dtype (the lookup runs in the weights' dtype)."""
        parts = [] if visual_tokens is None else [self.visual_projection(visual_tokens)]
        parts.append(ops.cast(self.token_embedding(token_ids), self.compute_dtype))
        return ops.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def logits(self, hidden, num_text):
        """LayerNorm + head on the last `num_text` positions, in float32."""
        return self.head(self.decoder_norm(hidden[:, -num_text:]))

    def call(self, visual_tokens, token_ids, parallel=None):
        """Teacher-forced logits (B, T, vocabulary) for every caption position.

        `parallel` (B,) bool marks rows trained by CapPa-style parallel
        prediction: they attend to every position, without a causal mask.
        """
        return self.head(self.text_states(visual_tokens, token_ids, parallel))

    def text_states(self, visual_tokens, token_ids, parallel=None):
        """What the head reads: the caption positions after the final
        LayerNorm, (B, T, hidden_dim). A loss that applies the head itself
        (`chunked_caption_loss`) starts from here; see `call`."""
        num_visual = visual_tokens.shape[1] or ops.shape(visual_tokens)[1]
        num_text = token_ids.shape[1] or ops.shape(token_ids)[1]
        x = self.embed(visual_tokens, token_ids)
        total = num_visual + num_text
        mask = decoder_attention_mask(
            num_visual, 0, total, total, self.attention_mask
        )[None]
        if parallel is not None:
            mask = mask | ops.cast(parallel, "bool")[:, None, None]
        for block in self.transformer_layers:
            x = block(x, attention_mask=mask)
        return self.decoder_norm(x[:, -num_text:])

    def call_with_cache(self, token_ids, cache, cache_update_index, visual_tokens=None):
        """Runs new positions against a KV cache; returns (logits, cache).

        `cache` is (B, num_layers, 2, S, heads, head_dim). With
        `visual_tokens` (prefill) the visual prefix goes in first; the new
        positions start at `cache_update_index`.
        """
        x = self.embed(visual_tokens, token_ids)
        num_visual = 0 if visual_tokens is None else visual_tokens.shape[1]
        mask = decoder_attention_mask(
            num_visual,
            cache_update_index,
            ops.shape(x)[1],
            ops.shape(cache)[3],
            self.attention_mask,
        )[None]
        layer_caches = []
        for i, block in enumerate(self.transformer_layers):
            x, layer_cache = block(
                x,
                attention_mask=mask,
                cache=cache[:, i],
                cache_update_index=cache_update_index,
            )
            layer_caches.append(layer_cache)
        return self.logits(x, ops.shape(token_ids)[1]), ops.stack(layer_caches, axis=1)

    def empty_cache(self, batch_size, length, dtype):
        head_dim = self.hidden_dim // self.num_heads
        shape = (batch_size, self.num_layers, 2, length, self.num_heads, head_dim)
        return ops.zeros(shape, dtype=dtype)

    def compute_output_shape(self, visual_tokens_shape, token_ids_shape):
        return (*token_ids_shape, self.vocabulary_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            attention_mask=self.attention_mask,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
