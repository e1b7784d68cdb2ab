"""OpenVision v1's text tower: a bidirectional encoder pooled at its last token."""

import keras
from keras import ops

from keras_ov2 import variants
from keras_ov2.models.common import layouts
from keras_ov2.models.common.text_transformer import text_transformer_layers


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision1TextEncoder(keras.layers.Layer):
    """Token embedding + learned positions -> pre-norm blocks (tanh GELU, no
    attention mask: every token sees every other, pads included) ->
    `encoder_norm` -> the last position (the `[CLS]` the preprocessor puts
    in the last slot) -> bias-free `head` to the shared embedding width.

    `call(token_ids)` on int (B, L) ids, L <= `max_sequence_length`, returns:
    - `"sequence_output"` (B, L-1, W): every token but `[CLS]`, before
      `encoder_norm`: what the OpenVision v1 caption decoder conditions on.
    - `"pooled_output"` (B, W): `encoder_norm` of the last token.
    - `"projected_output"` (B, projection_dim): the head on it, the text
      embedding of the contrastive loss.

    Args:
        vocabulary_size: int, embedding rows (32000).
        hidden_dim, num_layers, num_heads, intermediate_dim: the size (see
            `from_variant`).
        projection_dim: int, the embedding width shared with the image head.
        max_sequence_length: int, rows of the position table (80).
        layer_norm_epsilon: float.

    Example:
    ```python
    import keras_ov2

    preprocessor = keras_ov2.OpenVision1Preprocessor(keras_ov2.OpenVision2Tokenizer())
    token_ids = preprocessor.tokenize_texts(["red circle", "blue square"])  # (2, 80)

    # The authors' Ti text tower, embedding into 384 dimensions.
    text_encoder = keras_ov2.OpenVision1TextEncoder.from_variant(
        "Ti", projection_dim=384
    )
    outputs = text_encoder(token_ids)
    outputs["sequence_output"]  # (2, 79, 192)
    outputs["pooled_output"]  # (2, 192)
    outputs["projected_output"]  # (2, 384)

    # A custom config.
    text_encoder = keras_ov2.OpenVision1TextEncoder(
        vocabulary_size=32000,
        hidden_dim=64,
        num_layers=2,
        num_heads=2,
        intermediate_dim=256,
        projection_dim=32,
    )
    text_encoder(token_ids)["projected_output"]  # (2, 32)
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        num_heads,
        intermediate_dim,
        projection_dim,
        max_sequence_length=80,
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.projection_dim = projection_dim
        self.max_sequence_length = max_sequence_length
        self.layer_norm_epsilon = layer_norm_epsilon
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
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
        self.encoder_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="encoder_norm"
        )
        self.head = keras.layers.Dense(
            projection_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="head",
        )

    @classmethod
    def from_variant(cls, variant, projection_dim, vocabulary_size=32000, **kwargs):
        """Builds one of the authors' sizes: Ti, S, B, L, So400m, H."""
        width, depth, mlp, heads = variants.lookup(variants.TEXT, variant, "text")
        return cls(vocabulary_size, width, depth, heads, mlp, projection_dim, **kwargs)

    get_layout_map = layouts.layout_map_method(layouts.V1_TEXT_ENCODER)

    def build(self, token_ids_shape=None):
        self.position_embedding = self.add_weight(
            shape=(1, self.max_sequence_length, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.01),
            autocast=False,  # read in float32 under mixed precision
            name="position_embedding",
        )
        self.token_embedding.build(None)
        sequence_shape = (None, None, self.hidden_dim)
        for block in self.transformer_layers:
            block.build(sequence_shape)
        self.encoder_norm.build(sequence_shape)
        self.head.build((None, self.hidden_dim))

    def call(self, token_ids):
        length = token_ids.shape[1]
        if length is not None and not 2 <= length <= self.max_sequence_length:
            raise ValueError(
                f"OpenVision1TextEncoder takes 2 to {self.max_sequence_length} "
                f"token ids per text (its position table); received {length}."
            )
        length = length or ops.shape(token_ids)[1]
        # Token + position embeddings add up in float32, as the authors';
        # the blocks then run in the compute dtype.
        positions = ops.convert_to_tensor(self.position_embedding)[:, :length]
        x = ops.cast(self.token_embedding(token_ids) + positions, self.compute_dtype)
        for block in self.transformer_layers:
            x = block(x)
        pooled = self.encoder_norm(x[:, -1])
        return {
            "sequence_output": x[:, :-1],
            "pooled_output": pooled,
            "projected_output": self.head(pooled),
        }

    def compute_output_shape(self, token_ids_shape):
        batch, length = token_ids_shape
        return {
            "sequence_output": (batch, None if length is None else length - 1, self.hidden_dim),
            "pooled_output": (batch, self.hidden_dim),
            "projected_output": (batch, self.projection_dim),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            projection_dim=self.projection_dim,
            max_sequence_length=self.max_sequence_length,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
