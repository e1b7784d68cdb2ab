"""Trains the tiny captioner two steps on one device, then under each layout
on 8 devices, from the same weights and batch, and writes what came out:
`python -m tests.distributed_step OUT_DIR` with
XLA_FLAGS=--xla_force_host_platform_device_count=8 and KERAS_BACKEND=jax.

Used by tests/test_distribution.py: JAX fixes the device count when it
starts, and the rest of the suite runs on one device in its own process.
Writes `weights_<layout>.npz` (path -> updated value) and `results.json`
({layout: {"losses", "declared", "actual"}}: the layout map's axes and the
variables' real sharding specs, optimizer state included). Also, under
"clips", the losses of the tiny OpenVisionCLIPS on one device and under
CLIPS_LAYOUTS; under "keras_hub_backbone", the specs of a backbone laid out
by `OpenVision2Backbone.get_layout_map(mesh)` on a 2x4 ("batch", "model")
mesh; under "layout_error", the message of a dimension that mesh does not
divide.
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

import keras_ov2
from keras_ov2.distribution import CheckedModelParallel
from keras_ov2.distribution import LayoutError
from keras_ov2.distribution import make_distribution
from tests import test_openvision_clips
from tests.test_captioner import scenes
from tests.test_captioner import tiny_captioner

LAYOUTS = {
    "data_8": ({"data": 8}, "data"),
    "fsdp_8": ({"data": 8}, "fsdp"),
    "fsdp_4x2": ({"data": 4, "model": 2}, "fsdp"),
    "tensor_4x2": ({"data": 4, "model": 2}, "tensor"),
}
CLIPS_LAYOUTS = ("data_8", "fsdp_8", "tensor_4x2")
LEARNING_RATE = 1e-3


def train_two_steps(model, weights, *batch, warmup_steps=1):
    """With a one-step warmup, the first step runs at learning rate 0 (warmup
    starts there), the second at the peak: two steps test the loss, the
    gradients and Adam. Without, the second loss follows the first update."""
    model.set_weights(weights)
    model.compile(learning_rate=LEARNING_RATE, total_steps=2, warmup_steps=warmup_steps)
    losses = [float(model.train_on_batch(*batch, return_dict=True)["loss"]) for _ in range(2)]
    updated = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}
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
            distribution.device_mesh, data_parallel_dim_name="data", mode=mode
        )
        declared = {v.path: layout_map[v.path] for v in captioner.weights}
        variables = captioner.weights + captioner.optimizer.variables
        results[name] = {
            "losses": losses,
            "actual": {v.path: spec(v) for v in variables},
            "declared": {k: list(v.axes) for k, v in declared.items() if v is not None},
        }
        np.savez(out_dir / f"weights_{name}.npz", **updated)
    results["clips"] = train_clips()
    results.update(keras_hub_backbone())
    (out_dir / "results.json").write_text(json.dumps(results))


def train_clips():
    """The tiny OpenVision v1 model, its vocabulary padded to 40 rows (the
    synthetic captions' 37 divide no mesh axis): {layout: two losses, the
    second after one update}."""
    keras.utils.set_random_seed(0)
    reference = test_openvision_clips.tiny_clips(preprocessor=False, vocabulary=40)
    serialized = keras.saving.serialize_keras_object(reference)
    initial = reference.get_weights()
    images, web, detailed = test_openvision_clips.scenes(8)
    batch = test_openvision_clips.tiny_preprocessor()(images, (web, detailed))
    losses = {"one_device": train_two_steps(reference, initial, *batch, warmup_steps=0)[0]}
    for name in CLIPS_LAYOUTS:
        distribution = make_distribution(*LAYOUTS[name], model=serialized)
        with distribution.scope():
            model = keras.saving.deserialize_keras_object(serialized)
            losses[name] = train_two_steps(model, initial, *batch, warmup_steps=0)[0]
    return losses


def keras_hub_backbone():
    """A backbone laid out as KerasHub lays out its models, and the error
    of a dimension that the 4-way model axis does not divide."""
    mesh = keras.distribution.DeviceMesh(
        (2, 4), ("batch", "model"), keras.distribution.list_devices()
    )
    layout_map = keras_ov2.OpenVision2Backbone.get_layout_map(mesh)
    config = dict(patch_size=16, hidden_dim=32, num_layers=1, num_heads=4)
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    with distribution.scope():
        backbone = keras_ov2.OpenVision2Backbone(**config, intermediate_dim=64)
    checked = CheckedModelParallel(layout_map=layout_map, batch_dim_name="batch")
    try:
        with checked.scope():
            keras_ov2.OpenVision2Backbone(**config, intermediate_dim=66)
        error = None
    except LayoutError as raised:
        error = str(raised)
    return {
        "keras_hub_backbone": {v.path: spec(v) for v in backbone.weights},
        "layout_error": error,
    }


if __name__ == "__main__":
    main(sys.argv[1])
