"""OpenVision v1's dual softmax contrastive loss (CLIPS)."""

from keras import ops


def contrastive_loss(logits):
    """`0.5 * (CE image->text + CE text->image)` of (B, B) logits whose
    diagonal holds the matching pairs, averaged over the batch, in float32."""
    logits = ops.cast(logits, "float32")
    image_to_text = -ops.diagonal(ops.log_softmax(logits, axis=1))
    text_to_image = -ops.diagonal(ops.log_softmax(logits, axis=0))
    return 0.5 * (ops.mean(image_to_text) + ops.mean(text_to_image))


def dual_contrastive_loss(web_logits, sentence_logits):
    """Mean of the image<->web-caption and image<->synthetic-sentence losses
    (the authors' `clip_loss`)."""
    return 0.5 * (contrastive_loss(web_logits) + contrastive_loss(sentence_logits))
