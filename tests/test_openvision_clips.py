"""OpenVision v1 (CLIPS-style) baseline: training, retrieval, numerics, presets."""

import json
import pickle

import keras
import numpy as np
import pytest
from keras import ops
from keras_hub.src.tests.test_case import TestCase

import keras_ov2
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import synthetic_scenes
from keras_ov2.data.pipeline import make_pretraining_dataset
from keras_ov2.models.openvision1.openvision1_caption_decoder import query_attention_mask
from keras_ov2.models.openvision1.openvision1_preprocessor import split_sentences

SIZE = 56  # the smallest side SyntheticScenes draws one object at
TEXT = 10  # text-encoder ids per caption
CAPTION = 12  # decoder queries = target positions
FIELDS = ("short_caption", "caption")
# Every word-piece of the synthetic captions: a 44-row vocabulary keeps the
# decoder head (the cost of a 32000-row one) out of these CPU tests.
VOCABULARY = [
    "[PAD]", "[bos]", "[eos]", "[UNK]", "[CLS]",
    *synthetic_scenes.COLOURS, *synthetic_scenes.SHAPES, *synthetic_scenes.SIZES,
    *synthetic_scenes.COUNTS,
    *"shape shapes a the is of and from to left right above below , . :".split(),
]


def tiny_preprocessor(seed=0):
    return keras_ov2.OpenVision1Preprocessor(
        keras_ov2.OpenVision2Tokenizer(VOCABULARY),
        sequence_length=TEXT,
        caption_length=CAPTION,
        seed=seed,
    )


def tiny_clips(width=32, decoder_layers=1, preprocessor=True, vocabulary=len(VOCABULARY),
               **kwargs):
    backbone = keras_ov2.OpenVision2Backbone(
        patch_size=14, hidden_dim=width, num_layers=1, num_heads=2,
        intermediate_dim=2 * width, projection_dim=width,
    )
    text_encoder = keras_ov2.OpenVision1TextEncoder(
        vocabulary, width, 1, 2, 2 * width, width, max_sequence_length=TEXT
    )
    decoder = keras_ov2.OpenVision1CaptionDecoder(
        vocabulary, width, decoder_layers, 2, 2 * width, num_queries=CAPTION
    )
    return keras_ov2.OpenVisionCLIPS(
        backbone, text_encoder, decoder,
        tiny_preprocessor() if preprocessor else None, **kwargs,
    )


def scenes(count, split="train"):
    source = SyntheticScenes(count, image_size=SIZE, max_objects=1, split=split)
    records = [source[i] for i in range(count)]
    images = np.stack([r["image"] for r in records])
    return images, [r[FIELDS[0]] for r in records], [r[FIELDS[1]] for r in records]


def numpy_contrastive(images, texts, temperature):
    """0.5 * (CE image->text + CE text->image) of L2-normalised embeddings."""
    images = images / (np.linalg.norm(images, axis=1, keepdims=True) + 1e-8)
    texts = texts / (np.linalg.norm(texts, axis=1, keepdims=True) + 1e-8)
    logits = np.exp(temperature) * images @ texts.T

    def cross_entropy(rows):
        rows = rows - rows.max(1, keepdims=True)
        log_probs = rows - np.log(np.exp(rows).sum(1, keepdims=True))
        return -np.mean(np.diag(log_probs))

    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))


