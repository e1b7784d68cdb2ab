import json

import grain
import keras
import numpy as np
import pytest
from absl.testing import parameterized
from keras import ops
from keras_hub.src.tests.test_case import TestCase

import keras_ov2
from keras_ov2.data import SyntheticScenes
from keras_ov2.layers import VisualTokenMasking
from keras_ov2.layers.patch_embedding import PatchEmbedding
from keras_ov2.models import CaptionLoss
from keras_ov2.models.common.text_transformer import decoder_attention_mask

SEQUENCE = 16
SIZE = 64
RAGGED_PROMPTS = ["", "a red", "two blue circles and"]
NUM_TOKENS = (SIZE // 16) ** 2  # patch tokens of a tiny captioner's image
WORDS = "a red blue green circle square star cross two and left of small large".split()


def tiny_captioner(keep_ratio=0.35, attention_mask="causal", dtype=None, **kwargs):
    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor(
        keras_ov2.OpenVision2Tokenizer(),
        keras_ov2.OpenVision2ImageConverter(image_size=(SIZE, SIZE)),
        sequence_length=SEQUENCE,
    )
    backbone = keras_ov2.OpenVision2Backbone(
        patch_size=16, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
        dtype=dtype,
    )
    decoder = keras_ov2.OpenVision2TextDecoder(
        32000, 32, 2, 2, 64, attention_mask=attention_mask, dtype=dtype
    )
    return keras_ov2.OpenVision2Captioner(
        backbone, decoder, preprocessor, keep_ratio=keep_ratio, seed=1, **kwargs
    )


def scenes(count=4):
    source = SyntheticScenes(count, image_size=SIZE, seed=0)
    records = [source[i] for i in range(count)]
    images = np.stack([r["image"] for r in records])
    return images, [r["short_caption"] for r in records]


def model_inputs(captioner, images, captions):
    return captioner.preprocessor(images, captions)


def greedy_without_cache(captioner, inputs, views=None):
    """Greedy decoding that runs the whole sequence through the model for
    every new token: the reference a KV cache must reproduce. Prompt
    positions (`padding_mask`) are kept, as the sampler keeps them. With
    `views` (B, K), the decoder sees only those visual tokens, in that
    order (gathered in NumPy)."""
    token_ids = ops.convert_to_numpy(inputs["token_ids"]).copy()
    prompt = ops.convert_to_numpy(inputs["padding_mask"])
    vocabulary = captioner.preprocessor.tokenizer.vocabulary_size()
    if views is not None:
        encoded = ops.convert_to_numpy(captioner.encode_images(inputs["images"]))
        visual = np.take_along_axis(encoded, views[..., None], axis=1)
    for position in range(1, token_ids.shape[1]):
        current = ops.convert_to_tensor(token_ids)
        if views is None:
            logits = captioner({"images": inputs["images"], "token_ids": current})
        else:
            logits = captioner.decoder(visual, current)
        best = ops.convert_to_numpy(logits)[:, position - 1, :vocabulary].argmax(-1)
        token_ids[:, position] = np.where(prompt[:, position], token_ids[:, position], best)
    return token_ids


def until_first_new_stop(token_ids, prompt, stop_id):
    """Each row's positions up to its first generated `stop_id`, included."""
    ends = (token_ids == stop_id) & ~prompt
    return np.cumsum(ends, axis=1) - ends == 0


def swap_tokens_in_head(captioner, a, b):
    """Makes the model say token `a` wherever it would have said `b`."""
    head = captioner.decoder.head.kernel
    kernel = ops.convert_to_numpy(head).copy()
    kernel[:, [a, b]] = kernel[:, [b, a]]
    head.assign(kernel)


def dense_and_conv_kernels(model):
    """Paths of every Dense and convolution kernel, found by layer type."""
    kinds = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv2D, PatchEmbedding)
    return {layer.kernel.path for layer in model._flatten_layers() if isinstance(layer, kinds)}


