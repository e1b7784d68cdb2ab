"""Runs a saved encoder preset on saved images in the backend given by
KERAS_BACKEND and writes the outputs: `python -m tests.encode_in_backend DIR`.

Used by the cross-backend test to get another backend's outputs from a
fresh process (a process holds one Keras backend).
"""

import sys
from pathlib import Path

import numpy as np


def main(folder):
    import keras

    from keras_ov2 import OpenVision2Backbone

    folder = Path(folder)
    model = OpenVision2Backbone.from_preset(str(folder / "preset"))
    results = {}
    for path in sorted(folder.glob("images_*.npy")):
        outputs = model(np.load(path))
        for key, value in outputs.items():
            results[f"{path.stem}/{key}"] = keras.ops.convert_to_numpy(value)
    backend = keras.backend.backend()
    np.savez(folder / f"outputs_{backend}.npz", **results)


if __name__ == "__main__":
    main(sys.argv[1])
