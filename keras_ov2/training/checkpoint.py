"""A run's checkpoints, written and read by Orbax's `CheckpointManager`.

A checkpoint is a folder `<directory>/<global step>` of four Orbax items:
  model/      every model variable, in order: weights, and the state of the
              token masking's `SeedGenerator` (so masks after a resume are
              the masks the run would have drawn);
  optimizer/  the optimizer's variables (step counter, Adam moments);
  state/      JSON: the step, the stage, the run's recipe, the loss history
              (whatever the caller passes), and the path and shape of every
              variable saved, to refuse a checkpoint that does not fit;
  data/       each host's Grain iterator state, through Grain's own Orbax
              handler (`process_<i>-of-<n>.json`).

Orbax does the engineering: each host writes only the shards it holds
(tensorstore, OCDBT); saves are asynchronous (training goes on once the
arrays are copied off the devices); the directory may be local or any path
etils.epath knows (`gs://...`); the last `keep` are kept; a save cut short
leaves a temporary folder that is never read and is deleted on the next
start. Restoring reads into each variable's current layout, so a run
resumes on another mesh or layout, or with another number of hosts (then
the hosts' data positions are re-split, see `data_position.resplit`).

No pickle anywhere: arrays, JSON and Grain's JSON.

Not Keras' `OrbaxCheckpoint` callback: it saves weights and optimizer only,
numbers checkpoints by batches across `fit` calls, and names variables by
their paths, which Keras numbers per process ("open_vision2_text_decoder_1"):
a staged run that resumes mid-stage needs the stage, the data position and
the loss history too, and a match by order.
"""

import json
import os
import re

import grain
import keras
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from keras_ov2.data.pipeline import default_shard
from keras_ov2.training import data_position