def numpy_log_softmax(logits):
    """In float64 NumPy, so that no backend op checks itself."""
    logits = logits.astype("float64")
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def ragged_generation_case(captioner):
    """Ragged prompts, the model edited so that rows stop at different
    steps, and the cache-free reference: (inputs, expected ids, kept)."""
    images, _ = scenes(3)
    inputs = captioner.preprocessor.generate_preprocess(
        {"images": images, "prompts": RAGGED_PROMPTS}, sequence_length=12
    )
    prompt = ops.convert_to_numpy(inputs["padding_mask"])
    assert prompt.sum(1).tolist() == [1, 3, 5]  # [bos] + the prompt
    # [eos] replaces row 0's 3rd word wherever the model would say it.
    eos = captioner.preprocessor.tokenizer.end_token_id
    swap_tokens_in_head(captioner, eos, greedy_without_cache(captioner, inputs)[0, 3])
    expected = greedy_without_cache(captioner, inputs)
    kept = until_first_new_stop(expected, prompt, eos)
    assert not kept.all() and len(set(kept.sum(1))) > 1, expected
    return inputs, expected, kept


def view_sensitive_captioner(attention_mask="causal"):
    """A tiny captioner whose captions hinge on which visual tokens it sees
    and read back through the tokenizer unchanged: its head (from NumPy)
    says only whole words and [eos], and its token embeddings are shrunk
    so that the visual tokens outweigh them."""
    keras.utils.set_random_seed(1)
    captioner = tiny_captioner(attention_mask=attention_mask)
    tokenizer = captioner.preprocessor.tokenizer
    ids = [tokenizer.token_to_id(word) for word in WORDS] + [tokenizer.end_token_id]
    head = np.zeros(captioner.decoder.head.kernel.shape, "float32")
    head[:, ids] = np.random.default_rng(0).normal(size=(head.shape[0], len(ids)))
    captioner.decoder.head.kernel.assign(head)
    embeddings = captioner.decoder.token_embedding.embeddings
    embeddings.assign(ops.convert_to_numpy(embeddings.value) * 0.01)
    return captioner


