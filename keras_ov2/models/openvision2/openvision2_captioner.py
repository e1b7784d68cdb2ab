"""OpenVision 2 pretraining task: encoder + token masking + caption decoder."""

import keras
import keras_hub
import numpy as np
from keras import ops
from keras_hub.src.utils.tensor_utils import any_equal

from keras_ov2.layers import ImageNormalization
from keras_ov2.layers import ParallelPredictionMasking
from keras_ov2.layers import VisualTokenMasking
from keras_ov2.layers.image_normalization import check_uint8_images
from keras_ov2.models.presets import PresetLoading
from keras_ov2.models.common import layouts
from keras_ov2.models.common.mixed_policy import follow_backbone_dtype
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.common.recipe_optimizer import RecipeCompile

BERT_MASK_ID = 103


def score_pairs(num_images, num_texts, all_pairs):
    """(image index, text index) of every score `score` returns, in order."""
    if all_pairs:
        return np.repeat(np.arange(num_images), num_texts), np.tile(
            np.arange(num_texts), num_images
        )
    if num_images == 1:
        return np.zeros(num_texts, "int64"), np.arange(num_texts)
    if num_images == num_texts:
        return np.arange(num_images), np.arange(num_texts)
    raise ValueError(
        f"score() pairs images[i] with texts[i], or one image with every "
        f"text; received {num_images} images and {num_texts} texts. Pass "
        "all_pairs=True to score every image against every text."
    )


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2Captioner(PresetLoading, RecipeCompile, keras_hub.models.CausalLM):
    """Pretrains an `OpenVision2Backbone` by captioning alone.

    uint8 images -> ImageNet normalisation (on the device) -> encoder patch
    tokens -> `VisualTokenMasking` (training only) -> `OpenVision2TextDecoder`
    -> logits for every caption position. Inputs are the preprocessor's
    `{"images": uint8 (B, H, W, 3), "token_ids": int32 (B, T)}`.

    Args:
        backbone: the `OpenVision2Backbone` being pretrained.
        decoder: an `OpenVision2TextDecoder`.
        preprocessor: an `OpenVision2CaptionerPreprocessor` or None.
        keep_ratio: fraction of patch tokens the decoder sees in training
            (0.35, the authors' setting).
        parallel_fraction: fraction of rows trained by CapPa-style parallel
            prediction (all-`[MASK]` inputs, no causal mask); 0 (off) by
            default.
        seed: seeds the token masking and the parallel-prediction draws.

    Example:
    ```python
    import grain
    import numpy as np
    import keras_ov2

    images = np.random.randint(0, 256, size=(4, 84, 84, 3), dtype="uint8")
    captions = ["a red circle", "a blue square", "a green cross", "a red star"]

    # The demo-sized captioner, randomly initialised (a preset is a config
    # to pretrain from).
    captioner = keras_ov2.OpenVision2Captioner.from_preset(
        "openvision2_captioner_tiny_patch14_84", load_weights=False
    )

    # Pretrain on (uint8 images, captions) batches: the attached
    # preprocessor resizes, tokenizes and packs them.
    train = grain.MapDataset.source(list(zip(images, captions)))
    train = train.shuffle(seed=0).repeat().batch(2)
    captioner.compile(learning_rate=1e-3, total_steps=10)
    captioner.fit(train, steps_per_epoch=10, epochs=1)

    captioner.generate(images, max_length=16)  # one caption per image
    captioner.score(images, captions)  # (4,) log-likelihoods
    captioner.backbone  # the pretrained OpenVision2Backbone

    # The same task from its parts, with a custom config.
    captioner = keras_ov2.OpenVision2Captioner(
        backbone=keras_ov2.OpenVision2Backbone(
            patch_size=14,
            hidden_dim=64,
            num_layers=2,
            num_heads=2,
            intermediate_dim=256,
        ),
        decoder=keras_ov2.OpenVision2TextDecoder(
            vocabulary_size=32000,
            hidden_dim=64,
            num_layers=2,
            num_heads=2,
            intermediate_dim=256,
        ),
        preprocessor=keras_ov2.OpenVision2CaptionerPreprocessor(
            keras_ov2.OpenVision2Tokenizer(),
            keras_ov2.OpenVision2ImageConverter(image_size=(84, 84)),
            sequence_length=32,
        ),
        keep_ratio=0.35,
        seed=0,
    )
    ```
    """

    backbone_cls = OpenVision2Backbone
    preprocessor_cls = OpenVision2CaptionerPreprocessor

    def __init__(
        self,
        backbone,
        decoder,
        preprocessor=None,
        keep_ratio=0.35,
        parallel_fraction=0.0,
        seed=None,
        **kwargs,
    ):
        # === Layers ===
        self.backbone = backbone
        self.decoder = decoder
        self.preprocessor = preprocessor
        # Pixels reach the patch convolution in its weights' dtype (float32
        # under mixed precision), as the authors'.
        self.image_normalization = ImageNormalization(
            dtype=backbone.variable_dtype, name="image_normalization"
        )
        self.token_masking = VisualTokenMasking(
            keep_ratio, seed=seed, name="visual_token_masking"
        )
        self.parallel_masking = None
        if parallel_fraction:
            self.parallel_masking = ParallelPredictionMasking(
                parallel_fraction,
                BERT_MASK_ID,
                seed=None if seed is None else seed + 1,
                name="parallel_prediction_masking",
            )

        # === Functional Model ===
        images = keras.Input((None, None, 3), dtype="uint8", name="images")
        token_ids = keras.Input((None,), dtype="int32", name="token_ids")
        visual = self.encode_images(images)
        visual = self.token_masking(visual)
        parallel = None
        decoder_ids = token_ids
        if self.parallel_masking is not None:
            decoder_ids, parallel = self.parallel_masking(token_ids)
        logits = self.decoder(visual, decoder_ids, parallel=parallel)
        super().__init__(
            inputs={"images": images, "token_ids": token_ids},
            outputs=logits,
            **kwargs,
        )
        # `call` checks images itself, with errors that say what was expected.
        self.input_spec = None

        # === Config ===
        self.keep_ratio = keep_ratio
        self.parallel_fraction = parallel_fraction
        self.seed = seed

    def encode_images(self, images):
        """uint8 images -> all patch tokens of the encoder (no masking)."""
        return self.backbone(self.image_normalization(images))["sequence_output"]

    def call(self, inputs, training=None, mask=None):
        check_uint8_images(inputs["images"], "OpenVision2Captioner")
        return super().call(inputs, training=training, mask=mask)

    def compile(self, optimizer="auto", loss="auto", *, sampler="greedy",
                weighted_metrics=None, **recipe):
        """The authors' recipe (see `RecipeCompile.compile`: AdamW, warmup +
        cosine, the caption loss with weight 2). Calling it again restarts
        the optimizer and the schedule, which is how a new resolution stage
        starts (see `start_stage`). `sampler`: how `generate` picks tokens,
        a `keras_hub.samplers` name or instance (greedy by default).
        """
        super().compile(optimizer, loss, sampler=sampler,
                        weighted_metrics=weighted_metrics, **recipe)

    def start_stage(self, image_size, total_steps, **compile_kwargs):
        """Starts a progressive-resolution stage (84 px, then 224 px, ...).

        The weights carry over (the sin-cos positions are recomputed for the
        new grid); the preprocessor resizes to `image_size` from now on; the
        optimizer state and the learning-rate schedule restart, as in the
        authors' fine-tuning stages. Then call `fit` on data of that size.
        """
        if self.preprocessor is not None and self.preprocessor.image_converter:
            self.preprocessor.image_converter.image_size = (image_size, image_size)
        self.compile(total_steps=total_steps, **compile_kwargs)

    def generate_step(self, inputs, stop_token_ids=None):
        """One compiled generation pass over a batch, with a KV cache.

        The whole [visual; prompt] prefix fills the cache once; each new
        token then runs one position through the decoder. Prompts may differ
        in length (`generate({"images": ..., "prompts": [...]})`): decoding
        starts after the shortest, and the sampler keeps each row's own
        prompt tokens (`padding_mask`) where a longer prompt is still going.
        """
        token_ids = inputs["token_ids"]
        padding_mask = inputs["padding_mask"]
        images = inputs["images"]
        if len(ops.shape(images)) == 3:
            images = ops.expand_dims(images, axis=0)
        visual = self.encode_images(images)
        num_visual = visual.shape[1]
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        cache = self.decoder.empty_cache(
            batch, num_visual + length, self.decoder.compute_dtype
        )
        _, cache = self.decoder.call_with_cache(
            token_ids, cache, 0, visual_tokens=visual
        )
        index = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1))
        # Rows past the tokenizer's vocabulary (32000 > 30522) are never
        # targets; keep the sampler off them.
        vocabulary = self.decoder.vocabulary_size
        if self.preprocessor is not None:
            vocabulary = self.preprocessor.tokenizer.vocabulary_size()

        def next(prompt, cache, index):
            token = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, cache = self.decoder.call_with_cache(
                token, cache, num_visual + index - 1
            )
            return ops.squeeze(logits, axis=1)[:, :vocabulary], None, cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            cache=cache,
            index=index,
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            model=self,
        )
        if stop_token_ids is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        else:
            ends = ops.cast(
                any_equal(token_ids, stop_token_ids, ops.logical_not(padding_mask)),
                "int32",
            )
            after_end = ops.cumsum(ends, axis=-1) - ends
            padding_mask = ops.logical_not(ops.cast(after_end, "bool"))
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def score(
        self, images, texts, batch_size=32, all_pairs=False, length_normalize=False
    ):
        """Log-likelihood of texts given images, as float32 NumPy.

        Zero-shot classification asks which text an image makes most likely,
        so three layouts are accepted:

        - B images and B texts: `images[i]` with `texts[i]`, (B,) scores.
        - one image, (H, W, 3) or (1, H, W, 3), and N texts: (N,) scores.
        - `all_pairs=True`: every image against every text, a (B, N) matrix
          laid out as open_clip's `logits_per_image` (row = image).

        The sum runs over the caption's word-pieces and its `[eos]`, as in
        the loss; `length_normalize=True` divides it by their count (the
        mean per token), so that longer texts are not penalised for their
        length. Each image is encoded once per batch of `batch_size` texts.
        """
        if self.preprocessor is None:
            raise ValueError("score() needs a preprocessor to tokenize texts.")
        images = ops.convert_to_numpy(images)
        if images.ndim == 3:
            images = images[None]
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows, columns = score_pairs(len(images), len(texts), all_pairs)
        scores = np.concatenate([
            self._score_batch(
                images[rows[start : start + batch_size]],
                [texts[j] for j in columns[start : start + batch_size]],
                rows[start : start + batch_size],
                length_normalize,
            )
            for start in range(0, len(rows), batch_size)
        ])
        return scores.reshape(len(images), len(texts)) if all_pairs else scores

    def _score_batch(self, images, texts, image_ids, length_normalize):
        """Scores aligned image/text lists, encoding each distinct image of
        `image_ids` (which image each row holds) once."""
        x, targets, weights = self.preprocessor(images, texts)
        _, first, which = np.unique(image_ids, return_index=True, return_inverse=True)
        visual = self.encode_images(ops.take(x["images"], first, axis=0))
        visual = ops.take(visual, which.reshape(-1), axis=0)
        logits = self.decoder(visual, x["token_ids"])
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1)
        scores = ops.sum(picked[..., 0] * weights, axis=-1)
        if length_normalize:
            scores = scores / ops.sum(weights, axis=-1)
        return ops.convert_to_numpy(scores)

    @staticmethod
    def get_layout_map(device_mesh, config, mode="fsdp"):
        """A `keras.distribution.LayoutMap` of the encoder and the decoder
        (see `OpenVision2Backbone.get_layout_map`); `config` is the
        captioner's `get_config()`, or the "config" of a preset's task.json.
        """
        variables = layouts.captioner_variables(config)
        return layouts.make_layout_map(device_mesh, mode, variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            decoder=keras.layers.serialize(self.decoder),
            keep_ratio=self.keep_ratio,
            parallel_fraction=self.parallel_fraction,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decoder"] = keras.layers.deserialize(
            follow_backbone_dtype(config, config["decoder"])
        )
        return super().from_config(config)
