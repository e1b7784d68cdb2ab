"""Images + captions -> the captioner's uint8 images, token ids, targets."""

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils.tensor_utils import canonicalize_python_string_inputs
from keras_hub.src.utils.tensor_utils import canonicalize_python_token_inputs
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python

from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter
from keras_ov2.models.common.openvision_image_converter import cpu_scope
from keras_ov2.models.common.openvision_image_converter import python_only_error
from keras_ov2.models.common.openvision_image_converter import standardize_images
from keras_ov2.models.common.openvision_image_converter import to_uint8
from keras_ov2.models.common.openvision_tokenizer import OpenVision2Tokenizer


def pack_captions(token_ids, sequence_length, start_id, end_id, pad_id, cls_id):
    """Packs word-piece id lists as the authors do (`my_bert_tokenize_v2`):
    `[bos] w1..wn [eos] [PAD]... [CLS]`, `sequence_length` ids per row.

    `[bos] + ids + [eos]` is padded or truncated to `sequence_length - 1`;
    when truncated the last kept slot becomes `[eos]`, so `[eos]` always
    survives (at most `sequence_length - 3` word-pieces fit). `[CLS]` takes
    the last slot. Returns int32 (len(token_ids), sequence_length).
    """
    if sequence_length < 4:
        raise ValueError(
            "sequence_length must be at least 4 ([bos], one word-piece, "
            f"[eos], [CLS]); received {sequence_length}."
        )
    packed = np.full((len(token_ids), sequence_length), pad_id, dtype="int32")
    packed[:, -1] = cls_id
    for row, ids in zip(packed, token_ids):
        body = [start_id, *ids[: sequence_length - 3], end_id]
        row[: len(body)] = body
    return packed


