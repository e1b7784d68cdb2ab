"""OpenVision v1 pretraining task: two towers, dual contrastive loss, captioner."""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_ov2.layers import ImageNormalization
from keras_ov2.layers.contrastive_logits import ContrastiveLogits
from keras_ov2.layers.contrastive_logits import l2_normalize
from keras_ov2.layers.image_normalization import check_uint8_images
from keras_ov2.models.presets import PresetLoading
from keras_ov2.models.common import layouts
from keras_ov2.models.common.caption_loss import CaptionLoss
from keras_ov2.models.common.fused_caption_head import FusedCaptionHead
from keras_ov2.models.openvision1.contrastive_loss import dual_contrastive_loss
from keras_ov2.models.common.mixed_policy import follow_backbone_dtype
from keras_ov2.models.openvision1.openvision1_preprocessor import OpenVision1Preprocessor
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.recipe_optimizer import RecipeCompile


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVisionCLIPS(PresetLoading, FusedCaptionHead, RecipeCompile, keras_hub.models.Task):
    """Pretrains an `OpenVision2Backbone` (with its v1 `projection_dim` head)
    the OpenVision v1 way, CLIPS-style.

    uint8 images -> ImageNet normalisation -> encoder: patch tokens and the
    projected pooled embedding. Web caption and one synthetic sentence ->
    the same `OpenVision1TextEncoder`. Outputs a dict:
    - `"web_logits"`, `"sentence_logits"`: (B, B) `exp(t) * cos` between
      every image and every web caption / sentence of the batch;
    - `"caption_logits"`: (B, C, vocabulary) from `OpenVision1CaptionDecoder`,
      conditioned on all patch tokens and the web caption's token features.

    Loss = `clip_loss_weight` (1) x dual contrastive loss + CaptionLoss with
    weight `caption_loss_weight` (2) on the detailed caption; `fit` also
    reports both parts ("clip_loss", "caption_loss"). As in
    `OpenVision2Captioner`, training fuses the decoder's vocabulary head
    into the caption loss (`FusedCaptionHead`, `chunked_caption_loss`: no
    (B, C, vocabulary) logits held) unless compiled with
    `CaptionLoss(chunk_size=None)`, metrics or `loss_weights`. The
    contrastive loss runs over the batch the model sees: under
    `keras.distribution` on JAX that is the global batch (XLA gathers the
    embeddings), which is what the authors' all-gather computes.

    Inputs are the preprocessor's `{"images": uint8 (B, H, W, 3),
    "web_token_ids": int32 (B, L), "sentence_token_ids": int32 (B, L)}`.

    Args:
        backbone: an `OpenVision2Backbone` with `projection_dim`.
        text_encoder: an `OpenVision1TextEncoder` with the same
            `projection_dim`.
        decoder: an `OpenVision1CaptionDecoder`.
        preprocessor: an `OpenVision1Preprocessor` or None.
        clip_loss_weight, caption_loss_weight: floats (1 and 2).

    Example:
    ```python
    import numpy as np
    import keras_ov2
    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data import make_pretraining_dataset

    # The demo-sized OpenVision v1 model, randomly initialised.
    clips = keras_ov2.OpenVisionCLIPS.from_preset(
        "openvision_clips_tiny_patch14_84", load_weights=False
    )

    # Batches of (uint8 images, (web captions, detailed captions)).
    source = SyntheticScenes(256, image_size=84)
    train = make_pretraining_dataset(
        source,
        84,
        batch_size=8,
        caption_field=("short_caption", "caption"),
        augment_images=False,
    )
    clips.compile(learning_rate=1e-3, total_steps=10)
    clips.fit(train, steps_per_epoch=10, epochs=1)

    # Retrieval and zero-shot classification by cosine similarity.
    images = np.stack([source[i]["image"] for i in range(2)])
    clips.similarity(images, ["red circle", "blue square"])  # (2, 2)
    clips.encode_images(images)  # (2, 128), L2-normalised
    clips.backbone  # the pretrained OpenVision2Backbone
    ```
    """

    backbone_cls = OpenVision2Backbone
    preprocessor_cls = OpenVision1Preprocessor

    def __init__(
        self,
        backbone,
        text_encoder,
        decoder,
        preprocessor=None,
        clip_loss_weight=1.0,
        caption_loss_weight=2.0,
        **kwargs,
    ):
        check_parts(backbone, text_encoder, decoder, preprocessor)
        # === Config === (first: the base class compiles, which reads it)
        self.clip_loss_weight = clip_loss_weight
        self.caption_loss_weight = caption_loss_weight

        # === Layers ===
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.preprocessor = preprocessor
        # Pixels reach the patch convolution in its weights' dtype (float32
        # under mixed precision), as the authors'.
        self.image_normalization = ImageNormalization(
            dtype=backbone.variable_dtype, name="image_normalization"
        )
        self.contrastive_logits = ContrastiveLogits(name="contrastive_logits")

        # === Functional Model ===
        images = keras.Input((None, None, 3), dtype="uint8", name="images")
        web_ids = keras.Input((None,), dtype="int32", name="web_token_ids")
        sentence_ids = keras.Input((None,), dtype="int32", name="sentence_token_ids")
        outputs = self._forward(images, web_ids, sentence_ids)
        super().__init__(
            inputs={
                "images": images,
                "web_token_ids": web_ids,
                "sentence_token_ids": sentence_ids,
            },
            outputs=outputs,
            **kwargs,
        )
        # `call` checks images itself, with errors that say what was expected.
        self.input_spec = None

        self.clip_loss_tracker = keras.metrics.Mean(name="clip_loss")
        self.caption_loss_tracker = keras.metrics.Mean(name="caption_loss")

    def _forward(self, images, web_ids, sentence_ids, head=True):
        """The model's outputs; with `head=False`, "caption_states" (the
        decoder's `text_states`, (B, C, width)) in place of "caption_logits"."""
        image = self.backbone(self.image_normalization(images))
        # Separate calls of one encoder: no op mixes samples, so this equals
        # the authors' single call on the 2B concatenated texts.
        web = self.text_encoder(web_ids)
        sentence = self.text_encoder(sentence_ids)
        outputs = {
            "web_logits": self.contrastive_logits(
                image["projected_output"], web["projected_output"]
            ),
            "sentence_logits": self.contrastive_logits(
                image["projected_output"], sentence["projected_output"]
            ),
        }
        caption = (self.decoder if head else self.decoder.text_states)(
            image["sequence_output"], web["sequence_output"]
        )
        outputs["caption_logits" if head else "caption_states"] = caption
        return outputs

    def call(self, inputs, training=None, mask=None):
        """The outputs dict (see the class docstring); inside a fused
        `train_step` (see `FusedCaptionHead`), "caption_states" (B, C,
        width) in place of "caption_logits"."""
        check_uint8_images(inputs["images"], "OpenVisionCLIPS")
        if self.fuses(training):
            return self._forward(
                inputs["images"],
                ops.cast(inputs["web_token_ids"], "int32"),
                ops.cast(inputs["sentence_token_ids"], "int32"),
                head=False,
            )
        return super().call(inputs, training=training, mask=mask)

    def recipe_loss(self):
        """The loss `compile` defaults to (the authors' recipe, see
        `RecipeCompile.compile`): the caption loss, weighted by
        `caption_loss_weight`; the contrastive part is added in
        `compute_loss`."""
        return CaptionLoss(weight=self.caption_loss_weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The dual contrastive loss plus the caption loss, which a fused
        `train_step` computes from "caption_states" (`FusedCaptionHead`)."""
        key = "caption_states" if self.fuses(training) else "caption_logits"
        caption = super().compute_loss(x, y, y_pred[key], sample_weight, training=training)
        clip = dual_contrastive_loss(y_pred["web_logits"], y_pred["sentence_logits"])
        self.clip_loss_tracker.update_state(clip)
        self.caption_loss_tracker.update_state(caption)
        return self.clip_loss_weight * clip + caption

    def encode_images(self, images, batch_size=32):
        """Images -> L2-normalised embeddings, float32 NumPy (B, E).

        Raw images go through the preprocessor's image converter; without a
        preprocessor they must be uint8 (B, H, W, 3) already.
        """
        if self.preprocessor is not None:
            images = self.preprocessor.preprocess_images(images)
        check_uint8_images(images, "OpenVisionCLIPS")
        embeddings = []
        for start in range(0, len(images), batch_size):
            batch = self.image_normalization(images[start : start + batch_size])
            embedding = self.backbone(batch)["projected_output"]
            embeddings.append(ops.convert_to_numpy(l2_normalize(embedding)))
        return np.concatenate(embeddings)

    def encode_texts(self, texts, batch_size=32):
        """Strings -> L2-normalised embeddings, float32 NumPy (B, E)."""
        if self.preprocessor is None:
            raise ValueError("encode_texts() needs a preprocessor to tokenize texts.")
        token_ids = self.preprocessor.tokenize_texts(list(texts))
        embeddings = []
        for start in range(0, len(token_ids), batch_size):
            output = self.text_encoder(token_ids[start : start + batch_size])
            embeddings.append(
                ops.convert_to_numpy(l2_normalize(output["projected_output"]))
            )
        return np.concatenate(embeddings)

    def similarity(self, images, texts):
        """Cosine similarity (num_images, num_texts), float32 NumPy: rank texts
        per image (retrieval) or take the argmax over class prompts
        (zero-shot classification)."""
        return self.encode_images(images) @ self.encode_texts(texts).T

    get_layout_map = layouts.layout_map_method(layouts.CLIPS)

    def get_config(self):
        config = super().get_config()
        config.update(
            text_encoder=keras.layers.serialize(self.text_encoder),
            decoder=keras.layers.serialize(self.decoder),
            clip_loss_weight=self.clip_loss_weight,
            caption_loss_weight=self.caption_loss_weight,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for part in ("text_encoder", "decoder"):
            config[part] = keras.layers.deserialize(follow_backbone_dtype(config, config[part]))
        return super().from_config(config)


def check_parts(backbone, text_encoder, decoder, preprocessor):
    """Errors that name the mismatched sizes, before any tensor flows."""
    if backbone.projection_dim is None:
        raise ValueError(
            "OpenVisionCLIPS needs a backbone with the OpenVision v1 head: "
            "build the OpenVision2Backbone with `projection_dim`."
        )
    if text_encoder.projection_dim != backbone.projection_dim:
        raise ValueError(
            f"The text encoder embeds into {text_encoder.projection_dim} "
            f"dimensions but the image head into {backbone.projection_dim}; "
            "the contrastive loss needs them equal."
        )
    if preprocessor is None:
        return
    if preprocessor.caption_length != decoder.num_queries:
        raise ValueError(
            f"The preprocessor's caption_length ({preprocessor.caption_length}) "
            f"must equal the decoder's num_queries ({decoder.num_queries}): "
            "one query per caption position."
        )
    if preprocessor.sequence_length > text_encoder.max_sequence_length:
        raise ValueError(
            f"The preprocessor packs texts to {preprocessor.sequence_length} "
            "ids, more than the text encoder's max_sequence_length "
            f"({text_encoder.max_sequence_length})."
        )
