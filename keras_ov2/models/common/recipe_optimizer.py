"""The authors' optimizer and the `compile` every pretraining task shares."""

import keras

from keras_ov2.models.common.caption_loss import CaptionLoss
from keras_ov2.models.common.dense_gradients import DenseGradientAdamW
from keras_ov2.models.common.per_update_schedule import PerUpdateSchedule


def default_warmup_steps(total_steps):
    """The one default warmup, wherever steps are set (`compile`, stages,
    `ov2 pretrain --stages`): 1/250 of the updates, the authors' 40 of their
    10,000 epochs at 84 px (1,563 of 390,981 steps). Their 224 px stage
    warms up for 1,563 of 62,556 steps: give such warmups explicitly."""
    return max(1, total_steps // 250)


def recipe_optimizer(
    model,
    learning_rate=1e-3,
    total_steps=10_000,
    warmup_steps=None,
    weight_decay=0.2,
    gradient_accumulation_steps=None,
):
    """AdamW (0.9, 0.95, eps 1e-8), decoupled weight decay (multiplied by the
    learning rate) on `model`'s kernels only, linear warmup (default
    `default_warmup_steps`) then cosine decay to 0; no gradient clipping.

    With `gradient_accumulation_steps` N (>= 2) each update averages N
    batches; `total_steps` and `warmup_steps` count updates.
    """
    if warmup_steps is None:
        warmup_steps = default_warmup_steps(total_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=0.0,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )
    if gradient_accumulation_steps:
        schedule = PerUpdateSchedule(schedule, gradient_accumulation_steps)
    # Dense gradients: TensorFlow's sparse Embedding gradients would give
    # tokens repeated in a batch other Adam updates than JAX's and PyTorch's.
    optimizer = DenseGradientAdamW(
        learning_rate=schedule,
        beta_1=0.9,
        beta_2=0.95,
        epsilon=1e-8,
        weight_decay=weight_decay,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    optimizer.exclude_from_weight_decay(
        var_list=[
            v for v in model.trainable_variables if not v.path.endswith("kernel")
        ]
    )
    return optimizer


class RecipeCompile:
    """Mixed into keras_ov2's pretraining tasks, before KerasHub's class:
    `compile()` defaults to the authors' recipe. A task says which loss the
    recipe uses by overriding `recipe_loss`."""

    def recipe_loss(self):
        """The loss `compile(loss="auto")` uses: the caption loss (weight 2)."""
        return CaptionLoss()

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        learning_rate=1e-3,
        total_steps=10_000,
        warmup_steps=None,
        weight_decay=0.2,
        gradient_accumulation_steps=None,
        **kwargs,
    ):
        """Defaults to the authors' recipe: AdamW (0.9, 0.95, eps 1e-8),
        decoupled weight decay (multiplied by the learning rate) on kernels
        only, linear warmup (`warmup_steps`, default `default_warmup_steps`)
        then cosine decay to 0 over `total_steps`, no gradient clipping (see
        `recipe_optimizer`), and the task's `recipe_loss`. Calling it again
        restarts the optimizer and the schedule.

        `gradient_accumulation_steps` N (>= 2): each update averages the
        gradients of N batches, close to one N-times larger batch in the
        memory of one. `total_steps` and `warmup_steps` count updates (fit
        N times as many batches). Other keyword arguments go to KerasHub's
        `compile`.
        """
        if optimizer == "auto":
            optimizer = recipe_optimizer(
                self,
                learning_rate,
                total_steps,
                warmup_steps,
                weight_decay,
                gradient_accumulation_steps,
            )
        if loss == "auto":
            loss = self.recipe_loss()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
