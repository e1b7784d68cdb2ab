"""Key and shape bookkeeping shared by the converters.

A converter asks for each key it needs with the shape it expects; every
problem (missing key, wrong shape, key left over) is an error that names the
key and the file, and no variable is assigned until the whole checkpoint has
been checked, so a bad checkpoint never leaves a model half loaded.
"""

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that does not fit the architecture it is loaded into."""


class Checkpoint:
    """Flat `{key: array}` weights read from `origin` (a file name, for errors).

    `take` checks a key and schedules its assignment; `assign_all` checks that
    every key was used and only then writes the variables.
    """

    def __init__(self, arrays, origin):
        self.arrays = dict(arrays)
        self.origin = origin
        self.used = set()
        self.plan = []

    def __contains__(self, key):
        return key in self.arrays

    def get(self, key, *shapes):
        """The array under `key`, whose shape must be one of `shapes`."""
        if key not in self.arrays:
            raise CheckpointError(
                f"{self.origin}: missing key {key!r}, which the architecture "
                f"needs with shape {shapes[0]}."
            )
        array = np.asarray(self.arrays[key])
        if tuple(array.shape) not in [tuple(s) for s in shapes]:
            expected = " or ".join(str(tuple(s)) for s in shapes)
            raise CheckpointError(
                f"{self.origin}: key {key!r} has shape {tuple(array.shape)}, "
                f"but the architecture expects {expected}."
            )
        self.used.add(key)
        return array

    def skip(self, key):
        """Marks a key as deliberately not loaded."""
        self.used.add(key)

    def take(self, variable, key, *shapes, transform=None):
        """Schedules `variable <- transform(array under key)`."""
        array = self.get(key, *shapes)
        self.put(variable, array if transform is None else transform(array), key)

    def put(self, variable, array, key):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(variable.shape):
            raise CheckpointError(
                f"{self.origin}: key {key!r} gives shape {tuple(array.shape)} for "
                f"variable {variable.path}, which has shape {tuple(variable.shape)}."
            )
        self.plan.append((variable, array))

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
        fed = {id(variable) for variable, _ in self.plan}
        for model in models:
            for variable in model.weights:
                if id(variable) not in fed:
                    raise CheckpointError(
                        f"{self.origin}: nothing in the checkpoint feeds variable "
                        f"{variable.path}."
                    )
        for variable, array in self.plan:
            variable.assign(array)
