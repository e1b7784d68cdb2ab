"""The LLaVA-style backbone: OpenVision encoder -> projector -> language model."""

import keras
import keras_hub

from keras_ov2.models.llava.llava_language_model import PrefixedLanguageModel
from keras_ov2.models.llava.llava_projector import OpenVisionLLaVAProjector
from keras_ov2.models.presets import PresetLoading


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVisionLLaVABackbone(PresetLoading, keras_hub.models.Backbone):
    """An `OpenVision2Backbone` as the vision tower of a KerasHub language
    model, the LLaVA-1.5 way.

    images -> the encoder's patch tokens after block `vision_layer` (the
    penultimate, -2, as LLaVA; see `OpenVision2Backbone.intermediate_tokens`)
    -> `OpenVisionLLaVAProjector` (to the LM's `hidden_dim`) -> placed
    **before** the embedded prompt tokens -> the language backbone, causal
    over the whole [image; text] sequence, image tokens never masked.

    Inputs: `{"images": normalised float (B, H, W, 3), "token_ids": (B, T),
    "padding_mask": (B, T)}`. Output: the LM's final states at the text
    positions, (B, T, hidden_dim); `token_embedding` is the LM's, so
    `token_embedding(outputs, reverse=True)` gives next-token logits.

    The language backbone may be any KerasHub decoder-only backbone whose
    graph runs from its `token_embedding` (GPT-2, Gemma, Llama, Mistral,
    ...; see `llava_language_model.SUPPORTED`): its own graph is reused
    from the embeddings on, so no per-family code. With learned positions
    (GPT-2), image tokens + text tokens must fit its `max_sequence_length`.

    Args:
        vision_encoder: an `OpenVision2Backbone`.
        language_backbone: a KerasHub causal LM backbone.
        vision_layer: int, the encoder block whose patch tokens are used.
        freeze_vision: bool, keep the encoder's weights fixed (LLaVA's
            stages 1 and 2); `False` fine-tunes it too.
        dtype: the policy of the projector, and of the whole model when it
            is rebuilt from its config (e.g. `from_preset(dtype=...)`).
    """

    def __init__(
        self,
        vision_encoder,
        language_backbone,
        vision_layer=-2,
        freeze_vision=True,
        dtype=None,
        **kwargs,
    ):
        # === Layers ===
        self.projector = OpenVisionLLaVAProjector(
            language_backbone.hidden_dim, dtype=dtype, name="projector"
        )
        self.language_model = PrefixedLanguageModel(
            language_backbone, name="language_model"
        )
        self.token_embedding = language_backbone.token_embedding

        # === Functional Model ===
        images = keras.Input(vision_encoder.image_shape, name="images")
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((None,), dtype="int32", name="padding_mask")
        image_tokens = self.projector(
            vision_encoder.intermediate_tokens(images, vision_layer)
        )
        sequence_output = self.language_model(image_tokens, token_ids, padding_mask)
        super().__init__(
            inputs={
                "images": images,
                "token_ids": token_ids,
                "padding_mask": padding_mask,
            },
            outputs=sequence_output,
            dtype=dtype,
            **kwargs,
        )

        # The towers, tracked whole, also where the graph skips a part
        # (blocks after `vision_layer`, `encoder_norm`): set after
        # `super().__init__` so that the torch backend tracks them too.
        self.vision_encoder = vision_encoder
        self.language_backbone = language_backbone

        # === Config ===
        self.vision_layer = vision_layer
        self.freeze_vision = freeze_vision
        # Frozen variables are not trainable: no gradients, no optimizer
        # slots, no weight decay. What the image tokens never pass through
        # (later blocks, the pooling norm and head) stays frozen either way.
        vision_encoder.trainable = not freeze_vision
        for layer in self._unused_vision_layers():
            layer.trainable = False

    def _unused_vision_layers(self):
        encoder = self.vision_encoder
        after = encoder.transformer_layers[self.vision_layer % encoder.num_layers + 1 :]
        return [*after, encoder.encoder_norm, *([encoder.head] if encoder.head else [])]

    def embed_images(self, images):
        """Normalised images -> the LM-width image tokens (B, N, hidden_dim)
        that precede the text."""
        tokens = self.vision_encoder.intermediate_tokens(images, self.vision_layer)
        return self.projector(tokens)

    def get_config(self):
        config = super().get_config()
        config.update(
            vision_encoder=keras.layers.serialize(self.vision_encoder),
            language_backbone=keras.layers.serialize(self.language_backbone),
            vision_layer=self.vision_layer,
            freeze_vision=self.freeze_vision,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for tower in ("vision_encoder", "language_backbone"):
            layer = config[tower]
            if isinstance(layer, dict):
                if config.get("dtype") is not None:
                    layer = {**layer, "config": {**layer["config"], "dtype": config["dtype"]}}
                config[tower] = keras.layers.deserialize(layer)
        return super().from_config(config)