class OpenVisionCLIPSTest(TestCase):
    def test_fit_lowers_the_loss_and_retrieves_held_out_scenes(self):
        keras.utils.set_random_seed(0)
        model = tiny_clips()
        batch, steps = 16, 250
        source = SyntheticScenes(512, image_size=SIZE, max_objects=1)

        def data(**kwargs):
            return make_pretraining_dataset(
                source, SIZE, batch, caption_field=FIELDS, augment_images=False,
                shard_index=0, shard_count=1, **kwargs,
            )

        # A long warmup: a one-block text tower starts with near-identical
        # embeddings, and a fast start collapses both towers onto one point.
        # 20 steps to spare: the last fit below still has a learning rate.
        model.compile(learning_rate=2e-3, total_steps=steps + 20, warmup_steps=100)
        history = model.fit(data(), steps_per_epoch=steps // 10, epochs=10, verbose=0).history
        assert history["loss"][-1] < 0.5 * history["loss"][0], history
        # ln(batch) is the contrastive loss of embeddings that carry nothing.
        assert history["clip_loss"][-1] < 0.8 * np.log(batch), history

        # Zero-shot: each held-out image against every distinct web caption.
        images, captions, _ = scenes(48, split="held_out")
        gallery = sorted(set(captions))
        similarity = model.similarity(images, gallery)
        assert similarity.shape == (48, len(gallery))
        accuracy = np.mean(
            [gallery[j] == c for j, c in zip(similarity.argmax(1), captions)]
        )
        chance = 1 / len(gallery)
        assert accuracy >= 3 * chance, (accuracy, chance)

        # The pipeline's `preprocessor` option feeds a task without one (the
        # same compiled step: same shapes).
        preprocessor, model.preprocessor = model.preprocessor, None
        x, y, weights = next(iter(data(preprocessor=preprocessor)))
        assert x["web_token_ids"].shape == x["sentence_token_ids"].shape == (batch, TEXT)
        assert y.shape == weights.shape == (batch, CAPTION)
        temperature = ops.convert_to_numpy(model.contrastive_logits.temperature)
        more = model.fit(data(preprocessor=preprocessor), steps_per_epoch=2, verbose=0)
        assert more.history["loss"][-1] < history["loss"][0]
        assert ops.convert_to_numpy(model.contrastive_logits.temperature) != temperature

    def test_loss_equals_an_independent_numpy_computation(self):
        keras.utils.set_random_seed(1)
        model = tiny_clips(width=16)
        model.contrastive_logits.temperature.assign([0.5])
        images, web, detailed = scenes(4)
        x, y, weights = model.preprocessor(images, (web, detailed))
        outputs = model(x)
        loss = ops.convert_to_numpy(model.compute_loss(x, y, outputs, weights))
        with pytest.raises(ValueError, match="uint8 images"):
            model({**x, "images": ops.cast(x["images"], "float32")})

        normalized = model.image_normalization(x["images"])
        image = ops.convert_to_numpy(model.backbone(normalized)["projected_output"])
        web_text, sentence = (
            ops.convert_to_numpy(model.text_encoder(x[key])["projected_output"])
            for key in ("web_token_ids", "sentence_token_ids")
        )
        clip = 0.5 * (
            numpy_contrastive(image, web_text, 0.5)
            + numpy_contrastive(image, sentence, 0.5)
        )
        logits = ops.convert_to_numpy(outputs["caption_logits"]).astype("float64")
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(log_probs, np.asarray(y)[..., None], -1)[..., 0]
        weights = np.asarray(weights)
        caption = 2.0 * (nll * weights).sum() / weights.sum()
        np.testing.assert_allclose(loss, clip + caption, rtol=1e-5)
        # The pieces differ, so a swapped or missing term would show.
        assert abs(numpy_contrastive(image, web_text, 0.5) - clip) > 1e-4

    def test_decoder_mask_matches_numpy(self):
        prefix, queries = 5, 4
        expected = np.zeros((prefix + queries,) * 2, bool)
        expected[:prefix, :prefix] = True  # the prefix is bidirectional
        expected[prefix:, :prefix] = True  # queries see the whole prefix
        expected[prefix:, prefix:] = np.tril(np.ones((queries, queries), bool))
        mask = ops.convert_to_numpy(query_attention_mask(prefix, queries))
        np.testing.assert_array_equal(mask, expected)

    def test_decoder_queries_are_causal_and_the_prefix_ignores_them(self):
        keras.utils.set_random_seed(2)
        decoder = keras_ov2.OpenVision1CaptionDecoder(40, 16, 2, 2, 32, num_queries=6)
        rng = np.random.default_rng(0)
        image = rng.normal(size=(1, 5, 8)).astype("float32")
        text = rng.normal(size=(1, 3, 12)).astype("float32")
        before = ops.convert_to_numpy(decoder(image, text))
        # Two blocks: had the prefix seen query 3, every query would change.
        queries = ops.convert_to_numpy(decoder.learnable_tokens).copy()
        queries[3] += rng.normal(size=queries.shape[1])  # not a constant: LayerNorm drops those
        decoder.learnable_tokens.assign(queries)
        after = ops.convert_to_numpy(decoder(image, text))
        np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-5)
        assert not np.allclose(before[:, 3:], after[:, 3:], atol=1e-3)
        # No positions in the prefix: reordering image tokens changes nothing.
        permuted = ops.convert_to_numpy(decoder(image[:, ::-1], text))
        np.testing.assert_allclose(after, permuted, atol=1e-4)
        text[:, 2] += rng.normal(size=12)  # every query sees every web-caption token
        changed = ops.convert_to_numpy(decoder(image, text))
        assert not np.isclose(after, changed, atol=1e-4).all(-1).any()

    def test_text_encoder_is_bidirectional_and_checks_its_length(self):
        keras.utils.set_random_seed(3)
        encoder = keras_ov2.OpenVision1TextEncoder(40, 16, 1, 2, 32, 8, max_sequence_length=6)
        ids = np.array([[1, 5, 6, 2, 0, 4]], "int32")
        out = {k: ops.convert_to_numpy(v) for k, v in encoder(ids).items()}
        assert out["sequence_output"].shape == (1, 5, 16)
        assert out["projected_output"].shape == (1, 8)
        later = ids.copy()
        later[0, -1] = 7  # the pooled, last token
        changed = ops.convert_to_numpy(encoder(later)["sequence_output"])
        assert not np.allclose(out["sequence_output"][:, 0], changed[:, 0])
        with pytest.raises(ValueError, match="2 to 6 token ids"):
            encoder(np.ones((1, 7), "int32"))

    def test_preprocessor_packs_two_captions_and_one_sentence(self):
        preprocessor = tiny_preprocessor()
        _, web, detailed = scenes(1)
        detailed = ["one shape: a large red cross. the red cross is left of it!"]
        image = np.zeros((SIZE, SIZE, 3), "uint8")
        x, y, weights = preprocessor(image, (web[0], detailed[0]))
        tokenizer = preprocessor.tokenizer
        words = list(np.asarray(tokenizer.tokenize(web[0])))
        padding = [0] * (TEXT - len(words) - 3)
        cls = tokenizer.cls_token_id
        assert list(np.asarray(x["web_token_ids"])) == [1, *words, 2, *padding, cls]
        sentences = split_sentences(detailed[0])
        sentence = np.asarray(x["sentence_token_ids"])
        body = sentence[1 : list(sentence).index(tokenizer.end_token_id)]
        assert tokenizer.detokenize(body) in [
            tokenizer.detokenize(tokenizer.tokenize(s)) for s in sentences
        ]
        # Targets: the whole caption without [bos], cut at CAPTION with [eos] last.
        full = list(np.asarray(tokenizer.tokenize(detailed[0])))
        assert list(np.asarray(y)) == full[: CAPTION - 2] + [tokenizer.end_token_id, 0]
        assert list(np.asarray(weights)) == [1.0] * (CAPTION - 1) + [0.0]
        # Picklable for Grain workers, and a dict input gives the same.
        copy = pickle.loads(pickle.dumps(preprocessor))
        x2, y2, _ = copy({"images": image, "web_captions": web[0], "captions": "a red."})
        np.testing.assert_array_equal(x2["web_token_ids"], x["web_token_ids"])
        expected = [tokenizer.token_to_id(t) for t in ("a", "red", ".")]
        assert list(np.asarray(y2))[:4] == [*expected, tokenizer.end_token_id]

    def test_bad_inputs_get_clear_errors(self):
        preprocessor = tiny_preprocessor()
        images = np.zeros((2, SIZE, SIZE, 3), "uint8")
        with pytest.raises(ValueError, match="two captions per image"):
            preprocessor(images, ["a", "b"][0])
        with pytest.raises(ValueError, match="no sentence"):
            preprocessor(images, (["red", "blue"], ["red.", "..."]))
        with pytest.raises(ValueError, match="web captions per image"):
            preprocessor(images, (["red"], ["red.", "blue."]))
        backbone = keras_ov2.OpenVision2Backbone(14, 16, 1, 2, 32)
        text = keras_ov2.OpenVision1TextEncoder(40, 16, 1, 2, 32, 16)
        decoder = keras_ov2.OpenVision1CaptionDecoder(40, 16, 1, 2, 32, num_queries=CAPTION)
        with pytest.raises(ValueError, match="projection_dim"):
            keras_ov2.OpenVisionCLIPS(backbone, text, decoder)

    def test_compile_follows_the_recipe(self):
        model = tiny_clips(width=16)
        model.compile(learning_rate=1e-3, total_steps=100, warmup_steps=10)
        optimizer = model.optimizer
        assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (0.9, 0.95, 0.2)
        decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
        assert decayed and all(path.endswith("kernel") for path in decayed)
        paths = {v.path for v in model.trainable_variables}
        for name in ("temperature", "learnable_tokens", "position_embedding"):
            (path,) = [p for p in paths if p.endswith(name)]
            assert path not in decayed
        assert float(optimizer._learning_rate(10)) == pytest.approx(1e-3)

    def test_task_preset_round_trip(self):
        model = tiny_clips(width=16)
        images, web, detailed = scenes(2)
        x, _, _ = model.preprocessor(images, (web, detailed))
        folder = self.get_temp_dir()
        model.save_to_preset(folder)
        restored = keras_ov2.OpenVisionCLIPS.from_preset(folder)
        assert restored.text_encoder.get_config() == model.text_encoder.get_config()
        assert restored.preprocessor.caption_length == CAPTION
        restored_outputs = restored(x)
        for key, value in model(x).items():
            self.assertAllClose(restored_outputs[key], value, atol=0)
        restored_x, _, _ = restored.preprocessor(images, (web, detailed))
        for key in ("web_token_ids", "sentence_token_ids"):  # its own vocabulary
            np.testing.assert_array_equal(restored_x[key], x[key])

    def test_shipped_presets(self):
        names = sorted(
            name for name, meta in keras_ov2.list_presets().items()
            if meta["family"] == "openvision_clips"
        )
        assert names == [
            "openvision_clips_tiny_patch14_84",
            "openvision_clips_vit_small_patch16_84",
            "openvision_clips_vit_tiny_patch16_84",
        ]
        demo = keras_ov2.OpenVisionCLIPS.from_preset(names[0], load_weights=False)
        assert demo.preprocessor.image_converter.image_size == (84, 84)
        assert demo.backbone.hidden_dim == 128 and demo.backbone.patch_size == 14
        # The paper-size setups: shapes only, parameters from the reference's
        # formula (block: 4(D^2+D) + 4D + 2DM + M + D).
        for name, width, mlp in ((names[1], 384, 1536), (names[2], 192, 768)):
            folder = keras_ov2.models.presets.PRESETS_DIR / name
            task = json.loads((folder / "task.json").read_text())["config"]
            with keras.StatelessScope(initialize_variables=False):
                backbone, text, decoder = (
                    keras.layers.deserialize(task[k])
                    for k in ("backbone", "text_encoder", "decoder")
                )
                text.build((None, 80))
                decoder.build((None, None, width), (None, None, width))
            block = 4 * (width**2 + width) + 4 * width + 2 * width * mlp + mlp + width
            tower = 12 * block
            expected_image = tower + 16 * 16 * 3 * width + width + 2 * width + width**2
            expected_text = tower + 32000 * width + 80 * width + 2 * width + width**2
            expected_decoder = tower + 2 * width**2 + 128 * width + 2 * width + width * 32000
            assert backbone.count_params() == expected_image
            assert text.count_params() == expected_text
            assert decoder.count_params() == expected_decoder
            total = expected_image + expected_text + expected_decoder + 1
            assert keras_ov2.list_presets()[name]["params"] == total
