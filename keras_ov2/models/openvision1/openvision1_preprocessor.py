"""Images + web captions + detailed captions -> OpenVision v1's model inputs."""

import re

import keras
import numpy as np
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python

from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    OpenVision2CaptionerPreprocessor,
)
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import pack_captions
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import standardize_captions
from keras_ov2.models.common.openvision_image_converter import cpu_scope
from keras_ov2.models.common.openvision_image_converter import standardize_images


def split_sentences(caption):
    """The non-empty sentences of `caption`, split on "." and "!" as the
    authors (CLIPS) do; [] when there are none."""
    return [s.strip() for s in re.split(r"[.!]", caption) if s.strip()]


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision1Preprocessor(OpenVision2CaptionerPreprocessor):
    """Turns images, web captions and detailed captions into
    `OpenVisionCLIPS`' training triple.

    `call(x, y=None, sample_weight=None)` takes `x = {"images": ...,
    "web_captions": ..., "captions": ...}`, or images as `x` and
    `y = (web_captions, captions)` (what `make_pretraining_dataset` gives with
    `caption_field=("short_caption", "caption")`); one image with two strings
    or a batch with two lists. Returns `(x, y, sample_weight)`:

    - `x["images"]`: uint8, resized by the image converter (or rounded).
    - `x["web_token_ids"]`: int32 (B, L), the web caption packed as
      `[bos] w.. [eos] [PAD].. [CLS]` (L = `sequence_length`, 80).
    - `x["sentence_token_ids"]`: int32 (B, L), one sentence of the detailed
      caption drawn at random (CLIPS' sub-caption), packed the same way.
    - `y`: int32 (B, C), the whole detailed caption `[bos] w.. [eos]` padded
      to C+1 = `caption_length + 1`, without its `[bos]`: what the decoder's
      C queries predict (the authors' `labels_for_regress[1:] + [0]`).
    - `sample_weight`: float32 (B, C), 1 on word-pieces and `[eos]`.

    Sentences are drawn from a NumPy generator seeded with `seed` (each
    Grain worker gets a copy; pass distinct seeds for distinct draws). Empty
    captions, or detailed captions with no sentence, raise a ValueError
    naming their index. NumPy out in Grain workers (picklable); not for
    `tf.data`.

    Args:
        tokenizer: an `OpenVision2Tokenizer`.
        image_converter: an `OpenVision2ImageConverter` or None.
        sequence_length: int, the text encoder's packed length (80).
        caption_length: int, the decoder's target length = its number of
            queries (128).
        seed: int or None, seeds the sentence draws.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    preprocessor = keras_ov2.OpenVision1Preprocessor(
        tokenizer=keras_ov2.OpenVision2Tokenizer(),
        image_converter=keras_ov2.OpenVision2ImageConverter(image_size=(84, 84)),
        seed=0,
    )
    images = np.random.randint(0, 256, size=(2, 96, 96, 3), dtype="uint8")
    web_captions = ["red circle", "blue square and green cross"]
    captions = [
        "one shape: a small red circle.",
        "two shapes: a large blue square and a small green cross. "
        "the blue square is left of the green cross.",
    ]
    x, y, sample_weight = preprocessor(images, (web_captions, captions))
    x["images"]  # (2, 84, 84, 3) uint8
    x["web_token_ids"]  # (2, 80)
    x["sentence_token_ids"]  # (2, 80): one sentence of each caption
    y, sample_weight  # (2, 128) each: the whole detailed caption

    # Texts for `OpenVisionCLIPS.encode_texts`-style use.
    preprocessor.tokenize_texts(["red circle"])  # (1, 80)
    ```
    """

    def __init__(
        self,
        tokenizer,
        image_converter=None,
        sequence_length=80,
        caption_length=128,
        seed=None,
        **kwargs,
    ):
        super().__init__(tokenizer, image_converter, sequence_length, **kwargs)
        self.caption_length = caption_length
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def call(self, x, y=None, sample_weight=None):
        name = self._check_training_call(sample_weight)
        images, web_captions, captions = self._split_captions(x, y)
        web, batched = standardize_captions(web_captions, name)
        detailed, detailed_batched = standardize_captions(captions, name)
        with cpu_scope():
            images, unbatched = standardize_images(images, name)
            self._check_batch(images, unbatched, web, batched, "web captions")
            self._check_batch(
                images, unbatched, detailed, detailed_batched, "detailed captions"
            )
            web_ids = self._tokenize_nonempty(web, batched)
            detailed_ids = self._tokenize_nonempty(detailed, batched)
            sentence_ids = self._tokenize_nonempty(
                [self._draw_sentence(text, index) for index, text in enumerate(detailed)],
                batched,
            )
            images = self._uint8_images(images, unbatched)
        token_ids = {
            "web_token_ids": self.pack(web_ids, self.sequence_length),
            "sentence_token_ids": self.pack(sentence_ids, self.sequence_length),
        }
        targets = self.pack(detailed_ids, self.caption_length + 1)[:, 1:]
        targets[:, -1] = self.tokenizer.pad_token_id  # the [CLS] slot: "+ [0]"
        weights = (targets != self.tokenizer.pad_token_id).astype("float32")
        outputs = (token_ids, targets, weights)
        if not batched:
            outputs = keras.tree.map_structure(lambda a: a[0], outputs)
        outputs[0]["images"] = images
        return convert_preprocessing_outputs_python(outputs)

    def preprocess_images(self, images):
        """One image or a batch -> uint8 NumPy (B, H, W, 3), resized by the
        image converter."""
        with cpu_scope():
            images, _ = standardize_images(images, type(self).__name__)
            images = self._uint8_images(images, unbatched=False)
        return convert_preprocessing_outputs_python(images)

    def tokenize_texts(self, texts):
        """A list of strings -> int32 (B, `sequence_length`) text-encoder ids."""
        texts, batched = standardize_captions(texts, type(self).__name__)
        with cpu_scope():
            token_ids = self._tokenize_nonempty(texts, batched)
        return self.pack(token_ids, self.sequence_length)

    def pack(self, token_ids, length):
        tokenizer = self.tokenizer
        return pack_captions(
            token_ids,
            length,
            tokenizer.start_token_id,
            tokenizer.end_token_id,
            tokenizer.pad_token_id,
            tokenizer.cls_token_id,
        )

    def _draw_sentence(self, caption, index):
        sentences = split_sentences(caption)
        if not sentences:
            raise ValueError(
                f"Detailed caption {index} has no sentence to contrast "
                f"(nothing but '.' and '!'): {caption!r}."
            )
        return sentences[int(self.rng.integers(len(sentences)))]

    def _split_captions(self, x, y):
        name = type(self).__name__
        keys = {"images", "web_captions", "captions"}
        if isinstance(x, dict):
            if set(x) != keys or y is not None:
                raise ValueError(
                    f"{name} expects x = {{'images', 'web_captions', "
                    "'captions'}} and no y, or images as x and y = "
                    f"(web_captions, captions); received x with keys "
                    f"{sorted(x)} and {'no' if y is None else 'a'} y."
                )
            return x["images"], x["web_captions"], x["captions"]
        if not isinstance(y, (tuple, list)) or len(y) != 2:
            raise ValueError(
                f"{name} needs two captions per image: pass x = {{'images', "
                "'web_captions', 'captions'}}, or images as x and y = "
                f"(web_captions, captions); received y = {y!r}."
            )
        return x, y[0], y[1]

    def get_config(self):
        config = super().get_config()
        config.update(caption_length=self.caption_length, seed=self.seed)
        return config
