"""Key and shape bookkeeping shared by the converters.

A converter asks for each key it needs with the shape it expects; every
problem (missing key, wrong shape, key left over) is an error that names the
key and the file, and no variable is assigned until the whole checkpoint has
been checked, so a bad checkpoint never leaves a model half loaded.

Values may be NumPy arrays or `StoredArray`s (still on disk). Shapes are
checked from the metadata alone; each array is then read, transformed and
assigned one key at a time, so converting holds the model plus one tensor,
not a second copy of every weight.
"""

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that does not fit the architecture it is loaded into."""


class StoredArray:
    """An array in a file: shape and dtype known, bytes read by `read()`."""

    def __init__(self, shape, dtype, read):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    def read(self):
        array = self._read()
        if array.shape != self.shape:
            raise CheckpointError(f"stored array read as {array.shape}, not {self.shape}")
        return array

    def __repr__(self):
        return f"StoredArray(shape={self.shape}, dtype={self.dtype})"


def read_array(value):
    """A NumPy array from an array or a `StoredArray`."""
    return value.read() if isinstance(value, StoredArray) else np.asarray(value)


def as_float32(array):
    """Half-precision weights (float16, bfloat16) widened exactly to float32,
    which every backend can take from NumPy."""
    if array.dtype.kind in "fV" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def placeholder(shape, dtype="float32"):
    """A zero-stride stand-in of `shape`: a transform runs on it to give its
    output shape without touching any data."""
    return np.broadcast_to(np.zeros((), dtype), shape)


class Checkpoint:
    """Flat `{key: array}` weights read from `origin` (a file name, for errors).

    `take` checks a key and schedules its assignment; `assign_all` checks that
    every key was used and only then writes the variables, one key at a time.
    """

    def __init__(self, arrays, origin):
        self.arrays = dict(arrays)
        self.origin = origin
        self.used = set()
        self.plan = {}  # key -> [(variable, transform)], in scheduling order

    def __contains__(self, key):
        return key in self.arrays

    def shape(self, key, *shapes):
        """The shape under `key`, which must be one of `shapes`."""
        if key not in self.arrays:
            raise CheckpointError(
                f"{self.origin}: missing key {key!r}, which the architecture "
                f"needs with shape {shapes[0]}."
            )
        shape = tuple(self.arrays[key].shape)
        if shape not in [tuple(s) for s in shapes]:
            expected = " or ".join(str(tuple(s)) for s in shapes)
            raise CheckpointError(
                f"{self.origin}: key {key!r} has shape {shape}, "
                f"but the architecture expects {expected}."
            )
        self.used.add(key)
        return shape

    def get(self, key, *shapes):
        """The array under `key` (read now), whose shape must be one of `shapes`."""
        self.shape(key, *shapes)
        return read_array(self.arrays[key])

    def skip(self, key):
        """Marks a key as deliberately not loaded."""
        self.used.add(key)

    def take(self, variable, key, *shapes, transform=None):
        """Schedules `variable <- transform(array under key)`."""
        shape = self.shape(key, *shapes)
        transform = transform or (lambda array: array)
        out = transform(placeholder(shape)).shape
        if tuple(out) != tuple(variable.shape):
            raise CheckpointError(
                f"{self.origin}: key {key!r} gives shape {tuple(out)} for "
                f"variable {variable.path}, which has shape {tuple(variable.shape)}."
            )
        self.plan.setdefault(key, []).append((variable, transform))

    def unused(self):
        return sorted(k for k in self.arrays if k not in self.used)

    def assign_all(self, models):
        """Refuses keys that nothing used and variables of `models` that
        nothing fed; then assigns every scheduled variable."""
        extra = self.unused()
        if extra:
            shown = ", ".join(repr(k) for k in extra[:5])
            more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            raise CheckpointError(
                f"{self.origin}: unexpected key(s) {shown}{more}: they belong to "
                "no variable of this architecture (a different model, or a "
                "configuration that does not match the weights)."
            )
        fed = {id(variable) for targets in self.plan.values() for variable, _ in targets}
        for model in models:
            for variable in model.weights:
                if id(variable) not in fed:
                    raise CheckpointError(
                        f"{self.origin}: nothing in the checkpoint feeds variable "
                        f"{variable.path}."
                    )
        for key, targets in self.plan.items():
            array = read_array(self.arrays[key])
            for variable, transform in targets:
                variable.assign(as_float32(transform(array)))
            del array
