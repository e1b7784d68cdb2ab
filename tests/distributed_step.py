"""Trains the tiny captioner two steps on one device, then under each layout
on 8 devices, from the same weights and batch, and writes what came out:
`python -m tests.distributed_step OUT_DIR` with
XLA_FLAGS=--xla_force_host_platform_device_count=8 and KERAS_BACKEND=jax.

Used by tests/test_distribution.py: JAX fixes the device count when it
starts, and the rest of the suite runs on one device in its own process.
Writes `weights_<layout>.npz` (path -> updated value) and `results.json`
({layout: {"losses", "declared", "actual"}}: the layout map's axes and the
variables' real sharding specs, optimizer state included).
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

from keras_ov2.distribution import make_distribution
from tests.test_captioner import scenes
from tests.test_captioner import tiny_captioner

LAYOUTS = {
    "data_8": ({"data": 8}, "data"),
    "fsdp_8": ({"data": 8}, "fsdp"),
    "fsdp_4x2": ({"data": 4, "model": 2}, "fsdp"),
    "tensor_4x2": ({"data": 4, "model": 2}, "tensor"),
}
LEARNING_RATE = 1e-3


def train_two_steps(captioner, weights, images, captions):
    """The first step runs at learning rate 0 (warmup starts there), the
    second at the peak: two steps test the loss, the gradients and Adam."""
    captioner.set_weights(weights)
    captioner.compile(learning_rate=LEARNING_RATE, total_steps=2, warmup_steps=1)
    losses = [float(captioner.train_on_batch(images, captions)) for _ in range(2)]
    updated = {v.path: keras.ops.convert_to_numpy(v.value) for v in captioner.weights}
    return losses, updated


def spec(variable):
    padded = tuple(variable.value.sharding.spec)
    return list(padded + (None,) * (len(variable.shape) - len(padded)))


def main(out_dir):
    out_dir = Path(out_dir)
    assert len(keras.distribution.list_devices()) == 8, keras.distribution.list_devices()
    keras.utils.set_random_seed(0)
    reference = tiny_captioner()
    serialized = keras.saving.serialize_keras_object(reference)
    initial = reference.get_weights()
    images, captions = scenes(8)
    captions = np.array(captions)

    losses, updated = train_two_steps(reference, initial, images, captions)
    results = {"one_device": {"losses": losses}}
    np.savez(out_dir / "weights_one_device.npz", **updated)
    for name, (mesh, mode) in LAYOUTS.items():
        distribution = make_distribution(mesh, mode, model=serialized)
        with distribution.scope():
            captioner = keras.saving.deserialize_keras_object(serialized)
            losses, updated = train_two_steps(captioner, initial, images, captions)
        layout_map = type(captioner).get_layout_map(
            distribution.device_mesh, serialized["config"], mode
        )
        declared = {v.path: layout_map[v.path] for v in captioner.weights}
        variables = captioner.weights + captioner.optimizer.variables
        results[name] = {
            "losses": losses,
            "actual": {v.path: spec(v) for v in variables},
            "declared": {k: list(v.axes) for k, v in declared.items() if v is not None},
        }
        np.savez(out_dir / f"weights_{name}.npz", **updated)
    (out_dir / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
