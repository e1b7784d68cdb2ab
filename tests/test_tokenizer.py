import os
import pickle

import keras_hub
import pytest
from keras_hub.src.tests.test_case import TestCase

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_tokenizer import VOCABULARY_PATH
from keras_ov2.models.common.openvision_tokenizer import OpenVision2Tokenizer
from keras_ov2.models.common.openvision_tokenizer import load_vocabulary

CAPTIONS = [
    "A small red circle left of a large blue square.",
    "Café tokenization: naïve RÉSUMÉ, 12:30pm -- ok?",
    "two dogs' toys (3x) & a cat's bowl; 东京 tower",
]


def tiny_backbone():
    return OpenVision2Backbone(
        patch_size=4, hidden_dim=8, num_layers=1, num_heads=2, intermediate_dim=16
    )


class OpenVision2TokenizerTest(TestCase):
    def setUp(self):
        self.vocabulary = load_vocabulary()
        self.tokenizer = OpenVision2Tokenizer()

    def test_special_tokens_follow_the_vocabulary(self):
        t = self.tokenizer
        self.assertEqual(t.start_token_id, self.vocabulary.index("[bos]"))
        self.assertEqual(t.end_token_id, self.vocabulary.index("[eos]"))
        self.assertEqual(t.pad_token_id, self.vocabulary.index("[PAD]"))
        self.assertEqual(t.cls_token_id, self.vocabulary.index("[CLS]"))
        # The ids the authors' sequence format relies on.
        self.assertEqual(
            (t.pad_token_id, t.start_token_id, t.end_token_id, t.cls_token_id),
            (0, 1, 2, 101),
        )
        self.assertEqual(sorted(t.special_token_ids), [0, 1, 2, 101])

    def test_whole_words_map_to_their_vocabulary_rows(self):
        caption = "a small red circle left of a large blue square"
        words = caption.split()
        self.assertTrue(all(w in self.vocabulary for w in words))
        expected = [self.vocabulary.index(w) for w in words]
        self.assertAllEqual(self.tokenizer.tokenize(caption), expected)

    def test_case_accents_punctuation_and_word_pieces(self):
        # "tokenization" is not a row, so WordPiece splits it greedily.
        self.assertNotIn("tokenization", self.vocabulary)
        expected = [
            self.vocabulary.index(piece)
            for piece in ["cafe", "token", "##ization", "!"]
        ]
        self.assertAllEqual(self.tokenizer.tokenize("CAFÉ Tokenization!"), expected)

    def test_matches_tf_text_bert_tokenizer(self):
        """The authors tokenize with TF-Text's BertTokenizer(lower_case=True)."""
        tf = pytest.importorskip("tensorflow")
        tf_text = pytest.importorskip("tensorflow_text")
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.KeyValueTensorInitializer(
                self.vocabulary,
                list(range(len(self.vocabulary))),
                value_dtype=tf.int64,
            ),
            num_oov_buckets=1,
        )
        reference = tf_text.BertTokenizer(table, lower_case=True)
        expected = reference.tokenize(CAPTIONS).merge_dims(-2, -1).to_list()
        self.assertEqual(self.tokenizer.tokenize(CAPTIONS), expected)

    def test_for_texts_keeps_only_their_pieces_and_splits_alike(self):
        small = OpenVision2Tokenizer.for_texts(CAPTIONS)
        full = self.tokenizer

        def pieces(tokenizer, text):
            return [tokenizer.id_to_token(int(i)) for i in tokenizer.tokenize(text)]

        used = {p for text in CAPTIONS for p in pieces(full, text)}
        self.assertEqual(small.vocabulary_size(), len(used | {"[PAD]", "[bos]", "[eos]",
                                                              "[UNK]", "[CLS]"}))
        for text in CAPTIONS:
            self.assertEqual(pieces(small, text), pieces(full, text))
        self.assertEqual((small.pad_token_id, small.start_token_id, small.end_token_id),
                         (0, 1, 2))
        # A word the texts never used is unknown, not split into other pieces.
        self.assertEqual(pieces(small, "giraffe"), ["[UNK]"])

    def test_a_small_vocabulary_survives_a_config_round_trip(self):
        # Else from_config would give the shipped 30,522 rows to a model
        # that has rows for the small vocabulary only.
        small = OpenVision2Tokenizer.for_texts(["a red circle"])
        restored = OpenVision2Tokenizer.from_config(small.get_config())
        self.assertEqual(restored.get_vocabulary(), small.get_vocabulary())
        # The shipped vocabulary stays out of the config (an asset), as in KerasHub.
        self.assertIsNone(self.tokenizer.get_config()["vocabulary"])

    def test_preprocessing_layer_paths_agree(self):
        inputs = ["a small red circle", "the quick brown fox"]
        expected = [[self.vocabulary.index(w) for w in s.split()] for s in inputs]
        self.run_preprocessing_layer_test(
            cls=OpenVision2Tokenizer,
            init_kwargs={},
            input_data=inputs,
            expected_output=expected,
        )

    def test_default_vocabulary_is_the_shipped_file(self):
        self.assertEqual(self.tokenizer.get_vocabulary(), self.vocabulary)
        self.assertEqual(self.tokenizer.vocabulary_size(), 30522)
        from_path = OpenVision2Tokenizer(vocabulary=str(VOCABULARY_PATH))
        self.assertEqual(from_path.get_vocabulary(), self.vocabulary)

    def test_vocabulary_without_bos_is_rejected(self):
        with self.assertRaisesRegex(ValueError, r"\[bos\]"):
            OpenVision2Tokenizer(vocabulary=["[PAD]", "[UNK]", "[CLS]", "[eos]"])

    def test_detokenize_glues_word_pieces(self):
        ids = self.tokenizer.tokenize("a tokenization")
        self.assertEqual(self.tokenizer.detokenize(ids), "a tokenization")

    def test_serialization(self):
        self.run_serialization_test(self.tokenizer)

    def test_pickle_round_trip(self):
        restored = pickle.loads(pickle.dumps(self.tokenizer))
        self.assertIsInstance(restored, OpenVision2Tokenizer)
        self.assertEqual(restored.tokenize(CAPTIONS), self.tokenizer.tokenize(CAPTIONS))

    def test_preset_round_trip(self):
        preset = self.get_temp_dir()
        tiny_backbone().save_to_preset(preset)
        # A small vocabulary shows the preset's own file is what gets loaded.
        vocabulary = ["[PAD]", "[bos]", "[eos]", "[UNK]", "[CLS]", "a", "dog", "##s"]
        OpenVision2Tokenizer(vocabulary=vocabulary).save_to_preset(preset)
        self.assertTrue(os.path.exists(os.path.join(preset, "tokenizer.json")))
        vocab_file = os.path.join(preset, "assets", "tokenizer", "vocabulary.txt")
        self.assertEqual(load_vocabulary(vocab_file), vocabulary)

        for loader in (OpenVision2Tokenizer, keras_hub.models.Tokenizer):
            restored = loader.from_preset(preset)
            self.assertIsInstance(restored, OpenVision2Tokenizer)
            self.assertEqual(restored.get_vocabulary(), vocabulary)
            self.assertAllEqual(restored.tokenize("A dogs"), [5, 6, 7])
            self.assertEqual(restored.cls_token_id, 4)
