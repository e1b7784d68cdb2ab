import os
import pickle

import grain
import keras
import numpy as np
from absl import flags
from keras_hub.src.tests.test_case import TestCase

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import pack_captions
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter
from keras_ov2.models.common.openvision_tokenizer import OpenVision2Tokenizer
from keras_ov2.models.common.openvision_tokenizer import load_vocabulary

CAPTION = "a small red circle left of a large blue square"
LONG_CAPTION = " ".join(["a dog runs on the grass"] * 5)


def random_images(shape, seed=0):
    return np.random.RandomState(seed).randint(0, 256, shape).astype("uint8")


def flat(outputs):
    return [keras.ops.convert_to_numpy(a) for a in keras.tree.flatten(outputs)]


class OpenVision2CaptionerPreprocessorTest(TestCase):
    def setUp(self):
        self.vocabulary = load_vocabulary()
        specials = ("[bos]", "[eos]", "[PAD]", "[CLS]")
        self.ids = {t: self.vocabulary.index(t) for t in specials}
        self.converter = OpenVision2ImageConverter(image_size=(8, 8))
        self.init_kwargs = {
            "tokenizer": OpenVision2Tokenizer(),
            "image_converter": self.converter,
            "sequence_length": 16,
        }
        self.preprocessor = OpenVision2CaptionerPreprocessor(**self.init_kwargs)
        self.images = random_images((2, 12, 10, 3))

    def expected_packed(self, caption, length):
        """The authors' format, built from the vocabulary file."""
        words = [self.vocabulary.index(w) for w in caption.split()]
        body = [self.ids["[bos]"], *words, self.ids["[eos]"]]
        pads = [self.ids["[PAD]"]] * (length - 1 - len(body))
        return np.array(body + pads + [self.ids["[CLS]"]], "int32")

    def test_known_caption(self):
        x, y, sample_weight = self.preprocessor(
            {"images": self.images[0], "captions": CAPTION}
        )
        packed = self.expected_packed(CAPTION, 16)
        self.assertAllEqual(x["token_ids"], packed[:-1])
        self.assertAllEqual(y, packed[1:])
        self.assertDTypeEqual(x["token_ids"], "int32")
        self.assertDTypeEqual(y, "int32")
        # 10 words and [eos] carry weight; the 3 pads and [CLS] do not.
        self.assertAllEqual(sample_weight, [1.0] * 11 + [0.0] * 4)
        self.assertDTypeEqual(sample_weight, "float32")

    def test_truncation_keeps_eos_and_cls(self):
        length = 12
        pieces = OpenVision2Tokenizer().tokenize(LONG_CAPTION)
        self.assertGreater(len(pieces), length)
        self.preprocessor.sequence_length = length
        x, y, sample_weight = self.preprocessor(
            {"images": self.images[:1], "captions": [LONG_CAPTION]}
        )
        packed = np.concatenate([x["token_ids"][0], y[0][-1:]])
        self.assertEqual(packed.shape, (length,))
        self.assertEqual(packed[0], self.ids["[bos]"])
        self.assertAllEqual(packed[1 : length - 2], pieces[: length - 3])
        self.assertEqual(packed[length - 2], self.ids["[eos]"])
        self.assertEqual(packed[length - 1], self.ids["[CLS]"])
        self.assertAllEqual(sample_weight[0], [1.0] * (length - 2) + [0.0])

    def test_pack_captions_boundaries(self):
        ids = self.ids
        kwargs = dict(
            start_id=ids["[bos]"],
            end_id=ids["[eos]"],
            pad_id=ids["[PAD]"],
            cls_id=ids["[CLS]"],
        )
        packed = pack_captions([[7, 8, 9], [7, 8, 9, 10]], 6, **kwargs)
        bos, eos, pad, cls = ids["[bos]"], ids["[eos]"], ids["[PAD]"], ids["[CLS]"]
        # 3 = L - 3 pieces fit exactly; a 4th is cut and [eos] takes its slot.
        self.assertAllEqual(packed[0], [bos, 7, 8, 9, eos, cls])
        self.assertAllEqual(packed[1], [bos, 7, 8, 9, eos, cls])
        self.assertAllEqual(
            pack_captions([[7]], 6, **kwargs)[0], [bos, 7, eos, pad, pad, cls]
        )
        with self.assertRaisesRegex(ValueError, "at least 4"):
            pack_captions([[7]], 3, **kwargs)

    def test_sample_weight_masks_exactly_pads_and_cls(self):
        captions = ["a dog", CAPTION]
        _, y, sample_weight = self.preprocessor(
            {"images": self.images, "captions": captions}
        )
        y = keras.ops.convert_to_numpy(y)
        expected = (y != self.ids["[PAD]"]) & (y != self.ids["[CLS]"])
        self.assertAllEqual(sample_weight, expected.astype("float32"))
        self.assertAllEqual(keras.ops.sum(sample_weight, axis=1), [3.0, 11.0])

    def test_images_are_resized_uint8(self):
        x, _, _ = self.preprocessor((self.images, ["a dog", "a cat"]))
        self.assertDTypeEqual(x["images"], "uint8")
        self.assertEqual(tuple(x["images"].shape), (2, 8, 8, 3))
        self.assertAllEqual(x["images"], self.converter(self.images, normalize=False))
        # The converter still describes the backbone's (normalised) input.
        self.assertTrue(self.preprocessor.image_converter.normalize)

    def test_without_converter_images_are_rounded_to_uint8(self):
        preprocessor = OpenVision2CaptionerPreprocessor(OpenVision2Tokenizer())
        images = np.full((1, 4, 4, 3), 254.6, "float32")
        x, _, _ = preprocessor({"images": images, "captions": ["a dog"]})
        self.assertDTypeEqual(x["images"], "uint8")
        self.assertAllEqual(x["images"], np.full((1, 4, 4, 3), 255, "uint8"))

    def test_unbatched_matches_batched_and_tuple_matches_dict(self):
        captions = ["a dog", "two cats"]
        batched = self.preprocessor({"images": self.images, "captions": captions})
        from_tuple = self.preprocessor((self.images, captions))
        for actual, expected in zip(flat(from_tuple), flat(batched)):
            self.assertAllEqual(actual, expected)
        single = self.preprocessor({"images": self.images[1], "captions": captions[1]})
        for actual, expected in zip(flat(single), flat(batched)):
            self.assertAllEqual(actual, expected[1])

    def test_empty_captions_are_rejected(self):
        for captions, message in [
            ("", "The caption is empty"),
            (["a dog", "   "], "Caption 1 of the batch is empty"),
            (["\u200b", "a dog"], "Caption 0 of the batch is empty"),
        ]:
            images = self.images if isinstance(captions, list) else self.images[0]
            with self.assertRaisesRegex(ValueError, message):
                self.preprocessor({"images": images, "captions": captions})

    def test_bad_images_are_named(self):
        for images, message in [
            (np.zeros((4, 4), "uint8"), r"received shape \(4, 4\)"),
            (np.zeros((1, 1, 4, 4, 3), "uint8"), r"received shape \(1, 1, 4, 4, 3\)"),
            (np.zeros((4, 4, 1), "uint8"), r"received shape \(4, 4, 1\)"),
            (np.zeros((4, 4, 3), "bool"), "dtype bool"),
            (np.full((4, 4, 3), "x"), "dtype <U"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                self.preprocessor({"images": images, "captions": "a dog"})

    def test_mismatched_inputs_are_named(self):
        with self.assertRaisesRegex(ValueError, "2 images and a single string"):
            self.preprocessor({"images": self.images, "captions": "a dog"})
        with self.assertRaisesRegex(ValueError, "2 images and a list of 3"):
            self.preprocessor({"images": self.images, "captions": ["a"] * 3})
        with self.assertRaisesRegex(ValueError, r"keys \['caption', 'images'\]"):
            self.preprocessor({"images": self.images, "caption": ["a", "b"]})
        with self.assertRaisesRegex(ValueError, "needs captions"):
            self.preprocessor(self.images)
        with self.assertRaisesRegex(ValueError, "sample_weight"):
            self.preprocessor(self.images, ["a", "b"], np.ones(2))

    def test_generate_preprocess(self):
        outputs = self.preprocessor.generate_preprocess(
            {"images": self.images, "prompts": ["a photo of", ""]}
        )
        self.assertDTypeEqual(outputs["images"], "uint8")
        prompt = [self.vocabulary.index(w) for w in ["a", "photo", "of"]]
        expected = np.zeros((2, 15), "int32")
        expected[0, :4] = [self.ids["[bos]"], *prompt]
        expected[1, 0] = self.ids["[bos]"]
        self.assertAllEqual(outputs["token_ids"], expected)
        self.assertAllEqual(outputs["padding_mask"], expected != 0)
        single = self.preprocessor.generate_preprocess(self.images[0])
        self.assertAllEqual(single["token_ids"], expected[1])
        self.assertEqual(tuple(single["images"].shape), (8, 8, 3))

    def test_generate_postprocess(self):
        vocab = self.vocabulary
        pieces = ["a", "token", "##ization", "."]
        row = [self.ids["[bos]"], *[vocab.index(p) for p in pieces]]
        row += [self.ids["[eos]"], vocab.index("dog"), self.ids["[PAD]"]]
        dog_row = [self.ids["[bos]"], vocab.index("dog")] + [self.ids["[PAD]"]] * 6
        post = self.preprocessor.generate_postprocess
        self.assertEqual(post(np.array(row)), "a tokenization .")
        self.assertEqual(
            post({"token_ids": np.array([row, dog_row])}),
            ["a tokenization .", "dog"],
        )

    def test_tf_data_is_refused_with_a_pointer_to_grain(self):
        import tensorflow as tf

        dataset = tf.data.Dataset.from_tensor_slices(
            {"images": self.images, "captions": ["a dog", "a cat"]}
        )
        with self.assertRaisesRegex(RuntimeError, "Grain"):
            dataset.map(self.preprocessor)

    def test_serialization(self):
        self.run_serialization_test(self.preprocessor)

    def test_grain_outputs_numpy(self):
        input_data = {"images": self.images, "captions": ["a dog", CAPTION]}
        expected = self.preprocessor(input_data)
        self.run_grain_preprocessing_test(self.preprocessor, input_data, expected)

    def test_pickle_and_grain_worker_process(self):
        restored = pickle.loads(pickle.dumps(self.preprocessor))
        self.assertIsInstance(restored, OpenVision2CaptionerPreprocessor)
        captions = ["a dog", "two cats"]
        records = [
            {"images": image, "captions": c} for image, c in zip(self.images, captions)
        ]
        expected = self.preprocessor({"images": self.images, "captions": captions})
        inputs = {"images": self.images, "captions": captions}
        for actual, wanted in zip(flat(restored(inputs)), flat(expected)):
            self.assertAllEqual(actual, wanted)

        flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; pytest parses none.
        dataset = (
            grain.MapDataset.source(records)
            .map(self.preprocessor)
            .batch(2)
            .to_iter_dataset()
            .mp_prefetch(grain.MultiprocessingOptions(num_workers=1))
        )
        (batch,) = list(dataset)
        for leaf in keras.tree.flatten(batch):
            self.assertIsInstance(leaf, np.ndarray)
        for actual, wanted in zip(flat(batch), flat(expected)):
            self.assertAllEqual(actual, wanted)

    def test_preset_round_trip(self):
        preset = self.get_temp_dir()
        OpenVision2Backbone(
            patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16
        ).save_to_preset(preset)
        self.preprocessor.save_to_preset(preset)
        for name in ("preprocessor.json", "tokenizer.json", "image_converter.json"):
            self.assertTrue(os.path.exists(os.path.join(preset, name)))
        vocab_file = os.path.join(preset, "assets", "tokenizer", "vocabulary.txt")
        self.assertEqual(load_vocabulary(vocab_file), self.vocabulary)

        restored = OpenVision2CaptionerPreprocessor.from_preset(preset)
        self.assertEqual(restored.sequence_length, 16)
        self.assertEqual(restored.image_converter.image_size, (8, 8))
        inputs = {"images": self.images, "captions": ["a dog", CAPTION]}
        expected = flat(self.preprocessor(inputs))
        for actual, wanted in zip(flat(restored(inputs)), expected):
            self.assertAllEqual(actual, wanted)