def noise_images(count):
    """Patches that differ, so that different subsets of them do too."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, SIZE, SIZE, 3), dtype="uint8")


def numpy_view_scores(captioner, images, captions, views):
    """(B, draws) log-likelihoods of captions[i] given images[i] seen
    through views[i, j]: the decoder on NumPy-gathered tokens, NumPy sums."""
    x, targets, weights = captioner.preprocessor(images, captions)
    encoded = ops.convert_to_numpy(captioner.encode_images(x["images"]))
    targets, weights = ops.convert_to_numpy(targets), ops.convert_to_numpy(weights)
    scores = np.zeros(views.shape[:2])
    for draw in range(views.shape[1]):
        visual = np.take_along_axis(encoded, views[:, draw, :, None], axis=1)
        logits = ops.convert_to_numpy(captioner.decoder(visual, x["token_ids"]))
        log_probs = numpy_log_softmax(logits)
        picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
        scores[:, draw] = (picked * weights).sum(1)
    return scores


def ragged_inputs(captioner, images):
    return captioner.preprocessor.generate_preprocess(
        {"images": images, "prompts": RAGGED_PROMPTS}, sequence_length=12
    )


class CaptionerTest(TestCase):
    def test_overfits_a_handful_of_pairs_and_captions_them(self):
        # keep_ratio 1.0: generation sees every token, so training does too.
        keras.utils.set_random_seed(0)
        captioner = tiny_captioner(keep_ratio=1.0)
        images, captions = scenes()
        steps = 150
        captioner.compile(learning_rate=3e-3, total_steps=steps, warmup_steps=10)
        data = grain.MapDataset.source(list(zip(images, captions))).batch(4)
        history = captioner.fit(data.repeat(steps), epochs=steps, steps_per_epoch=1, verbose=0)
        losses = history.history["loss"]
        assert losses[0] / np.mean(losses[-5:]) >= 10, losses[::10]
        generated = captioner.generate(images, max_length=SEQUENCE)
        expected = [captioner.preprocessor.generate_postprocess(
            captioner.preprocessor(images[i], captions[i])[0]["token_ids"]
        ) for i in range(4)]
        assert generated == expected, (generated, expected)
        right = captioner.score(images, captions)
        wrong = captioner.score(images, captions[1:] + captions[:1])
        assert np.all(right > wrong)

    @parameterized.product(
        attention_mask=["causal", "prefix"], dtype=["float32", "mixed_bfloat16"]
    )
    def test_kv_cache_generation_equals_full_recomputation(self, attention_mask, dtype):
        keras.utils.set_random_seed(1)
        captioner = tiny_captioner(attention_mask=attention_mask, dtype=dtype)
        inputs, expected, kept = ragged_generation_case(captioner)
        eos = captioner.preprocessor.tokenizer.end_token_id
        generated = captioner.generate_step(inputs, stop_token_ids=[eos])
        np.testing.assert_array_equal(ops.convert_to_numpy(generated["padding_mask"]), kept)
        cached = ops.convert_to_numpy(generated["token_ids"])
        np.testing.assert_array_equal(np.where(kept, cached, -1), np.where(kept, expected, -1))

    def test_generate_continues_ragged_prompts_until_eos(self):
        keras.utils.set_random_seed(1)
        captioner = tiny_captioner()
        _, expected, _ = ragged_generation_case(captioner)
        images, _ = scenes(3)
        captions = captioner.generate(
            {"images": images, "prompts": RAGGED_PROMPTS}, max_length=12
        )
        assert captions == captioner.preprocessor.generate_postprocess(expected)
        assert captions[1].startswith("a red")

    @parameterized.parameters("causal", "prefix")
    def test_cached_decoder_logits_equal_a_full_pass(self, attention_mask):
        rng = np.random.default_rng(0)
        visual = rng.normal(size=(2, 5, 8)).astype("float32")
        token_ids = rng.integers(3, 30000, size=(2, 7)).astype("int32")
        decoder = keras_ov2.OpenVision2TextDecoder(
            32000, 16, 2, 2, 32, attention_mask=attention_mask
        )
        full = ops.convert_to_numpy(decoder(visual, token_ids))
        # Prefill [visual; 3 tokens], then one token per call.
        cache = decoder.empty_cache(2, 5 + 7, "float32")
        logits, cache = decoder.call_with_cache(token_ids[:, :3], cache, 0, visual)
        steps = [ops.convert_to_numpy(logits)]
        for i in range(3, 7):
            logits, cache = decoder.call_with_cache(token_ids[:, i : i + 1], cache, 5 + i)
            steps.append(ops.convert_to_numpy(logits))
        np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)

    def test_score_is_the_log_likelihood_of_one_forward_pass(self):
        captioner = tiny_captioner()
        images, captions = scenes(3)
        x, _, _ = model_inputs(captioner, images, captions)
        log_probs = numpy_log_softmax(ops.convert_to_numpy(captioner(x)))
        # Position t predicts token t + 1: the word-pieces and [eos], not pads.
        token_ids = ops.convert_to_numpy(x["token_ids"])
        targets = token_ids[:, 1:]
        picked = np.take_along_axis(log_probs[:, :-1], targets[..., None], -1)[..., 0]
        counted = targets != captioner.preprocessor.tokenizer.pad_token_id
        assert len(set(counted.sum(1))) > 1  # lengths differ: normalising matters
        expected = (picked * counted).sum(1)
        np.testing.assert_allclose(captioner.score(images, captions), expected, rtol=1e-4)
        np.testing.assert_allclose(
            captioner.score(images, captions, length_normalize=True),
            expected / counted.sum(1),
            rtol=1e-4,
        )

    def test_score_one_image_against_many_texts_and_every_pair(self):
        captioner = tiny_captioner()
        images, captions = scenes(3)
        matrix = captioner.score(images, captions, batch_size=2, all_pairs=True)
        assert matrix.shape == (3, 3)
        assert not np.allclose(matrix[0], matrix[1])  # rows are different images
        np.testing.assert_allclose(np.diag(matrix), captioner.score(images, captions), rtol=1e-5)
        for i in range(3):
            pairs = captioner.score(images[[i] * 3], captions)
            np.testing.assert_allclose(matrix[i], pairs, rtol=1e-5)
            one_image = captioner.score(images[i : i + 1], captions, batch_size=2)
            np.testing.assert_allclose(one_image, pairs, rtol=1e-5)
        np.testing.assert_allclose(captioner.score(images[0], captions), matrix[0], rtol=1e-5)
        with pytest.raises(ValueError, match="all_pairs=True"):
            captioner.score(images[:2], captions)

    def test_default_view_is_every_token_in_raster_order(self):
        captioner = view_sensitive_captioner()
        images, captions = noise_images(3), scenes(3)[1]
        expected = captioner.preprocessor.generate_postprocess(
            greedy_without_cache(captioner, ragged_inputs(captioner, images))
        )
        for options in ({}, {"view": "all"}):
            prompts = {"images": images, "prompts": RAGGED_PROMPTS}
            assert captioner.generate(prompts, max_length=12, **options) == expected
        raster = np.tile(np.arange(NUM_TOKENS), (3, 1, 1))
        reference = numpy_view_scores(captioner, images, captions, raster)[:, 0]
        np.testing.assert_allclose(captioner.score(images, captions), reference, rtol=1e-4)
        np.testing.assert_allclose(
            captioner.score(images, captions, view="all"), reference, rtol=1e-4
        )
        # keep_ratio 1.0 trains on every token in place; so the view does.
        assert captioner.generate(
            images, max_length=12, view="masked", keep_ratio=1.0, draws=2
        ) == captioner.generate(images, max_length=12)
        with pytest.raises(ValueError, match='view="masked"'):
            captioner.generate(images, draws=2)
        with pytest.raises(ValueError, match='view="masked"'):
            captioner.score(images, captions, seed=0)
        with pytest.raises(ValueError, match="view must be"):
            captioner.score(images, captions, view="random")
        with pytest.raises(ValueError, match="indices in"):
            captioner.score(images, captions, view=raster + 1)

    @parameterized.parameters("causal", "prefix")
    def test_masked_generation_decodes_exactly_the_drawn_tokens(self, attention_mask):
        captioner = view_sensitive_captioner(attention_mask)
        images = noise_images(3)
        views = captioner.draw_views(3, NUM_TOKENS, seed=5)
        kept = int(NUM_TOKENS * 0.35)
        assert views.shape == (3, 1, kept)
        # One rule for the subsets: the training layer's, with this seed.
        rule = VisualTokenMasking(0.35).draw(3, NUM_TOKENS, seed=keras.random.SeedGenerator(5))
        np.testing.assert_array_equal(views[:, 0], ops.convert_to_numpy(rule))
        inputs = ragged_inputs(captioner, images)
        expected = greedy_without_cache(captioner, inputs, views[:, 0])
        generated = captioner.generate(
            {"images": images, "prompts": RAGGED_PROMPTS},
            max_length=12,
            view="masked",
            seed=5,
        )
        assert generated == captioner.preprocessor.generate_postprocess(expected)
        # The compiled step with the KV cache, on the same tokens.
        eos = captioner.preprocessor.tokenizer.end_token_id
        step = captioner.generate_step({**inputs, "visual_indices": views}, stop_token_ids=[eos])
        prompt = ops.convert_to_numpy(inputs["padding_mask"])
        stop = until_first_new_stop(expected, prompt, eos)
        np.testing.assert_array_equal(ops.convert_to_numpy(step["padding_mask"]), stop)
        cached = ops.convert_to_numpy(step["token_ids"])
        np.testing.assert_array_equal(np.where(stop, cached, -1), np.where(stop, expected, -1))

    def test_masked_generation_keeps_the_likeliest_draw(self):
        captioner = view_sensitive_captioner()
        images, draws = noise_images(4), 4
        kept = captioner.generate(images, max_length=12, view="masked", draws=draws, seed=3)
        views = captioner.draw_views(4, NUM_TOKENS, draws=draws, seed=3)
        assert captioner.generate(images, max_length=12, view=views) == kept
        per_draw = [
            captioner.generate(images, max_length=12, view=views[:, j : j + 1])
            for j in range(draws)
        ]
        assert any(len({captions[i] for captions in per_draw}) > 1 for i in range(4))
        scores = np.stack([
            captioner.score(images, per_draw[j], view=views[:, j : j + 1])
            for j in range(draws)
        ], axis=1)
        best = scores.argmax(1)
        assert best.any(), scores  # not always the first draw
        assert kept == [per_draw[j][i] for i, j in enumerate(best)], (kept, per_draw, scores)

    def test_masked_score_is_the_log_mean_exp_over_draws(self):
        captioner = view_sensitive_captioner()
        images, captions = noise_images(3), scenes(3)[1]
        views = captioner.draw_views(3, NUM_TOKENS, draws=3, seed=2)
        per_draw = numpy_view_scores(captioner, images, captions, views)
        top = per_draw.max(1)
        expected = top + np.log(np.exp(per_draw - top[:, None]).mean(1))
        masked = captioner.score(images, captions, view="masked", draws=3, seed=2)
        np.testing.assert_allclose(masked, expected, rtol=1e-4)
        explicit = captioner.score(images, captions, view=views)
        np.testing.assert_allclose(explicit, expected, rtol=1e-4)
        # Every text of an image meets that image's draws, however batched.
        matrix = captioner.score(
            images, captions, batch_size=2, all_pairs=True, view="masked", draws=3, seed=2
        )
        np.testing.assert_allclose(np.diag(matrix), expected, rtol=1e-4)
        counts = ops.convert_to_numpy(captioner.preprocessor(images, captions)[2]).sum(1)
        normalized = captioner.score(
            images, captions, length_normalize=True, view="masked", draws=3, seed=2
        )
        np.testing.assert_allclose(normalized, expected / counts, rtol=1e-4)

    def test_masked_views_follow_their_seed(self):
        captioner = view_sensitive_captioner()
        images, captions = noise_images(4), scenes(4)[1]
        training = captioner.token_masking.seed_generator.state
        training_stream = ops.convert_to_numpy(training.value)

        def masked(seed):
            options = {"view": "masked", "draws": 2, "seed": seed}
            return (
                captioner.generate(images, max_length=12, **options),
                captioner.score(images, captions, **options),
            )

        (captions_a, scores_a), (captions_b, scores_b) = masked(0), masked(0)
        captions_c, scores_c = masked(1)
        assert captions_a == captions_b
        np.testing.assert_array_equal(scores_a, scores_b)
        assert captions_a != captions_c
        assert not np.allclose(scores_a, scores_c)
        # Diagnostics draw from their own seed, never the training stream.
        np.testing.assert_array_equal(ops.convert_to_numpy(training.value), training_stream)

    def test_loss_equals_a_numpy_token_weighted_mean(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(3, 6, 11)).astype("float32")
        targets = rng.integers(0, 11, size=(3, 6))
        weights = np.array(
            [[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], "float32"
        )
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
        expected = 2.0 * (nll * weights).sum() / weights.sum()
        per_caption = 2.0 * np.mean((nll * weights).sum(1) / weights.sum(1))
        loss = ops.convert_to_numpy(CaptionLoss()(targets, logits, sample_weight=weights))
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        assert not np.isclose(loss, per_caption)  # token-, not caption-weighted

    def test_training_loss_is_the_caption_loss_of_the_batch(self):
        captioner = tiny_captioner(keep_ratio=1.0)
        images, captions = scenes(2)
        x, y, w = model_inputs(captioner, images, captions)
        logits = captioner(x, training=False)
        expected = CaptionLoss()(y, logits, sample_weight=w)
        data = grain.MapDataset.source(list(zip(images, captions))).batch(2)
        result = captioner.evaluate(data, verbose=0, return_dict=True)
        np.testing.assert_allclose(result["loss"], ops.convert_to_numpy(expected), rtol=1e-5)

    def test_attention_masks(self):
        causal = ops.convert_to_numpy(decoder_attention_mask(3, 0, 7, 7, "causal"))
        prefix = ops.convert_to_numpy(decoder_attention_mask(3, 0, 7, 7, "prefix"))
        np.testing.assert_array_equal(causal, np.tril(np.ones((7, 7), bool)))
        assert not causal[0, 1]  # a visual token cannot see a later one
        assert prefix[:3, :3].all()  # under prefix it sees every visual token
        for mask in (causal, prefix):
            assert not np.triu(mask[3:, :], k=4).any()  # no caption sees ahead
            assert mask[3:, :3].all()  # captions see every visual token

    def test_visual_order_matters_only_under_the_causal_mask(self):
        rng = np.random.default_rng(0)
        visual = rng.normal(size=(1, 5, 8)).astype("float32")
        permuted = visual[:, ::-1]
        token_ids = np.array([[1, 2000, 2001, 2]])
        for mode, invariant in (("prefix", True), ("causal", False)):
            decoder = keras_ov2.OpenVision2TextDecoder(
                32000, 16, 2, 2, 32, attention_mask=mode
            )
            a = ops.convert_to_numpy(decoder(visual, token_ids))
            b = ops.convert_to_numpy(decoder(permuted, token_ids))
            assert np.allclose(a, b, atol=1e-5) == invariant, mode

    def test_no_caption_position_sees_a_later_token(self):
        captioner = tiny_captioner()
        images, captions = scenes(1)
        x, _, _ = model_inputs(captioner, images, captions)
        changed = ops.convert_to_numpy(x["token_ids"]).copy()
        changed[:, 5:] = 3000
        a = ops.convert_to_numpy(captioner(x))
        changed = ops.convert_to_tensor(changed)
        b = ops.convert_to_numpy(captioner({**x, "token_ids": changed}))
        np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
        assert not np.allclose(a[:, 5:], b[:, 5:])

    def test_parallel_prediction_rows_ignore_their_inputs(self):
        captioner = tiny_captioner(keep_ratio=1.0, parallel_fraction=1.0)
        images, captions = scenes(1)
        x, _, _ = model_inputs(captioner, images, captions)
        changed = {**x, "token_ids": x["token_ids"] + 7}
        a = ops.convert_to_numpy(captioner(x, training=True))
        b = ops.convert_to_numpy(captioner(changed, training=True))
        np.testing.assert_allclose(a, b, atol=1e-5)
        c = ops.convert_to_numpy(captioner(changed, training=False))
        assert not np.allclose(a, c, atol=1e-3)
        assert tiny_captioner().parallel_masking is None  # off by default

    def test_compile_defaults_follow_the_recipe(self):
        captioner = tiny_captioner()
        captioner.compile(learning_rate=1e-3, total_steps=100, warmup_steps=10)
        optimizer = captioner.optimizer
        assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (0.9, 0.95, 0.2)
        # The optimizer's own per-variable decision: exactly the kernels.
        trainable = {v.path for v in captioner.trainable_variables}
        decayed = {v.path for v in captioner.trainable_variables if optimizer._use_weight_decay(v)}
        kernels = dense_and_conv_kernels(captioner)
        assert decayed == kernels
        backbone, decoder = captioner.backbone, captioner.decoder
        block = backbone.transformer_layers[0]
        assert {
            backbone.patch_embedding.kernel.path,
            block.mlp_output.kernel.path,
            decoder.visual_projection.kernel.path,
            decoder.head.kernel.path,
        } <= kernels
        assert {
            backbone.class_token.weights[0].path,
            backbone.encoder_norm.gamma.path,
            block.mlp_output.bias.path,
            decoder.token_embedding.embeddings.path,
            decoder.decoder_norm.beta.path,
        } <= trainable - decayed
        assert callable(optimizer._learning_rate)  # a schedule, not a constant
        lr = [float(optimizer._learning_rate(step)) for step in (0, 5, 10, 55, 100)]
        assert lr[0] == 0 and abs(lr[1] - 5e-4) < 1e-9 and abs(lr[2] - 1e-3) < 1e-9
        assert 0 < lr[3] < 1e-3 and lr[4] < 1e-9
        assert isinstance(captioner.loss, CaptionLoss)

    def test_start_stage_keeps_weights_and_restarts_the_optimizer(self):
        captioner = tiny_captioner()
        images, captions = scenes(2)
        data = grain.MapDataset.source(list(zip(images, captions))).batch(2)
        captioner.compile(total_steps=4)
        captioner.fit(data.repeat(2), epochs=1, verbose=0)
        assert int(captioner.optimizer.iterations) == 2
        before = [ops.convert_to_numpy(v) for v in captioner.weights]
        captioner.start_stage(96, total_steps=10, learning_rate=1e-4)
        assert int(captioner.optimizer.iterations) == 0
        assert captioner.preprocessor.image_converter.image_size == (96, 96)
        for old, new in zip(before, captioner.weights):
            np.testing.assert_array_equal(old, ops.convert_to_numpy(new))
        x, _, _ = captioner.preprocessor(images, captions)
        assert tuple(x["images"].shape) == (2, 96, 96, 3)
        captioner.fit(data.repeat(1), epochs=1, verbose=0)

    def test_wrong_images_get_a_clear_error(self):
        captioner = tiny_captioner()
        token_ids = np.ones((1, 4), "int32")
        for images, found in (
            (np.zeros((1, SIZE, SIZE, 3), "float32"), "float32"),
            (np.zeros((SIZE, SIZE, 3), "uint8"), "shape (64, 64, 3)"),
            (np.zeros((1, SIZE, SIZE, 1), "uint8"), "shape (1, 64, 64, 1)"),
        ):
            with pytest.raises(ValueError, match="uint8 images") as error:
                captioner({"images": images, "token_ids": token_ids})
            assert found in str(error.value)

    def test_task_preset_round_trip(self):
        captioner = tiny_captioner()
        images, captions = scenes(2)
        x, _, _ = model_inputs(captioner, images, captions)
        folder = self.get_temp_dir()
        captioner.save_to_preset(folder)
        restored = keras_ov2.OpenVision2Captioner.from_preset(folder)
        assert restored.decoder.get_config() == captioner.decoder.get_config()
        self.assertAllClose(restored(x), captioner(x), atol=0)
        assert restored.generate(images, max_length=8) == captioner.generate(
            images, max_length=8
        )

    def test_shipped_captioner_presets_load_without_weights(self):
        names = [
            name
            for name, meta in keras_ov2.list_presets().items()
            if meta["family"] == "openvision2_captioner"
        ]
        assert len(names) == 9  # 7 scales, the demo, the demo for the scenes
        demo = keras_ov2.OpenVision2Captioner.from_preset(
            "openvision2_captioner_tiny_patch14_84", load_weights=False
        )
        assert demo.preprocessor.image_converter.image_size == (84, 84)
        assert demo.keep_ratio == 0.35
        # The paper's pairing, L/14 + decoder L: shapes only (a Task compiles
        # an optimizer when built, so build the parts from the preset files).
        folder = keras_ov2.models.presets.PRESETS_DIR / names[names.index(
            "openvision2_captioner_vit_large_patch14_84")]
        task = json.loads((folder / "task.json").read_text())["config"]
        with keras.StatelessScope(initialize_variables=False):
            encoder = keras_ov2.OpenVision2Backbone.from_preset(str(folder), load_weights=False)
            decoder = keras.layers.deserialize(task["decoder"])
            decoder.build((None, None, encoder.hidden_dim))
        # 135.0M with its 1024 -> 768 projection, 32000 rows, untied head.
        assert encoder.hidden_dim == 1024 and decoder.hidden_dim == 768
        assert abs(decoder.count_params() / 1e6 - 135.0) < 0.1
