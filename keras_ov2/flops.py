"""Analytic FLOPs of the OpenVision models, per image.

Why: to state throughput as achieved FLOP/s (a fraction of the machine's
peak), to predict what a keep ratio or a resolution costs before running it,
and to check against the authors' efficiency table.

What is counted: 2 x multiply-accumulates of every matrix product of the
forward pass, i.e. the patch-embedding convolution, the q/k/v/out and MLP
projections, the attention scores (Q K^T) and values (A V) over the full
score matrix (XLA computes masked entries too), the visual projection, the
vocabulary head, the OpenVision v1 projection heads and (optionally) its
contrastive logits. Not counted:
LayerNorm, GELU, softmax, residual adds, the mean pooling, the loss. On
widths of a few hundred these are a few percent of XLA's own count
(see tests/test_flops.py). A training step is counted as 3 x forward (the
backward pass does two products per forward product); it slightly
overcounts, since no gradient is taken with respect to the images. These
are model FLOPs, the basis of MFU: what the backward pass recomputes to
save memory (the vocabulary head's logits under the fused caption loss,
the attention scores of `keras_ov2.layers.lean_gradients`) is executed
but not counted, so XLA's own count of a train step is higher.

The functions take sizes, not model objects, so they also serve for
configurations too large to build; `*_from_config` helpers read a model's
`get_config()` dict. Adding a model: write its forward count from the
building blocks below (`transformer_block_flops`, `dense_flops`).
"""

from keras_ov2.variants import KEEP_RATIO

TRAIN_MULTIPLIER = 3


def dense_flops(tokens, inputs, outputs):
    """A bias-free or biased Dense on `tokens` rows."""
    return 2 * tokens * inputs * outputs


def transformer_block_flops(length, width, intermediate_dim, key_length=None):
    """One pre-norm block on `length` queries over `key_length` keys
    (default: self-attention, the same length).

    q/k/v/out projections 8 S D^2, MLP 4 S D F, scores and values 4 S L D.
    """
    key_length = length if key_length is None else key_length
    projections = 4 * dense_flops(length, width, width)
    mlp = dense_flops(length, width, intermediate_dim) + dense_flops(
        length, intermediate_dim, width
    )
    attention = 2 * (2 * length * key_length * width)
    return projections + mlp + attention


