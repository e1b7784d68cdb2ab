"""`python -m tests.load_without_torch PRESET IMAGES OUT` with `import torch` blocked.

Loads `OpenVision2Backbone.from_preset(PRESET)` (downloading and converting
a release when the environment points at a Hub and nothing is cached), runs
it on the images of IMAGES.npz and writes its outputs to OUT.npz, with the
converted preset's backbone config. Exits non-zero if torch got imported.
KERAS_BACKEND must not be "torch" here (Keras itself needs torch then).
"""

import importlib.abc
import json
import sys


class BlockTorch(importlib.abc.MetaPathFinder):
    """Makes `import torch` (and any torch submodule) fail."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked: conversion must not need torch")
        return None


def main(preset, images_path, out):
    sys.meta_path.insert(0, BlockTorch())
    import numpy as np

    from keras_ov2 import OpenVision2Backbone

    model = OpenVision2Backbone.from_preset(preset)
    outputs = model.predict(np.load(images_path)["images"], verbose=0)
    if "torch" in sys.modules:
        sys.exit("torch was imported")
    np.savez(out, **outputs, config=json.dumps(model.get_config()))


if __name__ == "__main__":
    main(*sys.argv[1:])