NUMBER = re.compile(r"_\d+")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or run restoring it."""


def saved_value(variable):
    """What Orbax writes: on JAX the (sharded) array itself; elsewhere a
    NumPy copy, since a background write must not see later updates made in
    place (a torch tensor's NumPy view would)."""
    if keras.backend.backend() == "jax":
        return variable.value
    return np.array(keras.ops.convert_to_numpy(variable.value), copy=True)


def target(variable):
    """What Orbax restores into: on JAX, the variable's shape, dtype and
    current sharding (each device reads only its shard); elsewhere NumPy."""
    dtype = keras.backend.standardize_dtype(variable.dtype)
    if keras.backend.backend() == "jax":
        import jax

        return jax.ShapeDtypeStruct(variable.shape, dtype, sharding=variable.value.sharding)
    return np.empty(variable.shape, dtype)


class DataPosition:
    """A Grain iterator state as Grain's Orbax handler saves and restores
    it (`get_state` / `set_state` in bytes)."""

    def __init__(self, state=None):
        self.state = state

    def get_state(self):
        return data_position.json_bytes(self.state)

    def set_state(self, state):
        self.state = json.loads(state)

    def start_prefetch(self):
        """Grain's handler calls it after a restore; nothing to start."""


class CheckpointFolder:
    """The checkpoints in `directory` (a local path or `gs://...`).

    `keep`: how many of the newest to keep. `asynchronous`: `save` returns
    once the arrays are off the devices and Orbax writes them in a
    background thread; `wait` (or `close`) blocks until written.
    """

    def __init__(self, directory, keep=3, asynchronous=True):
        # Orbax wants absolute paths; "gs://..." already is one.
        local = "://" not in str(directory)
        self.directory = epath.Path(os.path.abspath(directory) if local else directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self):
        """Steps of the complete checkpoints, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest(self):
        """The newest complete checkpoint's step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def path(self, step):
        return self.directory / str(step)

    def save(self, step, model, state, data_state=None, data_shards=1):
        """Saves `model`'s variables (and its optimizer's, once built), the
        JSON-serializable `state` and this host's Grain iterator state (one
        of `data_shards`) as checkpoint `step`. Returns when the arrays are
        copied off the devices."""
        optimizer = getattr(model, "optimizer", None)
        optimizer = optimizer if optimizer is not None and optimizer.built else None
        shapes = {"model": described(model.variables)}
        items = {"model": ocp.args.StandardSave([saved_value(v) for v in model.variables])}
        if optimizer is not None:
            shapes["optimizer"] = described(optimizer.variables, strip_owner=True)
            items["optimizer"] = ocp.args.StandardSave(
                [saved_value(v) for v in optimizer.variables])
        if data_state is not None:
            items["data"] = grain.checkpoint.CheckpointSave(DataPosition(data_state))
        state = {**state, "step": step, "processes": default_shard()[1],
                 "data_shards": data_shards, "variables": shapes}
        items["state"] = ocp.args.JsonSave(state)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def saved_state(self, step):
        """The JSON state of checkpoint `step`."""
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.JsonRestore())).state

    def read_state(self, step, data_shards=1):
        """(the state saved, this host's data state or None) of checkpoint
        `step`, for a run reading `data_shards` data shards. Saved by
        another number of hosts or shards, the hosts' data states are
        re-split (`data_position.resplit`)."""
        state = self.saved_state(step)
        data = self.path(step) / "data"
        if not data.exists():
            return state, None
        processes = state["processes"]
        if (processes, state["data_shards"]) == (default_shard()[1], data_shards):
            position = DataPosition()
            self.manager.restore(step, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(position)))
            return state, position.state
        saved = [json.loads(
            (data / f"process_{i}-of-{processes}.json").read_bytes())
            for i in range(processes)]
        try:
            return state, data_position.resplit(saved, state["data_shards"], data_shards,
                                                where=str(data))
        except ValueError as error:
            raise CheckpointError(str(error)) from None

    def restore_model(self, step, model):
        """Assigns checkpoint `step`'s model variables (weights, seed states)."""
        self.restore(step, "model", model.variables, "model")

    def restore_optimizer(self, step, model):
        """Builds `model.optimizer` (if needed) and assigns the checkpoint's
        optimizer variables: the step counter (so the learning-rate
        schedule's position) and the moments."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self.restore(step, "optimizer", model.optimizer.variables, "optimizer",
                     strip_owner=True)

    def restore(self, step, item, variables, what, strip_owner=False):
        """Checks the saved paths and shapes against `variables` (paths
        compared without their "_<number>" parts, since Keras numbers
        unnamed layers and seed generators per process; the order tells
        layers apart), then reads the arrays into their layouts."""
        saved = self.saved_state(step)["variables"].get(item)
        if saved is None:
            raise CheckpointError(f"{self.path(step)} has no {what} state.")
        current = described(variables, strip_owner)
        if len(saved) != len(current):
            raise CheckpointError(f"{self.path(step)} holds {len(saved)} {what} variables; "
                                  f"this {what} has {len(current)}.")
        differences = [
            f"{path} {tuple(shape)} in the checkpoint, {key} {tuple(now)} in this {what}"
            for (path, shape), (key, now) in zip(saved, current)
            if NUMBER.sub("", path) != NUMBER.sub("", key) or list(shape) != list(now)
        ]
        if differences:
            raise CheckpointError(f"{self.path(step)} does not fit: "
                                  f"{'; '.join(differences[:3])}"
                                  f"{'; ...' if len(differences) > 3 else ''}.")
        arrays = self.manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore([target(v) for v in variables])}))[item]
        for array, variable in zip(arrays, variables):
            variable.assign(array)

    def wait(self):
        """Blocks until every save started is written."""
        self.manager.wait_until_finished()

    def close(self):
        """Waits for the saves in flight, then releases Orbax's threads."""
        self.manager.close()


def described(variables, strip_owner=False):
    """[[path, shape], ...] in order: what `restore` checks. `strip_owner`
    drops a path's first part, the optimizer's own name, which Keras
    numbers per instance."""
    return [[v.path.split("/", 1)[-1] if strip_owner else v.path, list(v.shape)]
            for v in variables]
