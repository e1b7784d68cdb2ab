"""The LLaVA-style task: image + prompt in, answer out."""

import keras
import keras_hub
from keras import ops
from keras_hub.src.utils.tensor_utils import any_equal

from keras_ov2.models.llava.llava_backbone import OpenVisionLLaVABackbone
from keras_ov2.models.llava.llava_causal_lm_preprocessor import (
    OpenVisionLLaVACausalLMPreprocessor,
)
from keras_ov2.models.presets import PresetLoading


def generated_padding_mask(token_ids, prompt_mask, stop_token_ids):
    """True up to each row's first generated stop token (included), False
    after it; all True without stop tokens."""
    if stop_token_ids is None:
        return ops.ones_like(token_ids, dtype="bool")
    ends = any_equal(token_ids, stop_token_ids, ~ops.cast(prompt_mask, "bool"))
    ends = ops.cast(ends, "int32")
    return ops.logical_not(ops.cast(ops.cumsum(ends, axis=-1) - ends, "bool"))


@keras.saving.register_keras_serializable(package="keras_ov2")
class OpenVisionLLaVACausalLM(PresetLoading, keras_hub.models.CausalLM):
    """A LLaVA-style vision-language model: answers prompts about images.

    `OpenVisionLLaVABackbone` (OpenVision encoder -> projector -> any
    KerasHub causal LM, image tokens first) + the LM's token embedding,
    reversed, as the vocabulary head. Inputs are the preprocessor's
    `{"images", "token_ids", "padding_mask"}`; outputs are next-token logits
    at the text positions (B, T, vocabulary).

    `fit` on `{"images", "prompts", "responses"}` trains the projector and
    the language model (and the encoder with `freeze_vision=False`), with
    the loss on the responses only. `generate({"images", "prompts"},
    max_length=...)` answers with the `keras_hub.samplers` sampler set by
    `compile` (greedy by default). It keeps no KV cache: each new token runs
    the whole [image; text] sequence through the language model again,
    which is simple and exact but costs O(length^2): fine for small models
    and short answers. `max_length` counts text tokens (prompt + answer).

    `compile()` defaults to KerasHub's causal LM setup (Adam(2e-5),
    weighted accuracy), with greedy sampling and the cross-entropy averaged
    over the response tokens.

    Args:
        backbone: an `OpenVisionLLaVABackbone`.
        preprocessor: an `OpenVisionLLaVACausalLMPreprocessor` or None.

    Example:
    ```python
    import keras_hub
    import numpy as np
    import keras_ov2

    tokenizer = keras_ov2.OpenVision2Tokenizer()
    llava = keras_ov2.OpenVisionLLaVACausalLM(
        backbone=keras_ov2.OpenVisionLLaVABackbone(
            vision_encoder=keras_ov2.OpenVision2Backbone(
                patch_size=8, hidden_dim=32, num_layers=3, num_heads=2,
                intermediate_dim=64,
            ),
            language_backbone=keras_hub.models.LlamaBackbone(
                vocabulary_size=tokenizer.vocabulary_size(), num_layers=2,
                num_query_heads=2, num_key_value_heads=1, hidden_dim=64,
                intermediate_dim=128,
            ),
        ),
        preprocessor=keras_ov2.OpenVisionLLaVACausalLMPreprocessor(
            tokenizer,
            keras_ov2.OpenVision2ImageConverter(image_size=(32, 32)),
            sequence_length=16,
        ),
    )
    images = np.random.randint(0, 256, size=(2, 32, 32, 3), dtype="uint8")
    llava.fit(
        {"images": images, "prompts": ["what is it?"] * 2,
         "responses": ["a cat", "a dog"]},
        batch_size=2,
    )
    llava.generate({"images": images, "prompts": ["what is it?"] * 2}, max_length=16)
    ```
    """

    backbone_cls = OpenVisionLLaVABackbone
    preprocessor_cls = OpenVisionLLaVACausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional Model ===
        inputs = backbone.input
        logits = backbone.token_embedding(backbone(inputs), reverse=True)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="greedy",
        **kwargs,
    ):
        """`keras_hub.models.CausalLM.compile`, with greedy decoding and,
        for `loss="auto"`, the cross-entropy averaged over the weighted
        (response) tokens, as LLaVA's: KerasHub's default would divide by
        every position, so the loss would shrink as the padding grows."""
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            sampler=sampler,
            **kwargs,
        )

    def generate_step(self, inputs, stop_token_ids=None):
        """One compiled generation pass over a batch. The images are encoded
        once; each step reruns the language model on [image; tokens so far]
        and reads the logits at the last filled position. Causal attention
        makes the pads ahead of it irrelevant, so the text mask is all ones.
        Prompts may differ in length: decoding starts after the shortest,
        and the sampler keeps each row's own prompt tokens."""
        token_ids, padding_mask = inputs["token_ids"], inputs["padding_mask"]
        image_tokens = self.backbone.embed_images(inputs["images"])

        def next(prompt, cache, index):
            states = self.backbone.language_model(
                image_tokens, prompt, ops.ones_like(prompt)
            )
            state = ops.take(states, index - 1, axis=1)
            logits = self.backbone.token_embedding(state, reverse=True)
            return logits, state, cache

        token_ids = self.sampler(
            next=next,
            prompt=token_ids,
            index=ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=-1)),
            mask=padding_mask,
            stop_token_ids=stop_token_ids,
            model=self,
        )
        padding_mask = generated_padding_mask(token_ids, padding_mask, stop_token_ids)
        return {"token_ids": token_ids, "padding_mask": padding_mask}
