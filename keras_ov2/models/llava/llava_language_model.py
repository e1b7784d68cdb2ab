"""Any KerasHub causal LM backbone, run on [prefix embeddings; token embeddings]."""

import keras
from keras import ops

SUPPORTED = (
    "KerasHub decoder-only backbones whose graph goes token_ids -> "
    "token_embedding (a ReversibleEmbedding) -> ... -> one sequence output, "
    "with padding_mask as the only other input: GPT2Backbone, GemmaBackbone, "
    "Gemma3Backbone (text only), LlamaBackbone, MistralBackbone, QwenBackbone, "
    "Phi3Backbone, GPTNeoXBackbone, BloomBackbone, FalconBackbone"
)


def embeddings_to_states(language_backbone):
    """The backbone's own graph from its token embeddings on, as a model
    (embeddings, padding_mask) -> sequence output. Keras clones the graph
    nodes between these tensors, so the layers (and weights) are the
    backbone's, and whatever follows the lookup (GPT-2's learned positions,
    Gemma's sqrt(hidden_dim) scaling) stays in."""
    name = type(language_backbone).__name__
    try:
        token_embedding = language_backbone.token_embedding
        if not isinstance(token_embedding, keras.layers.ReversibleEmbedding):
            raise TypeError("its token_embedding is no ReversibleEmbedding")
        inputs = [token_embedding.output, language_backbone.input["padding_mask"]]
        if not isinstance(language_backbone.output, keras.KerasTensor):
            raise TypeError("its output is not one sequence tensor")
        return keras.Model(inputs, language_backbone.output)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{name} cannot be the language model of a LLaVA-style model "
            f"({error}). Supported: {SUPPORTED}."
        ) from error


class PrefixedLanguageModel(keras.layers.Layer):
    """Runs `language_backbone` on [prefix; embedded token_ids] and returns
    its final states at the token positions (B, T, hidden_dim).

    The prefix (here: projected image tokens) is always attended: its
    padding mask is ones, and the LM's causal mask covers the whole
    sequence. The prefix enters where the token embeddings would, so a
    Gemma backbone multiplies it by sqrt(hidden_dim) as it does its word
    embeddings (a projector in front learns that scale). Not serialized on
    its own: `OpenVisionLLaVABackbone` rebuilds it from its config.
    """

    def __init__(self, language_backbone, **kwargs):
        kwargs.setdefault("dtype", language_backbone.dtype_policy)
        super().__init__(**kwargs)
        self.body = embeddings_to_states(language_backbone)
        self.language_backbone = language_backbone
        # Set only by backbones with learned positions (GPT-2, OPT, ...).
        self.max_sequence_length = getattr(language_backbone, "max_sequence_length", None)

    def call(self, prefix, token_ids, padding_mask):
        self._check_length(prefix, token_ids)
        tokens = self.language_backbone.token_embedding(token_ids)
        embeddings = ops.concatenate([ops.cast(prefix, tokens.dtype), tokens], axis=1)
        prefix_mask = ops.ones(ops.shape(prefix)[:2], dtype="int32")
        mask = ops.concatenate([prefix_mask, ops.cast(padding_mask, "int32")], axis=1)
        states = self.body([embeddings, mask])
        return states[:, ops.shape(prefix)[1] :]

    def _check_length(self, prefix, token_ids):
        length = prefix.shape[1], token_ids.shape[1]
        if self.max_sequence_length is None or None in length:
            return
        if sum(length) > self.max_sequence_length:
            raise ValueError(
                f"{length[0]} image tokens + {length[1]} text tokens = "
                f"{sum(length)} positions, more than the language model's "
                f"max_sequence_length ({self.max_sequence_length}). Use "
                "smaller images, a shorter sequence_length or a language "
                "backbone with a larger max_sequence_length."
            )

    def compute_output_spec(self, prefix, token_ids, padding_mask):
        output = self.body.output
        return keras.KerasTensor((*token_ids.shape, output.shape[-1]), output.dtype)
