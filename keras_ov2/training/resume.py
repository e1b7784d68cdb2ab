"""Checkpointing a staged `pretrain` run: where it resumes, and the callback
that saves it every N steps and at the end of each stage."""

import json
import os
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
    """The checkpoints of one staged run, in `directory` (local or `gs://`).

    `run`: JSON-serializable facts a resumed run must share with the saved
    one (stages, seed, caption field, ...): a checkpoint of another run or
    model is refused, naming what differs, since resuming it would not give
    the run that was asked for. `stage_steps`: steps of each stage.
    `data_shards`: how many data shards this run's hosts read (see
    `TrainingSetup.data_shard`). `directory` None turns checkpointing off
    (nothing resumed or saved). Call `close` at the end: saves are
    asynchronous.
    """

    def __init__(self, directory, every, run, stage_steps, keep=3, print_fn=print,
                 data_shards=1):
        if every is not None and every < 1:
            raise ValueError(f"Checkpoint every must be a positive number of steps; got {every}.")
        self.directory = directory
        self.folder = directory and checkpoint.CheckpointFolder(directory, keep)
        self.every, self.run, self.stage_steps = every, run, list(stage_steps)
        self.print_fn, self.data_shards = print_fn, data_shards
        self.step, self.stage, self.stage_step = None, 0, 0
        self.data_state, self.losses = None, []

    def resume(self, model):
        """Restores `model`'s variables from the latest checkpoint, if there
        is one, and remembers where it stopped; returns its folder or None."""
        step = self.folder and self.folder.latest()
        if step is None:
            return None
        state, self.data_state = self.folder.read_state(step, self.data_shards)
        path = os.path.join(str(self.directory), str(step))
        advice = "Resume with the options of the saved run, or use another checkpoint folder."
        check_same(path, "run", state["run"], self.run, advice)
        check_same(path, "model", state["model"], config_leaves(model.get_config()), advice)
        self.folder.restore_model(step, model)
        self.step, self.stage, self.stage_step = step, state["stage"], state["stage_step"]
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
        if not self.folder:
            return dataset
        done = self.steps_done(stage)
        if done:
            self.folder.restore_optimizer(self.step, model)
        return TrackedBatches(dataset, self.data_state if done else None, done)

    def callback(self, stage, batches, history):
        """A Keras callback saving `stage` (None when checkpointing is off);
        `history()` gives the loss history."""
        if not self.folder:
            return None
        return SaveEvery(self, stage, batches, history)

    def save(self, model, stage, stage_step, data_state, losses):
        """Starts saving; returns the checkpoint's global step."""
        step = sum(self.stage_steps[:stage]) + stage_step
        state = dict(stage=stage, stage_step=stage_step, run=self.run, losses=losses,
                     model=config_leaves(model.get_config()))
        self.folder.save(step, model, state, data_state, self.data_shards)
        return step

    def close(self):
        """Waits until every checkpoint is written."""
        if self.folder:
            self.folder.close()


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
        saved = self.checkpoints.save(self.model, self.stage, step,
                                      self.batches.state_at(step), self.history())
        self.checkpoints.print_fn(
            f"Saving checkpoint {saved} to {self.checkpoints.directory} (training "
            f"waited {time.perf_counter() - started:.2f} s; written in the background)")
