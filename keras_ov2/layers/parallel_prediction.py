"""CapPa-style parallel prediction: some rows predict from masked inputs."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class ParallelPredictionMasking(keras.layers.Layer):
    """In training, picks each row with probability `fraction` and replaces
    its decoder inputs by `mask_token_id` (CapPa's parallel prediction: the
    row must predict every caption token from the image alone). Returns the
    new token ids and the (B,) bool flags; the decoder drops the causal mask
    on flagged rows. At inference nothing changes and the flags are False.

    Example:
    ```python
    import numpy as np
    import keras_ov2

    token_ids = np.random.randint(1000, 2000, size=(4, 16)).astype("int32")
    masking = keras_ov2.layers.ParallelPredictionMasking(
        fraction=0.25, mask_token_id=103, seed=0
    )
    token_ids, parallel = masking(token_ids, training=True)
    parallel  # (4,) bool: the rows whose inputs became all 103 ([MASK])
    ```
    """

    def __init__(self, fraction, mask_token_id, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1]; received {fraction}.")
        self.fraction = fraction
        self.mask_token_id = mask_token_id
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, token_ids, training=None):
        batch = ops.shape(token_ids)[0]
        if not training:
            return token_ids, ops.zeros((batch,), "bool")
        draw = keras.random.uniform((batch,), seed=self.seed_generator)
        parallel = draw < self.fraction
        masked = ops.full_like(token_ids, self.mask_token_id)
        return ops.where(parallel[:, None], masked, token_ids), parallel

    def compute_output_spec(self, token_ids, training=None):
        flags = keras.KerasTensor((token_ids.shape[0],), dtype="bool")
        return keras.KerasTensor(token_ids.shape, dtype=token_ids.dtype), flags

    def get_config(self):
        config = super().get_config()
        config.update(
            fraction=self.fraction,
            mask_token_id=self.mask_token_id,
            seed=self.seed,
        )
        return config
