"""AdamW that sees dense gradients on TensorFlow, as it does on JAX and PyTorch."""

import keras


def densify(gradients):
    """Sums a TensorFlow `IndexedSlices` gradient's repeated rows.

    On TensorFlow an Embedding's gradient is a `tf.IndexedSlices` with one
    row per looked-up token, repeated tokens not summed. Keras 3.15's Adam
    computes `ops.square(gradient)` on it, which squares each row of the
    slices (`sparse.elementwise_unary`) before the subtraction from the
    velocity densifies them, so a token seen twice in a batch gets
    g1² + g2² instead of (g1 + g2)² in its second moment. `convert_to_tensor`
    sums the rows first, which is the gradient JAX and PyTorch see.
    """
    if keras.backend.backend() != "tensorflow":
        return gradients
    import tensorflow as tf

    return [
        tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
        for g in gradients
    ]


@keras.saving.register_keras_serializable(package="keras_ov2")
class DenseGradientAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with `densify`d gradients: the same updates
    on every backend, with the same variables (checkpoints unchanged).

    `apply` is where the TensorFlow trainer, gradient accumulation and a
    wrapping `LossScaleOptimizer` all hand this optimizer its gradients.
    """

    def __init__(self, *args, name="adam_w", **kwargs):
        super().__init__(*args, name=name, **kwargs)  # AdamW's variable paths

    def apply(self, grads, trainable_variables=None):
        return super().apply(densify(grads), trainable_variables)
