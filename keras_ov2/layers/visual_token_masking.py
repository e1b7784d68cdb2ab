"""OpenVision 2's visual token masking: keep a random K of the N tokens."""

import keras
from keras import ops

from keras_ov2.variants import KEEP_RATIO


def check_keep_ratio(keep_ratio):
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1]; received {keep_ratio}.")


@keras.saving.register_keras_serializable(package="keras_ov2")
class VisualTokenMasking(keras.layers.Layer):
    """Keeps K = int(N * keep_ratio) patch tokens per sample, in training only.

    Each sample draws its own subset, without replacement, in random order
    (not sorted: the authors keep the order `jax.random.choice` gives, which
    matters under the fully causal decoder mask). At inference, or with
    `keep_ratio=1.0`, the tokens pass through unchanged. Randomness comes
    from a `keras.random.SeedGenerator`, so a fixed `seed` reproduces the
    subsets and each step draws new ones, under `jit` on every backend.
    `draw` gives the subsets alone, from a caller's own seed: the
    captioner's masked inference view uses it, so there is one rule.

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

    def __init__(self, keep_ratio=KEEP_RATIO, seed=None, **kwargs):
        super().__init__(**kwargs)
        check_keep_ratio(keep_ratio)
        self.keep_ratio = keep_ratio
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def kept_count(self, num_tokens, keep_ratio=None):
        """K = int(N * keep_ratio), at least 1; N may be a symbolic (TF) size."""
        keep_ratio = self.keep_ratio if keep_ratio is None else keep_ratio
        if isinstance(num_tokens, int):
            return max(1, int(num_tokens * keep_ratio))
        kept = ops.floor(ops.cast(num_tokens, "float64") * keep_ratio)
        return ops.maximum(1, ops.cast(kept, "int32"))

    def draw(self, batch, num_tokens, seed=None, keep_ratio=None):
        """Indices (batch, K) of the tokens kept, one subset per row.

        The one definition of the subset, shared by training (`call`) and
        the captioner's masked inference view, which passes its own `seed`
        (an int or `SeedGenerator`) and `keep_ratio` so that diagnostics
        leave the training stream untouched. `keep_ratio=1.0` keeps every
        token in place, as `call` does.
        """
        keep_ratio = self.keep_ratio if keep_ratio is None else keep_ratio
        check_keep_ratio(keep_ratio)
        if keep_ratio == 1.0:
            return ops.tile(ops.arange(num_tokens, dtype="int32")[None], (batch, 1))
        noise = keras.random.uniform(
            (batch, num_tokens), seed=self.seed_generator if seed is None else seed
        )
        # The first K indices of a random permutation: a uniform subset
        # without replacement, in random order.
        order = ops.argsort(noise, axis=1)[:, : self.kept_count(num_tokens, keep_ratio)]
        return ops.cast(order, "int32")

    @staticmethod
    def keep(tokens, indices):
        """tokens (B, N, D), indices (B, K) -> the kept tokens (B, K, D)."""
        return ops.take_along_axis(tokens, indices[:, :, None], axis=1)

    def call(self, tokens, training=None):
        if not training or self.keep_ratio == 1.0:
            return tokens
        batch, num_tokens = ops.shape(tokens)[0], ops.shape(tokens)[1]
        return self.keep(tokens, self.draw(batch, num_tokens))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(keep_ratio=self.keep_ratio, seed=self.seed)
        return config
