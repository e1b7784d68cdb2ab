"""The OpenVision 2 caption loss: a token-weighted cross-entropy."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class CaptionLoss(keras.losses.Loss):
    """`weight * sum(nll * w) / sum(w)` over every target token of the batch.

    `w` is the preprocessor's sample weight (1 on word-pieces and `[eos]`, 0
    on pads and `[CLS]`), so long captions weigh more than short ones: a
    token-level mean, not a mean of per-caption means. No label smoothing.
    `weight` is the authors' `coca_caption_loss_weight` (2).
    """

    def __init__(self, weight=2.0, name="caption_loss", **kwargs):
        super().__init__(name=name, reduction="mean_with_sample_weight", **kwargs)
        self.weight = weight

    def call(self, y_true, y_pred):
        nll = keras.losses.sparse_categorical_crossentropy(
            y_true, ops.cast(y_pred, "float32"), from_logits=True
        )
        return self.weight * nll

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)
        config["weight"] = self.weight
        return config
