"""OpenVision 2's visual token masking: keep a random K of the N tokens."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class VisualTokenMasking(keras.layers.Layer):
    """Keeps K = int(N * keep_ratio) patch tokens per sample, in training only.

    Each sample draws its own subset, without replacement, in random order
    (not sorted: the authors keep the order `jax.random.choice` gives, which
    matters under the fully causal decoder mask). At inference, or with
    `keep_ratio=1.0`, the tokens pass through unchanged. Randomness comes
    from a `keras.random.SeedGenerator`, so a fixed `seed` reproduces the
    subsets and each step draws new ones, under `jit` on every backend.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    tokens = np.random.normal(size=(2, 36, 192)).astype("float32")
    masking = keras_ov2.layers.VisualTokenMasking(keep_ratio=0.35, seed=0)
    masking(tokens, training=True)  # (2, 12, 192): int(36 * 0.35) per sample
    masking(tokens)  # (2, 36, 192): inference keeps every token
    ```
    """

    def __init__(self, keep_ratio=0.35, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(
                f"keep_ratio must be in (0, 1]; received {keep_ratio}."
            )
        self.keep_ratio = keep_ratio
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def kept_count(self, num_tokens):
        """K = int(N * keep_ratio), at least 1; N may be a symbolic (TF) size."""
        if isinstance(num_tokens, int):
            return max(1, int(num_tokens * self.keep_ratio))
        kept = ops.floor(ops.cast(num_tokens, "float64") * self.keep_ratio)
        return ops.maximum(1, ops.cast(kept, "int32"))

    def call(self, tokens, training=None):
        if not training or self.keep_ratio == 1.0:
            return tokens
        batch, num_tokens = ops.shape(tokens)[0], ops.shape(tokens)[1]
        noise = keras.random.uniform(
            (batch, num_tokens), seed=self.seed_generator
        )
        # The first K indices of a random permutation: a uniform subset
        # without replacement, in random order.
        order = ops.argsort(noise, axis=1)[:, : self.kept_count(num_tokens)]
        return ops.take_along_axis(tokens, order[:, :, None], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(keep_ratio=self.keep_ratio, seed=self.seed)
        return config
