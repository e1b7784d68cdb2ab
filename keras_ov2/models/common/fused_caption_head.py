"""Training with the caption decoder's vocabulary head inside the loss."""

from keras import ops

from keras_ov2.models.common.caption_loss import CaptionLoss
from keras_ov2.models.common.caption_loss import chunked_caption_loss


class FusedCaptionHead:
    """Mixed into a pretraining task whose `self.decoder` ends in a float32
    vocabulary head `decoder.head` (a bias-free Dense) and also offers what
    that head reads, `decoder.text_states` (`OpenVision2Captioner`,
    `OpenVisionCLIPS`); placed before `RecipeCompile` and KerasHub's class.

    `compile` sets `fused_loss`: the `CaptionLoss` that training fuses with
    the head, when the loss is exactly a `CaptionLoss` with a `chunk_size`,
    nothing else reads the logits (no metrics, no `loss_weights`) and the
    head has no bias; None keeps the plain logits path. Within
    `train_step` alone, `fuses(training)` is True: the task's `call` then
    returns the decoder's `text_states` where it returns logits otherwise,
    and `compute_loss` applies the head inside the loss
    (`chunked_caption_loss`): the same loss and gradients, without the
    (B, T, vocabulary) float32 logits and their copies. Evaluation,
    inference and `task(x, training=True)` outside a step see logits.
    """

    fused_loss = None
    _head_in_loss = False  # True only inside a fused `train_step`

    def fuses(self, training):
        """Whether this forward pass stops before the head (and the loss
        applies it): in training, inside a fused `train_step`."""
        return bool(training) and self._head_in_loss

    def train_step(self, *args, **kwargs):
        """Keras' train step, on any backend; with a fused loss, its forward
        pass stops at the decoder's `text_states`. The switch holds for the
        step alone (custom loops and FLOP counts still see logits)."""
        self._head_in_loss = self.fused_loss is not None
        try:
            return super().train_step(*args, **kwargs)
        finally:
            self._head_in_loss = False

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The caption loss of `y_pred`: logits, or inside a fused step the
        decoder's text states, which meet the head in `chunked_caption_loss`."""
        if not self.fuses(training):
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        loss = chunked_caption_loss(
            y_pred,
            self.decoder.head.kernel,
            y,
            sample_weight,
            self.fused_loss.weight,
            self.fused_loss.chunk_size,
        )
        return loss + ops.sum(self.losses) if self.losses else loss

    def compile(self, *args, **kwargs):
        """The next class's `compile`, then the choice of `fused_loss`
        (see the class docstring)."""
        super().compile(*args, **kwargs)
        loss = self.loss
        fusable = (
            type(loss) is CaptionLoss
            and loss.chunk_size is not None
            # `chunked_caption_loss` multiplies by the kernel alone.
            and not self.decoder.head.use_bias
        )
        reads_logits = any(kwargs.get(k) for k in ("metrics", "weighted_metrics", "loss_weights"))
        self.fused_loss = loss if fusable and not reads_logits else None
