"""The OpenVision caption tokenizer: BERT uncased WordPiece with [bos]/[eos]."""

import functools
from pathlib import Path

import keras
import keras_hub

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.variants import SPECIAL_TOKENS

VOCABULARY_PATH = Path(__file__).resolve().parents[2] / "assets" / "vocabulary.txt"


def load_vocabulary(path=VOCABULARY_PATH):
    """Reads a one-token-per-line vocabulary file into a list."""
    with open(path, encoding="utf-8") as file:
        return [line.rstrip("\n") for line in file]


@functools.cache
def shipped_vocabulary():
    return tuple(load_vocabulary())


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2Tokenizer(keras_hub.tokenizers.WordPieceTokenizer):
    """WordPiece over the OpenVision vocabulary, lowercasing and stripping
    accents like the TF-Text `BertTokenizer(lower_case=True)` the authors
    train with, so captions get the same word-pieces and ids.

    The vocabulary is bert-base-uncased with `[unused0]` renamed `[bos]`
    (id 1) and `[unused1]` renamed `[eos]` (id 2). Special tokens, as
    attributes with `_id` twins: `start_token` `[bos]`, `end_token` `[eos]`,
    `pad_token` `[PAD]` (0), `cls_token` `[CLS]` (101, the last slot of a
    packed target sequence). Packing into sequences is the preprocessor's
    job; this layer returns unpadded id lists unless `sequence_length` is set.

    Args:
        vocabulary: list of tokens or path to a vocabulary file; None (default)
            uses the vocabulary shipped with keras_ov2.
        **kwargs: passed to `keras_hub.tokenizers.WordPieceTokenizer`.

    Example:
    ```python
    import keras_ov2

    tokenizer = keras_ov2.OpenVision2Tokenizer()

    # Strings -> word-piece ids (a list of ids per string for a batch).
    ids = tokenizer("A red circle, left of a blue square")
    tokenizer.detokenize(ids)  # "a red circle , left of a blue square"
    tokenizer(["red circle", "blue square"])

    # The special tokens of the captions' packed sequences.
    tokenizer.start_token_id, tokenizer.end_token_id  # 1 ([bos]), 2 ([eos])
    tokenizer.pad_token_id, tokenizer.cls_token_id  # 0 ([PAD]), 101 ([CLS])
    ```
    """

    backbone_cls = OpenVision2Backbone

    def __init__(self, vocabulary=None, **kwargs):
        self._add_special_token("[bos]", "start_token")
        self._add_special_token("[eos]", "end_token")
        self._add_special_token("[PAD]", "pad_token")
        self._add_special_token("[CLS]", "cls_token")
        if vocabulary is None:
            # A list rather than the path: Keras' safe mode refuses paths.
            vocabulary = list(shipped_vocabulary())
        kwargs.setdefault("lowercase", True)
        kwargs.setdefault("strip_accents", True)
        super().__init__(vocabulary=vocabulary, **kwargs)

    def get_config(self):
        # KerasHub leaves the vocabulary out (a preset keeps it as an asset),
        # and None here means the shipped one: a smaller vocabulary (see
        # `for_texts`) stays in the config, so that `from_config` cannot
        # silently swap in 30,522 rows its model has no rows for.
        config = super().get_config()
        if self.vocabulary is not None and tuple(self.vocabulary) != shipped_vocabulary():
            config["vocabulary"] = list(self.vocabulary)
        return config

    @classmethod
    def for_texts(cls, texts, **kwargs):
        """A tokenizer holding only the word-pieces `texts` split into (plus
        the special tokens), for a small model trained from scratch on a
        closed set of texts: its embedding and output layer then have tens of
        rows instead of 30,522. The texts split into the same word-pieces as
        with the full vocabulary (greedy longest match finds the same pieces);
        their ids differ."""
        full = cls(**kwargs)
        pieces = {full.id_to_token(int(i)) for ids in full.tokenize(list(texts)) for i in ids}
        return cls(vocabulary=[*SPECIAL_TOKENS, *sorted(pieces - set(SPECIAL_TOKENS))], **kwargs)