def num_patches(image_size, patch_size):
    """Patch tokens of a square image (VALID convolution: floor)."""
    return (image_size // patch_size) ** 2


def encoder_flops(
    image_size,
    patch_size,
    hidden_dim,
    num_layers,
    intermediate_dim,
    projection_dim=None,
):
    """Forward FLOPs of one image through `OpenVision2Backbone`: patch
    embedding, `num_layers` blocks over N + 1 tokens (CLS included), and
    the OpenVision v1 head when `projection_dim` is set."""
    patches = num_patches(image_size, patch_size)
    flops = dense_flops(patches, patch_size * patch_size * 3, hidden_dim)
    flops += num_layers * transformer_block_flops(
        patches + 1, hidden_dim, intermediate_dim
    )
    if projection_dim:
        flops += dense_flops(1, hidden_dim, projection_dim)
    return flops


def encoder_flops_from_config(config, image_size):
    """`encoder_flops` of an `OpenVision2Backbone.get_config()` dict."""
    return encoder_flops(
        image_size,
        config["patch_size"],
        config["hidden_dim"],
        config["num_layers"],
        config["intermediate_dim"],
        config.get("projection_dim"),
    )


def kept_tokens(patches, keep_ratio):
    """K = int(N * keep_ratio), as `VisualTokenMasking` keeps in training."""
    return int(patches * keep_ratio)


def caption_decoder_flops(
    num_visual,
    visual_dim,
    num_text,
    hidden_dim,
    num_layers,
    intermediate_dim,
    vocabulary_size,
):
    """Forward FLOPs of `OpenVision2TextDecoder` for one sample: visual
    projection, blocks over the [visual; text] sequence, head on the text."""
    flops = dense_flops(num_visual, visual_dim, hidden_dim)
    flops += num_layers * transformer_block_flops(
        num_visual + num_text, hidden_dim, intermediate_dim
    )
    flops += dense_flops(num_text, hidden_dim, vocabulary_size)
    return flops


def captioner_flops(encoder, decoder, image_size, keep_ratio=KEEP_RATIO, sequence_length=128):
    """Forward FLOPs per image of `OpenVision2Captioner` in training, split
    into {"encoder", "decoder", "total"}.

    Args:
        encoder: dict with patch_size, hidden_dim, num_layers,
            intermediate_dim (an `OpenVision2Backbone` config works).
        decoder: dict with hidden_dim, num_layers, intermediate_dim,
            vocabulary_size (an `OpenVision2TextDecoder` config works).
        image_size: square resolution in pixels.
        keep_ratio: fraction of patch tokens the decoder sees (1.0 at
            inference).
        sequence_length: the tokenized caption length; the decoder runs on
            `sequence_length - 1` positions (inputs 0..T-2, targets 1..T-1).
    """
    patches = num_patches(image_size, encoder["patch_size"])
    enc = encoder_flops_from_config(encoder, image_size)
    dec = caption_decoder_flops(
        kept_tokens(patches, keep_ratio),
        encoder["hidden_dim"],
        sequence_length - 1,
        decoder["hidden_dim"],
        decoder["num_layers"],
        decoder["intermediate_dim"],
        decoder["vocabulary_size"],
    )
    return {"encoder": enc, "decoder": dec, "total": enc + dec}


def text_encoder_flops(length, hidden_dim, num_layers, intermediate_dim, projection_dim):
    """Forward FLOPs of one text through `OpenVision1TextEncoder`: blocks
    over its `length` tokens (no mask: every position computed), the head
    on the pooled last token."""
    return num_layers * transformer_block_flops(
        length, hidden_dim, intermediate_dim
    ) + dense_flops(1, hidden_dim, projection_dim)


def clips_flops(
    encoder,
    text_encoder,
    decoder,
    image_size,
    text_length=80,
    num_texts=2,
    contrastive_batch=None,
):
    """Forward FLOPs per image of `OpenVisionCLIPS` (OpenVision v1), split
    into {"encoder", "text_encoder", "decoder", "contrastive", "total"}.

    Args:
        encoder: dict with patch_size, hidden_dim, num_layers,
            intermediate_dim, projection_dim (a backbone config works).
        text_encoder: dict with hidden_dim, num_layers, intermediate_dim
            (an `OpenVision1TextEncoder` config works).
        decoder: dict with hidden_dim, num_layers, intermediate_dim,
            vocabulary_size, num_queries (an `OpenVision1CaptionDecoder`
            config works).
        text_length: token ids per text (80); the decoder's prefix takes
            the web caption's first `text_length - 1` token features.
        num_texts: texts encoded per image: 2 in training (web caption and
            synthetic sentence), 1 for the web caption alone.
        contrastive_batch: batch size B of the (B, B) contrastive logits
            (2 x B x projection_dim per image and text); None: not counted.
    """
    patches = num_patches(image_size, encoder["patch_size"])
    projection = encoder["projection_dim"]
    enc = encoder_flops_from_config(encoder, image_size)
    text = num_texts * text_encoder_flops(
        text_length,
        text_encoder["hidden_dim"],
        text_encoder["num_layers"],
        text_encoder["intermediate_dim"],
        projection,
    )
    width, queries = decoder["hidden_dim"], decoder["num_queries"]
    prefix = patches + text_length - 1
    dec = dense_flops(patches, encoder["hidden_dim"], width)
    dec += dense_flops(text_length - 1, text_encoder["hidden_dim"], width)
    dec += decoder["num_layers"] * transformer_block_flops(
        prefix + queries, width, decoder["intermediate_dim"]
    )
    dec += dense_flops(queries, width, decoder["vocabulary_size"])
    contrastive = 0
    if contrastive_batch:
        contrastive = num_texts * dense_flops(1, projection, contrastive_batch)
    parts = {"encoder": enc, "text_encoder": text, "decoder": dec, "contrastive": contrastive}
    return {**parts, "total": sum(parts.values())}


def train_flops(forward_flops):
    """A training step (forward + backward) as 3 x the forward FLOPs."""
    return TRAIN_MULTIPLIER * forward_flops