def standardize_captions(captions, owner):
    """One caption or a list/array of them -> (list of str, batched)."""
    try:
        texts, batched, outer_shape = canonicalize_python_string_inputs(captions)
    except ValueError as error:
        raise ValueError(
            f"{owner} expects captions as a string or a list of strings; "
            f"received {captions!r}."
        ) from error
    if outer_shape is not None:
        raise ValueError(
            f"{owner} expects one caption per image (a string or a list of "
            f"strings); received nested captions of shape {outer_shape}."
        )
    return texts, batched


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVision2CaptionerPreprocessor(keras_hub.models.Preprocessor):
    """Turns images and captions into the captioner's training triple.

    `call(x, y=None, sample_weight=None)` takes `x = {"images": ...,
    "captions": ...}`, or images as `x` and captions as `y` (so a plain
    `(images, captions)` tuple and `fit(x=images, y=captions)` both work),
    one (H, W, 3) image with one string or a (B, H, W, 3) batch with B
    strings, and returns `(x, y, sample_weight)`:

    - `x["images"]`: uint8, resized by the image converter in uint8 mode
      (the captioner normalises on the device), or the input images rounded
      to uint8 when there is no converter.
    - `x["token_ids"]`: int32 (B, L-1), the packed sequence without its last
      slot: `[bos] w1..wn [eos] [PAD]...` (L = `sequence_length`).
    - `y`: int32 (B, L-1), the packed sequence without `[bos]`:
      `w1..wn [eos] [PAD]... [CLS]`.
    - `sample_weight`: float32 (B, L-1), 1 on every word-piece and the
      `[eos]`, 0 on the pads and on the final `[CLS]` (the authors'
      `cap_loss_mask`).

    Empty captions (blank, or nothing left after tokenizing) raise a
    ValueError naming their index. Runs eagerly (backend tensors out) and in
    Grain workers (NumPy out, picklable), not inside `tf.data`.

    Args:
        tokenizer: an `OpenVision2Tokenizer`.
        image_converter: an `OpenVision2ImageConverter` or None. It keeps its
            own `normalize` setting (what `image_converter.json` tells the
            backbone); this preprocessor always calls it with
            `normalize=False`.
        sequence_length: int, L, the packed length including `[CLS]`; the
            model sees L-1 positions. 128 as in the authors' recipe.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor(
        tokenizer=keras_ov2.OpenVision2Tokenizer(),
        image_converter=keras_ov2.OpenVision2ImageConverter(image_size=(84, 84)),
        sequence_length=32,
    )
    images = np.random.randint(0, 256, size=(2, 100, 120, 3), dtype="uint8")
    x, y, sample_weight = preprocessor(images, ["a red circle", "two blue squares"])
    x["images"]  # (2, 84, 84, 3) uint8
    x["token_ids"]  # (2, 31): [bos] a red circle [eos] [PAD]...
    y  # (2, 31): a red circle [eos] [PAD]... [CLS]
    sample_weight  # (2, 31): 1.0 on the word-pieces and [eos]

    # Generation inputs, and the generated ids back to strings.
    inputs = preprocessor.generate_preprocess(images)
    preprocessor.generate_postprocess(inputs["token_ids"])  # ["", ""]

    # The preprocessor of a captioner preset.
    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor.from_preset(
        "openvision2_captioner_tiny_patch14_84"
    )
    ```
    """

    backbone_cls = OpenVision2Backbone
    tokenizer_cls = OpenVision2Tokenizer
    image_converter_cls = OpenVision2ImageConverter

    def __init__(
        self, tokenizer, image_converter=None, sequence_length=128, **kwargs
    ):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = sequence_length

    def call(self, x, y=None, sample_weight=None):
        name = self._check_training_call(sample_weight)
        images, captions = self._split_inputs(x, y)
        texts, batched = standardize_captions(captions, name)
        with cpu_scope():
            images, unbatched = standardize_images(images, name)
            self._check_batch(images, unbatched, texts, batched, "captions")
            token_ids = self._tokenize_nonempty(texts, batched)
            images = self._uint8_images(images, unbatched)
        tokenizer = self.tokenizer
        packed = pack_captions(
            token_ids,
            self.sequence_length,
            tokenizer.start_token_id,
            tokenizer.end_token_id,
            tokenizer.pad_token_id,
            tokenizer.cls_token_id,
        )
        targets = packed[:, 1:]
        weights = (targets != tokenizer.pad_token_id).astype("float32")
        weights[:, -1] = 0.0  # the [CLS] slot
        outputs = ({"token_ids": packed[:, :-1]}, targets, weights)
        if not batched:
            outputs = keras.tree.map_structure(lambda a: a[0], outputs)
        outputs[0]["images"] = images
        return convert_preprocessing_outputs_python(outputs)

    def generate_preprocess(self, x, sequence_length=None):
        """Images (+ optional prompts) -> generation inputs.

        `x` is images, or `{"images": ..., "prompts": ...}` with one string
        per image ("" for no prompt). Returns `{"images": uint8,
        "token_ids": int32 (B, L-1), "padding_mask": bool (B, L-1)}`, each
        row `[bos]` + the prompt's word-pieces + `[PAD]`s, with no `[eos]`
        since generation continues after the prompt.
        """
        name = type(self).__name__
        if self._use_tf_workflow():
            raise python_only_error(name)
        length = (sequence_length or self.sequence_length) - 1
        prompts = None
        if isinstance(x, dict):
            x, prompts = x["images"], x.get("prompts")
        with cpu_scope():
            images, unbatched = standardize_images(x, name)
            if prompts is None:
                texts, batched = [""] * images.shape[0], not unbatched
            else:
                texts, batched = standardize_captions(prompts, name)
                self._check_batch(images, unbatched, texts, batched, "prompts")
            images = self._uint8_images(images, unbatched)
        tokenizer = self.tokenizer
        token_ids = np.full((len(texts), length), tokenizer.pad_token_id, "int32")
        for row, ids in zip(token_ids, tokenizer.tokenize(texts)):
            body = [tokenizer.start_token_id, *ids][:length]
            row[: len(body)] = body
        outputs = {
            "token_ids": token_ids,
            "padding_mask": token_ids != tokenizer.pad_token_id,
        }
        if not batched:
            outputs = {key: value[0] for key, value in outputs.items()}
        outputs["images"] = images
        return convert_preprocessing_outputs_python(outputs)

    def generate_postprocess(self, x):
        """Token ids (or the dict `generate` returns) -> caption strings.

        Each row is cut at its first `[eos]`, special tokens are dropped and
        word-pieces are joined ("##" pieces glued to the previous one). One
        row gives a string, a batch a list of strings.
        """
        token_ids = x["token_ids"] if isinstance(x, dict) else x
        rows, batched = canonicalize_python_token_inputs(token_ids)
        end_id = self.tokenizer.end_token_id
        special = set(self.tokenizer.special_token_ids)
        captions = []
        for ids in rows:
            if end_id in ids:
                ids = ids[: ids.index(end_id)]
            ids = [i for i in ids if i not in special]
            captions.append(self.tokenizer.detokenize(ids) if ids else "")
        return captions if batched else captions[0]

    def _check_training_call(self, sample_weight):
        """Refuses what a training call cannot take; returns the class name
        that errors are phrased with."""
        name = type(self).__name__
        if self._use_tf_workflow():
            raise python_only_error(name)
        if sample_weight is not None:
            raise ValueError(
                f"{name} computes sample_weight from the caption padding; "
                "do not pass one."
            )
        return name

    def _split_inputs(self, x, y):
        name = type(self).__name__
        if isinstance(x, dict):
            if set(x) != {"images", "captions"} or y is not None:
                raise ValueError(
                    f"{name} expects x = {{'images': ..., 'captions': ...}} "
                    "and no y, or images as x and captions as y; received x "
                    f"with keys {sorted(x)} and {'no' if y is None else 'a'} y."
                )
            return x["images"], x["captions"]
        if y is None:
            raise ValueError(
                f"{name} needs captions: pass x = {{'images': ..., "
                "'captions': ...}} or (images, captions)."
            )
        return x, y

    def _check_batch(self, images, unbatched, texts, batched, what):
        if unbatched == batched or images.shape[0] != len(texts):
            got_images = "one image" if unbatched else f"{images.shape[0]} images"
            got_texts = f"a list of {len(texts)}" if batched else "a single string"
            raise ValueError(
                f"{type(self).__name__} expects one string of {what} per "
                f"image (a string for one image, a list for a batch); "
                f"received {got_images} and {got_texts}."
            )

    def _uint8_images(self, images, unbatched):
        """Rank-4 checked images -> uint8, resized when there is a converter."""
        if self.image_converter is None:
            images = to_uint8(images)
        else:
            images = self.image_converter(images, normalize=False)
        return images[0] if unbatched else images

    def _tokenize_nonempty(self, texts, batched):
        token_ids = self.tokenizer.tokenize(texts)
        for index, (text, ids) in enumerate(zip(texts, token_ids)):
            if not text.strip() or len(ids) == 0:
                which = f"Caption {index} of the batch" if batched else "The caption"
                raise ValueError(
                    f"{which} is empty (it has no word-pieces): {text!r}. "
                    "Every image needs a caption with at least one "
                    "word-piece; drop or fix this sample."
                )
        return token_ids

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self.sequence_length
        return config
