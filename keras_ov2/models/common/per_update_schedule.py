"""A learning-rate schedule counted in optimizer updates, for gradient accumulation."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_ov2")
class PerUpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` evaluated at the update count, not the batch count.

    With `gradient_accumulation_steps=N`, Keras 3.15 calls a schedule with
    the number of batches seen (`optimizer._iterations`), N per update: the
    warmup and the decay would end N times too early. This divides it back.
    """

    def __init__(self, schedule, accumulation_steps):
        self.schedule = schedule
        self.accumulation_steps = accumulation_steps

    def __call__(self, step):
        return self.schedule(ops.floor_divide(step, self.accumulation_steps))

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "accumulation_steps": self.accumulation_steps,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)
