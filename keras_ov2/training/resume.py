"""Checkpointing a staged `pretrain` run: where it resumes, and the callback
that saves it every N steps and at the end of each stage."""

import json
import time

import keras

from keras_ov2.training import checkpoint
from keras_ov2.training.data_position import TrackedBatches

# Config entries that do not change what a checkpoint holds.
IGNORED_CONFIG = ("name", "dtype", "build_config", "preprocessor", "trainable")


def config_leaves(config, prefix=""):
    """{"backbone.config.hidden_dim": 32, ...}, JSON values, IGNORED_CONFIG left out."""
    leaves = {}
    for key, value in config.items():
        if key in IGNORED_CONFIG:
            continue
        if isinstance(value, dict):
            leaves.update(config_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return leaves


def check_same(path, what, saved, current, advice):
    """A CheckpointError naming every entry that differs."""
    differences = [
        f"{key} is {saved.get(key, '(absent)')!r} there, {current.get(key, '(absent)')!r} here"
        for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)
    ]
    if differences:
        raise checkpoint.CheckpointError(
            f"The checkpoint {path} is of another {what}: {'; '.join(differences[:6])}"
            f"{'; ...' if len(differences) > 6 else ''}. {advice}"
        )


class RunCheckpoints:
    """The checkpoints of one staged run, in `directory`.

    `run`: JSON-serializable facts a resumed run must share with the saved
    one (stages, seed, caption field, ...): a checkpoint of another run or
    model is refused, naming what differs, since resuming it would not give
    the run that was asked for. `stage_steps`: steps of each stage.
    `directory` None turns checkpointing off (nothing resumed or saved).
    """

    def __init__(self, directory, every, run, stage_steps, keep=3, print_fn=print):
        if every is not None and every < 1:
            raise ValueError(f"Checkpoint every must be a positive number of steps; got {every}.")
        self.directory, self.every, self.keep = directory, every, keep
        self.run, self.stage_steps, self.print_fn = run, list(stage_steps), print_fn
        self.path, self.stage, self.stage_step = None, 0, 0
        self.data_state, self.losses = None, []

    def resume(self, model):
        """Restores `model`'s variables from the latest checkpoint, if there
        is one, and remembers where it stopped; returns its folder or None."""
        path = self.directory and checkpoint.latest_checkpoint(self.directory)
        if not path:
            return None
        state, self.data_state = checkpoint.read_state(path)
        advice = "Resume with the options of the saved run, or use another checkpoint folder."
        check_same(path, "run", state["run"], self.run, advice)
        check_same(path, "model", state["model"], config_leaves(model.get_config()), advice)
        checkpoint.restore_model(path, model)
        self.path, self.stage, self.stage_step = path, state["stage"], state["stage_step"]
        self.losses = [tuple(item) for item in state["losses"]]
        return path

    def steps_done(self, stage):
        """Steps of `stage` the checkpoint has already trained."""
        if stage < self.stage:
            return self.stage_steps[stage]
        return self.stage_step if stage == self.stage else 0

    def start_stage(self, stage, model, dataset):
        """`dataset` resumed where the checkpoint left it (a `TrackedBatches`);
        mid-stage, also the optimizer, so the learning-rate schedule goes on
        from the saved step. Call it inside the distribution's scope."""
        if self.directory is None:
            return dataset
        done = self.steps_done(stage)
        if done:
            checkpoint.restore_optimizer(self.path, model)
        return TrackedBatches(dataset, self.data_state if done else None, done)

    def callback(self, stage, batches, history):
        """A Keras callback saving `stage` (None when checkpointing is off);
        `history()` gives the loss history."""
        if self.directory is None:
            return None
        return SaveEvery(self, stage, batches, history)

    def save(self, model, stage, stage_step, data_state, losses):
        step = sum(self.stage_steps[:stage]) + stage_step
        state = dict(stage=stage, stage_step=stage_step, run=self.run, losses=losses,
                     model=config_leaves(model.get_config()))
        return checkpoint.save_checkpoint(self.directory, step, model, state, data_state,
                                          self.keep)


class SaveEvery(keras.callbacks.Callback):
    """Saves every `checkpoints.every` steps of the stage and at its last step."""

    def __init__(self, checkpoints, stage, batches, history):
        super().__init__()
        self.checkpoints, self.stage, self.batches = checkpoints, stage, batches
        self.history = history

    def on_train_batch_end(self, batch, logs=None):
        step = self.batches.start_step + batch + 1
        every, last = self.checkpoints.every, self.checkpoints.stage_steps[self.stage]
        if (every is None or step % every) and step != last:
            return
        started = time.perf_counter()
        path = self.checkpoints.save(self.model, self.stage, step,
                                     self.batches.state_at(step), self.history())
        size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
        self.checkpoints.print_fn(f"Saved {path} ({size:.1f} MiB in "
                                  f"{time.perf_counter() - started:.2f} s)")
