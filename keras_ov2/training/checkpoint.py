"""Checkpoint folders: atomic save, keep the last K, find and read the latest.

A checkpoint is a folder `ckpt-<global step, 8 digits>` holding
  model.npz               every model variable, in order, keyed by path:
                          weights, and the state of the token masking's
                          `SeedGenerator` (so masks after a resume are the
                          masks the run would have drawn);
  optimizer.npz           the optimizer's variables (step counter, Adam
                          moments), keyed without the optimizer's own name,
                          which Keras numbers per instance;
  state.json              the step, the stage, the run's recipe, the loss
                          history: whatever the caller passes;
  data_process_<i>.json   host i's Grain iterator state.
Only NumPy's .npz (read with `allow_pickle=False`) and JSON: no pickle and
no Orbax.

Saving is atomic: the files go into a hidden `.partial-ckpt-...` folder, each
file and the folder are fsynced, then the folder is renamed. A crash while
saving leaves the earlier checkpoints as they were; the partial folder is
deleted when the folder is next opened for saving.

Distributed (JAX): each variable is gathered to the host (across hosts with
`process_allgather` when this host does not hold all of it). Process 0 writes
the arrays and state.json, every process its own data state, with barriers
between (the folder must be on a file system all hosts share). Restoring
assigns the whole array to each variable, and Keras lays it out again with
the variable's layout (each host placing its own shards).
"""

import json
import os
import re
import shutil
from pathlib import Path

import keras
import numpy as np

from keras_ov2.durable import fsync_path

NAME = re.compile(r"^ckpt-(\d{8})$")
NUMBER = re.compile(r"_\d+")
PARTIAL_PREFIX = ".partial-"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.npz", "optimizer.npz", "state.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or run restoring it."""


def process_index_and_count():
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def barrier(name):
    """Waits for every JAX process (no-op with one)."""
    if process_index_and_count()[1] > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_numpy(variable):
    value = variable.value
    if keras.backend.backend() == "jax" and not getattr(value, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        array = np.asarray(multihost_utils.process_allgather(value, tiled=True))
    else:
        array = keras.ops.convert_to_numpy(value)
    # .npz without pickle stores NumPy's own dtypes; bfloat16 goes as float32.
    return array if array.dtype.kind in "biuf" else array.astype("float32")


def variable_keys(variables, strip_owner=False):
    """Unique keys: the variable paths (without their first part for
    optimizer variables), numbered when a path repeats."""
    keys, seen = [], {}
    for variable in variables:
        key = variable.path.split("/", 1)[-1] if strip_owner else variable.path
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def write_file(path, write):
    """Writes with `write(file)` and fsyncs before returning."""
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def write_arrays(path, variables, strip_owner=False):
    arrays = dict(zip(variable_keys(variables, strip_owner), map(to_numpy, variables)))
    if process_index_and_count()[0] == 0:
        write_file(path, lambda file: np.savez(file, **arrays))


def write_json(path, value):
    write_file(path, lambda file: file.write(json.dumps(value, indent=1).encode()))


def step_of(path):
    match = NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints(directory):
    """The complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if step_of(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=step_of)


def latest_checkpoint(directory):
    """The newest complete checkpoint folder, or None."""
    found = checkpoints(directory)
    return found[-1] if found else None


def remove_partial(directory):
    """Deletes what interrupted saves left behind (process 0 only)."""
    if process_index_and_count()[0] == 0:
        for path in Path(directory).glob(PARTIAL_PREFIX + "*"):
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(directory, step, model, state, data_state=None, keep=3):
    """Writes `ckpt-<step>` atomically and deletes all but the newest `keep`.

    `model`: its variables, and its optimizer's when it has a built one.
    `state`: JSON-serializable facts of the run. `data_state`: this host's
    Grain iterator state (JSON-serializable), or None. Returns the folder.
    """
    directory = Path(directory)
    index, count = process_index_and_count()
    final = directory / f"ckpt-{step:08d}"
    partial = directory / f"{PARTIAL_PREFIX}{final.name}"
    if index == 0:
        directory.mkdir(parents=True, exist_ok=True)
        remove_partial(directory)
        partial.mkdir()
    barrier(f"keras_ov2 checkpoint {step} started")
    write_arrays(partial / MODEL_FILE, model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        write_arrays(partial / OPTIMIZER_FILE, optimizer.variables, strip_owner=True)
    if data_state is not None:
        write_json(partial / f"data_process_{index}.json", data_state)
    if index == 0:
        write_json(partial / STATE_FILE, {**state, "step": step, "processes": count})
    barrier(f"keras_ov2 checkpoint {step} written")
    if index == 0:
        fsync_path(partial)
        if final.exists():  # the same step saved again: replace it
            shutil.rmtree(final)
        os.rename(partial, final)
        fsync_path(directory)
        for old in checkpoints(directory)[:-keep]:
            shutil.rmtree(old)
    barrier(f"keras_ov2 checkpoint {step} renamed")
    return final


def read_state(path):
    """(state.json's dict, this host's data state or None) of a checkpoint."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    index, count = process_index_and_count()
    if state.get("processes", 1) != count:
        raise CheckpointError(
            f"{path} was written by {state['processes']} processes; this run has {count}. "
            "Resume on as many hosts (the data state is per host)."
        )
    data = path / f"data_process_{index}.json"
    return state, (json.loads(data.read_text()) if data.is_file() else None)


def assign_arrays(path, variables, what, strip_owner=False):
    """Assigns the arrays of `path` to `variables`, in order. Paths are
    compared without their "_<number>" parts, since Keras numbers unnamed
    layers and seed generators per process ("open_vision2_text_decoder_1");
    the order tells layers apart. A CheckpointError names the variables
    whose name or shape differ."""
    with np.load(path, allow_pickle=False) as stored:
        arrays = [(key, stored[key]) for key in stored.files]
    keys = variable_keys(variables, strip_owner)
    if len(arrays) != len(keys):
        raise CheckpointError(f"{path} holds {len(arrays)} variables; this {what} has "
                              f"{len(keys)}.")
    differences = [
        f"{saved} {array.shape} in the checkpoint, {key} {tuple(variable.shape)} in this {what}"
        for (saved, array), key, variable in zip(arrays, keys, variables)
        if NUMBER.sub("", saved) != NUMBER.sub("", key)
        or tuple(array.shape) != tuple(variable.shape)
    ]
    if differences:
        raise CheckpointError(f"{path} does not fit: {'; '.join(differences[:3])}"
                              f"{'; ...' if len(differences) > 3 else ''}.")
    for (_, array), variable in zip(arrays, variables):
        variable.assign(placed(array.astype(variable.dtype), variable))


def placed(array, variable):
    """On JAX, `array` laid out as the variable is, built shard by shard from
    the host copy: each host places only its own devices' shards."""
    if keras.backend.backend() != "jax":
        return array
    import jax

    return jax.make_array_from_callback(array.shape, variable.value.sharding,
                                        lambda index: array[index])


def restore_model(path, model):
    """Assigns a checkpoint's model variables (weights, seed states)."""
    assign_arrays(Path(path) / MODEL_FILE, model.variables, "model")


def restore_optimizer(path, model):
    """Builds `model.optimizer` (if needed) and assigns the checkpoint's
    optimizer variables: the step counter and so the schedule's position,
    and the moments."""
    path = Path(path) / OPTIMIZER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no optimizer state ({OPTIMIZER_FILE}).")
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    assign_arrays(path, model.optimizer.variables, "optimizer", strip_owner=True)
