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
from keras_ov2.models.common.fused_caption_head import FusedCaptionHead
from keras_ov2.models.common.mixed_policy import follow_backbone_dtype
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.common.recipe_optimizer import RecipeCompile
from keras_ov2.variants import KEEP_RATIO

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
class OpenVision2Captioner(
    PresetLoading, FusedCaptionHead, RecipeCompile, keras_hub.models.CausalLM
):
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
    # As training sees the tokens: random subsets of int(N * keep_ratio).
    captioner.generate(images, max_length=16, view="masked", draws=4, seed=0)
    captioner.score(images, captions, view="masked", draws=4, seed=0)
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
        keep_ratio=KEEP_RATIO,
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
        visual, decoder_ids, parallel = self._decoder_inputs(images, token_ids)
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

    def _decoder_inputs(self, images, token_ids, training=None):
        """The decoder's visual tokens (masked in training), token ids and
        parallel-prediction flags (None without parallel prediction)."""
        visual = self.token_masking(self.encode_images(images), training=training)
        if self.parallel_masking is None:
            return visual, token_ids, None
        return visual, *self.parallel_masking(token_ids, training=training)

    def draw_views(self, num_images, num_tokens, draws=1, keep_ratio=None, seed=None):
        """Masked inference views: int32 NumPy (num_images, draws, K), the
        indices of the patch tokens each draw keeps, by the training rule
        (`VisualTokenMasking.draw`, K = int(N * keep_ratio), the model's
        ratio unless given). `seed` (int, None or a `SeedGenerator`) is
        the views' own, so diagnostics never move the training draws.
        """
        if not isinstance(seed, keras.random.SeedGenerator):
            seed = keras.random.SeedGenerator(seed)
        indices = self.token_masking.draw(
            num_images * draws, num_tokens, seed=seed, keep_ratio=keep_ratio
        )
        return ops.convert_to_numpy(indices).reshape(num_images, draws, -1)

    def _views(self, view, keep_ratio, draws, seed):
        """`view` -> None (every token, raster order) or a function
        (num_images, num_tokens) -> kept-token indices (num_images, draws, K)."""
        if isinstance(view, str) and view not in ("all", "masked"):
            raise ValueError(
                f'view must be "all", "masked" or kept-token indices of shape '
                f"(num_images, draws, K); received {view!r}."
            )
        if isinstance(view, str) and view == "masked":
            if int(draws) < 1:
                raise ValueError(f"draws must be at least 1; received {draws}.")
            generator = keras.random.SeedGenerator(seed)
            return lambda num_images, num_tokens: self.draw_views(
                num_images, num_tokens, int(draws), keep_ratio, generator
            )
        if keep_ratio is not None or draws != 1 or seed is not None:
            raise ValueError(
                'keep_ratio, draws and seed draw a view="masked"; received '
                f"them with view={view!r}."
            )
        if isinstance(view, str):
            return None
        indices = np.asarray(ops.convert_to_numpy(view))
        if indices.ndim != 3 or indices.dtype.kind not in "iu":
            raise ValueError(
                "An explicit view is integer kept-token indices of shape "
                f"(num_images, draws, K); received {indices.dtype} {indices.shape}."
            )

        def explicit(num_images, num_tokens):
            if len(indices) != num_images or indices.min() < 0 or indices.max() >= num_tokens:
                raise ValueError(
                    f"The view's indices must cover {num_images} images with "
                    f"indices in [0, {num_tokens}); received shape "
                    f"{indices.shape}, values in [{indices.min()}, {indices.max()}]."
                )
            return indices.astype("int32")

        return explicit

    def num_patch_tokens(self, images):
        """N for images of this (converted) size: VALID patches of the grid."""
        height, width = ops.shape(images)[-3], ops.shape(images)[-2]
        patch = self.backbone.patch_size
        return (height // patch) * (width // patch)

    def _log_likelihood(self, visual, token_ids, targets, weights):
        """Weighted sum of log p(targets) over a caption, float32, with the
        full softmax: what `score` reports and `generate` ranks draws by."""
        logits = self.decoder(visual, token_ids)
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        picked = ops.take_along_axis(log_probs, ops.expand_dims(targets, -1), axis=-1)
        return ops.sum(picked[..., 0] * ops.cast(weights, "float32"), axis=-1)

    def _apply_views(self, visual, indices, *per_row):
        """visual (B, N, D) and indices (B, draws, K) -> the kept tokens of
        every draw (B * draws, K, D), rows image-major; `per_row` tensors
        are repeated to match."""
        batch, draws, kept = indices.shape
        flat = ops.reshape(ops.convert_to_tensor(indices), (-1, draws * kept))
        visual = self.token_masking.keep(visual, flat)
        visual = ops.reshape(visual, (-1, kept, visual.shape[-1]))
        return (visual, *(ops.repeat(x, draws, axis=0) for x in per_row))

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        *,
        view="all",
        keep_ratio=None,
        draws=1,
        seed=None,
    ):
        """Captions images; see `keras_hub.models.CausalLM.generate`.

        The decoder trained on random subsets of the visual tokens, so by
        default (`view="all"`: every token, raster order) it sees inputs
        it never saw in training. `view="masked"` shows each image as
        training did: `draws` independent subsets of K = int(N *
        keep_ratio) tokens (the model's `keep_ratio` unless given), in
        random order, drawn from `seed`. Each draw decodes a caption (with
        the KV cache, in one compiled call) and the caption with the
        highest log-likelihood (summed, as `score`) under the view that
        produced it is kept. `view` may also be the indices themselves,
        (B, draws, K) as `draw_views` gives, for one batch of B images.
        """
        views = self._views(view, keep_ratio, draws, seed)
        if views is None:
            return super().generate(inputs, max_length, stop_token_ids, strip_prompt)
        compiled = self.make_generate_function()

        def generate_with_views(x, stop_token_ids=None):
            images = x["images"]
            num_images = ops.shape(images)[0] if len(ops.shape(images)) == 4 else 1
            indices = views(num_images, self.num_patch_tokens(images))
            x = {**x, "visual_indices": ops.convert_to_tensor(indices, "int32")}
            return compiled(x, stop_token_ids)

        # The views travel as an input of the compiled function, never as
        # a constant baked into it.
        self.generate_function = generate_with_views
        try:
            return super().generate(inputs, max_length, stop_token_ids, strip_prompt)
        finally:
            self.generate_function = compiled

    def call(self, inputs, training=None, mask=None):
        """Logits (B, T, vocabulary); inside a fused `train_step` (see
        `FusedCaptionHead`), the decoder's `text_states` (B, T, hidden_dim)."""
        check_uint8_images(inputs["images"], "OpenVision2Captioner")
        if self.fuses(training):
            token_ids = ops.cast(inputs["token_ids"], "int32")
            decoder_inputs = self._decoder_inputs(inputs["images"], token_ids, training)
            return self.decoder.text_states(*decoder_inputs)
        return super().call(inputs, training=training, mask=mask)

    def compile(self, optimizer="auto", loss="auto", *, sampler="greedy",
                weighted_metrics=None, **recipe):
        """The authors' recipe (see `RecipeCompile.compile`: AdamW, warmup +
        cosine, the caption loss with weight 2). Calling it again restarts
        the optimizer and the schedule, which is how a new resolution stage
        starts (see `start_stage`). `sampler`: how `generate` picks tokens,
        a `keras_hub.samplers` name or instance (greedy by default).

        Training fuses the head into the loss when the loss is exactly a
        `CaptionLoss` with a `chunk_size` and nothing else reads the logits
        (no metrics, no `loss_weights`); evaluation and inference always
        see logits. `CaptionLoss(chunk_size=None)` keeps the plain path.
        See `FusedCaptionHead`.
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
        With `inputs["visual_indices"]` (B, draws, K), see `generate`, every
        draw is a row of the batch and each image keeps its best draw.
        """
        token_ids = inputs["token_ids"]
        padding_mask = inputs["padding_mask"]
        images = inputs["images"]
        if len(ops.shape(images)) == 3:
            images = ops.expand_dims(images, axis=0)
        visual = self.encode_images(images)
        indices = inputs.get("visual_indices")
        if indices is not None:
            visual, token_ids, padding_mask = self._apply_views(
                visual, indices, token_ids, padding_mask
            )
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
            ended = ops.zeros_like(token_ids[:, 0], dtype="bool")
        else:
            ends = ops.cast(
                any_equal(token_ids, stop_token_ids, ops.logical_not(padding_mask)),
                "int32",
            )
            after_end = ops.cumsum(ends, axis=-1) - ends
            padding_mask = ops.logical_not(ops.cast(after_end, "bool"))
            ended = ops.any(ops.cast(ends, "bool"), axis=-1)
        if indices is not None and indices.shape[1] > 1:
            token_ids, padding_mask = self._best_draws(
                visual, token_ids, padding_mask, ended, indices.shape[1]
            )
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def _best_draws(self, visual, token_ids, padding_mask, ended, draws):
        """Each image's draw whose caption is likeliest under that draw's
        view, counted as `score` counts the text it becomes: the tokens
        after `[bos]` (prompt included) up to the first generated stop, and
        an `[eos]` closing a caption cut by `max_length`."""
        end_id = 0
        unfinished = ops.zeros_like(ended, dtype="float32")
        if self.preprocessor is not None:
            end_id = self.preprocessor.tokenizer.end_token_id
            unfinished = 1.0 - ops.cast(ended, "float32")
        closing = ops.full_like(token_ids[:, :1], end_id)
        targets = ops.concatenate([token_ids[:, 1:], closing], axis=1)
        weights = ops.concatenate(
            [ops.cast(padding_mask[:, 1:], "float32"), unfinished[:, None]], axis=1
        )
        scores = self._log_likelihood(visual, token_ids, targets, weights)
        best = ops.argmax(ops.reshape(scores, (-1, draws)), axis=-1)
        rows = ops.arange(ops.shape(best)[0], dtype="int32") * draws
        rows = rows + ops.cast(best, "int32")
        mask = ops.take(ops.cast(padding_mask, "int32"), rows, axis=0)
        return ops.take(token_ids, rows, axis=0), ops.cast(mask, "bool")

    def score(
        self,
        images,
        texts,
        batch_size=32,
        all_pairs=False,
        length_normalize=False,
        *,
        view="all",
        keep_ratio=None,
        draws=1,
        seed=None,
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

        `view`, `keep_ratio`, `draws` and `seed` show the images as in
        training, as `generate` does; every text of an image is scored on
        the same draws (indices (num_images, draws, K) for an explicit
        view). The draws combine by log-mean-exp: the log-likelihood under
        the mixture of views, a proper distribution over texts, where a max
        would grow with `draws`; with one draw both are that draw's score.
        """
        if self.preprocessor is None:
            raise ValueError("score() needs a preprocessor to tokenize texts.")
        views = self._views(view, keep_ratio, draws, seed)
        images = ops.convert_to_numpy(images)
        if images.ndim == 3:
            images = images[None]
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows, columns = score_pairs(len(images), len(texts), all_pairs)
        scores, indices = [], None
        for start in range(0, len(rows), batch_size):
            image_ids = rows[start : start + batch_size]
            x, targets, weights = self.preprocessor(
                images[image_ids], [texts[j] for j in columns[start : start + batch_size]]
            )
            if views is not None and indices is None:
                indices = views(len(images), self.num_patch_tokens(x["images"]))
            scores.append(self._score_batch(
                x, targets, weights, image_ids, length_normalize,
                None if indices is None else indices[image_ids],
            ))
        scores = np.concatenate(scores)
        return scores.reshape(len(images), len(texts)) if all_pairs else scores

    def _score_batch(self, x, targets, weights, image_ids, length_normalize, indices):
        """Scores a preprocessed batch of aligned pairs, encoding each
        distinct image of `image_ids` (which image each row holds) once;
        `indices` (rows, draws, K): the rows' views, or None for all tokens."""
        _, first, which = np.unique(image_ids, return_index=True, return_inverse=True)
        visual = self.encode_images(ops.take(x["images"], first, axis=0))
        visual = ops.take(visual, which.reshape(-1), axis=0)
        token_ids = x["token_ids"]
        if indices is None:
            scores = self._log_likelihood(visual, token_ids, targets, weights)
        else:
            draws = indices.shape[1]
            visual, token_ids, targets, draw_weights = self._apply_views(
                visual, indices, token_ids, targets, weights
            )
            scores = self._log_likelihood(visual, token_ids, targets, draw_weights)
            scores = ops.reshape(scores, (-1, draws))
            scores = ops.logsumexp(scores, axis=-1) - np.log(draws).astype("float32")
        if length_normalize:
            scores = scores / ops.sum(ops.cast(weights, "float32"), axis=-1)
        return ops.convert_to_numpy(scores)

    get_layout_map = layouts.layout_map_method(layouts.CAPTIONER)

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
