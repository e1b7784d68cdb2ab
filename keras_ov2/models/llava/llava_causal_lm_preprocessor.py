"""Images, prompts and responses -> the LLaVA-style model's training triple."""

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils.tensor_utils import convert_preprocessing_outputs_python
from keras_hub.src.utils.tensor_utils import strip_to_ragged_python

from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter
from keras_ov2.models.common.openvision_image_converter import cpu_scope
from keras_ov2.models.common.openvision_image_converter import python_only_error
from keras_ov2.models.common.openvision_image_converter import standardize_images
from keras_ov2.models.llava.llava_backbone import OpenVisionLLaVABackbone
from keras_ov2.models.openvision2.openvision2_captioner_preprocessor import (
    standardize_captions,
)


def pack(prompt_ids, response_ids, length, start_id, end_id, pad_id):
    """Rows `[start] prompt response [end]`, padded with `pad_id` or cut to
    `length` ids; with `response_ids=None` rows end after the prompt (no
    `[end]`: generation continues there). Returns int32 token ids, the bool
    padding mask and the bool response mask (response ids and `[end]`)."""
    shape = (len(prompt_ids), length)
    token_ids = np.full(shape, pad_id, dtype="int32")
    padding_mask = np.zeros(shape, dtype=bool)
    response_mask = np.zeros(shape, dtype=bool)
    responses = [None] * len(prompt_ids) if response_ids is None else response_ids
    for row, (prompt, response) in enumerate(zip(prompt_ids, responses)):
        answer = [] if response is None else [*response, end_id]
        ids = [start_id, *prompt, *answer][:length]
        token_ids[row, : len(ids)] = ids
        padding_mask[row, : len(ids)] = True
        response_mask[row, 1 + len(prompt) : len(ids)] = True
    return token_ids, padding_mask, response_mask


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVisionLLaVACausalLMPreprocessor(keras_hub.models.Preprocessor):
    """Turns `{"images", "prompts", "responses"}` into `(x, y, sample_weight)`
    for `OpenVisionLLaVACausalLM`, as KerasHub's causal LM preprocessors do
    (PaliGemma's in particular): labels are the tokens shifted by one, and
    the loss is on the answer only.

    Each row `[start] prompt response [end] [pad]...` is padded or cut to
    `sequence_length + 1` ids (a cut answer loses its `[end]`); then
    - `x["token_ids"]`, `x["padding_mask"]`: the first `sequence_length`;
    - `x["images"]`: the images through the image converter (resized,
      ImageNet-normalised floats), as given without one;
    - `y`: the last `sequence_length` ids (the next token of each position);
    - `sample_weight`: 1.0 where `y` is a response token or the `[end]`,
      0.0 on the start, the prompt and the pads.

    Prompts and responses are joined as they are: put any chat template or
    separator into the prompts. Takes one (H, W, 3) image with strings, or
    a (B, H, W, 3) batch with lists of B strings. Runs eagerly and in Grain
    workers (NumPy out), not inside `tf.data`.

    Args:
        tokenizer: a KerasHub tokenizer with start, end and pad tokens, the
            language model's (e.g. `OpenVision2Tokenizer`).
        image_converter: an `OpenVision2ImageConverter` or None.
        sequence_length: int, text positions the model sees (image tokens
            come on top).
    """

    backbone_cls = OpenVisionLLaVABackbone
    tokenizer_cls = keras_hub.tokenizers.Tokenizer
    image_converter_cls = OpenVision2ImageConverter

    def __init__(self, tokenizer, image_converter=None, sequence_length=64, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = sequence_length

    def call(self, x, y=None, sample_weight=None):
        name = type(self).__name__
        if self._use_tf_workflow():
            raise python_only_error(name)
        if not isinstance(x, dict) or set(x) != {"images", "prompts", "responses"}:
            raise ValueError(
                f"{name} expects x = {{'images': ..., 'prompts': ..., "
                f"'responses': ...}}; received {x!r:.200}."
            )
        if y is not None or sample_weight is not None:
            raise ValueError(
                f"{name} makes y and sample_weight from the responses; do not "
                "pass them."
            )
        images, unbatched = self._images(x["images"])
        prompts = self._texts(x["prompts"], images.shape[0], "prompts")
        responses = self._texts(x["responses"], images.shape[0], "responses")
        token_ids, padding_mask, response_mask = pack(
            self.tokenizer.tokenize(prompts),
            self.tokenizer.tokenize(responses),
            self.sequence_length + 1,
            *self._special_ids(),
        )
        outputs = (
            {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]},
            token_ids[:, 1:],
            response_mask[:, 1:].astype("float32"),
        )
        if unbatched:
            outputs = keras.tree.map_structure(lambda a: a[0], outputs)
            images = images[0]
        outputs[0]["images"] = images
        return convert_preprocessing_outputs_python(outputs)

    def generate_preprocess(self, x, sequence_length=None):
        """`{"images", "prompts"}` -> `{"images", "token_ids",
        "padding_mask"}`, always batched: rows `[start] prompt [pad]...` of
        `sequence_length` ids (the model's unless given: `generate`'s
        `max_length`, text positions only)."""
        name = type(self).__name__
        if self._use_tf_workflow():
            raise python_only_error(name)
        images, _ = self._images(x["images"])
        prompts = self._texts(x["prompts"], images.shape[0], "prompts")
        token_ids, padding_mask, _ = pack(
            self.tokenizer.tokenize(prompts),
            None,
            sequence_length or self.sequence_length,
            *self._special_ids(),
        )
        outputs = {"images": images, "token_ids": token_ids, "padding_mask": padding_mask}
        return convert_preprocessing_outputs_python(outputs)

    def generate_postprocess(self, x):
        """Generated `{"token_ids", "padding_mask"}` -> one string per row:
        prompt + answer (see `generate(strip_prompt=True)` for the answer
        alone), special tokens dropped."""
        rows = strip_to_ragged_python(
            x["token_ids"], x["padding_mask"], self.tokenizer.special_token_ids
        )
        return [self.tokenizer.detokenize(ids) if ids else "" for ids in rows]

    def _images(self, images):
        """Rank-4 images, converted when there is a converter, and whether
        one (H, W, 3) image came in."""
        with cpu_scope():
            images, unbatched = standardize_images(images, type(self).__name__)
            if self.image_converter is not None:
                images = self.image_converter(images, normalize=True)
        return images, unbatched

    def _texts(self, texts, num_images, what):
        texts, _ = standardize_captions(texts, type(self).__name__)
        if len(texts) != num_images:
            raise ValueError(
                f"{type(self).__name__} expects one string of {what} per "
                f"image; received {num_images} image(s) and {len(texts)} {what}."
            )
        return texts

    def _special_ids(self):
        tokenizer = self.tokenizer
        return tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self.sequence_length
        return config
