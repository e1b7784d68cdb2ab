"""CLIP-style similarity logits with a learnable temperature."""

import math

import keras
from keras import ops


def l2_normalize(embeddings):
    """`z / (||z|| + 1e-8)` along the last axis, in float32 (the authors'
    formula; the epsilon keeps an all-zero row finite)."""
    embeddings = ops.cast(embeddings, "float32")
    norm = ops.sqrt(ops.sum(ops.square(embeddings), axis=-1, keepdims=True))
    return embeddings / (norm + 1e-8)


@keras.saving.register_keras_serializable(package="keras_ov2")
class ContrastiveLogits(keras.layers.Layer):
    """(B, E) images, (C, E) texts -> (B, C) `exp(t) * cos(image, text)`.

    `t` ("temperature", shape (1,)) starts at log(1/0.07), so the scale is
    about 14.3; it is not clamped and has no bias, as in OpenVision v1. Runs
    in float32 whatever the policy: the logits feed a softmax over the batch.
    """

    def __init__(self, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def build(self, images_shape=None, texts_shape=None):
        self.temperature = self.add_weight(
            shape=(1,),
            initializer=keras.initializers.Constant(math.log(1 / 0.07)),
            name="temperature",
        )

    def call(self, images, texts):
        similarity = ops.matmul(l2_normalize(images), ops.transpose(l2_normalize(texts)))
        return ops.exp(self.temperature[0]) * similarity

    def compute_output_shape(self, images_shape, texts_shape):
        return (images_shape[0], texts_shape[0])
