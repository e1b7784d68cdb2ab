"""Trains saved presets on saved batches in the backend given by KERAS_BACKEND
and writes each step's loss and the final weights:
`python -m tests.train_in_backend DIR`.

DIR holds `<model>/` (a task preset) and `<model>.npz` (batches: `x/<key>`,
`y`, `sample_weight`, stacked on a first axis) for each model in MODELS.
Writes `DIR/results_<backend>.npz`, keyed `<run>/losses` and
`<run>/<weight path>` for each run in RUNS. Used by
tests/test_cross_backend_training.py: a process holds one Keras backend.
"""

import sys
from pathlib import Path

import keras  # first: the torch build crashes if Triton loads after TensorFlow
import numpy as np

import keras_ov2

MODELS = {"captioner": keras_ov2.OpenVision2Captioner, "clips": keras_ov2.OpenVisionCLIPS}
STEPS = 10  # train_on_batch calls per run
# Run -> (model, gradient_accumulation_steps); total_steps and warmup count
# updates. Accumulation on one model only: each run costs a compilation.
RUNS = {
    "captioner/plain": ("captioner", None),
    "captioner/accumulated": ("captioner", 2),
    "clips/plain": ("clips", None),
}
LEARNING_RATE, WARMUP = 3e-3, 2


def batches(path):
    """The saved batches as (x, y, sample_weight) tuples."""
    arrays = np.load(path)
    keys = [k.split("/", 1)[1] for k in arrays.files if k.startswith("x/")]
    return [
        ({k: arrays[f"x/{k}"][i] for k in keys}, arrays["y"][i], arrays["sample_weight"][i])
        for i in range(len(arrays["y"]))
    ]


def train(folder, name, accumulation):
    """Per-step losses and {path: final trainable weight} of one run."""
    model = MODELS[name].from_preset(str(folder / name), preprocessor=None)
    data = batches(folder / f"{name}.npz")
    updates = STEPS // (accumulation or 1)
    model.compile(
        learning_rate=LEARNING_RATE,
        total_steps=updates,
        warmup_steps=WARMUP,
        gradient_accumulation_steps=accumulation,
        # Tracing a TensorFlow train step costs more than 10 eager steps; its
        # Embedding gradients are as sparse either way (graph mode is
        # covered by tests/test_memory_options.py).
        run_eagerly=keras.backend.backend() == "tensorflow",
    )
    losses = []
    for step in range(STEPS):
        logs = model.train_on_batch(*data[step % len(data)], return_dict=True)
        losses.append(logs["loss"])
    weights = {v.path: keras.ops.convert_to_numpy(v.value) for v in model.trainable_weights}
    assert len(weights) == len(model.trainable_weights), "repeated weight paths"
    return np.array(losses), weights


def main(folder):
    folder = Path(folder)
    results = {}
    for run, (name, accumulation) in RUNS.items():
        losses, weights = train(folder, name, accumulation)
        results[f"{run}/losses"] = losses
        results.update({f"{run}/{path}": w for path, w in weights.items()})
    np.savez(folder / f"results_{keras.backend.backend()}.npz", **results)


if __name__ == "__main__":
    main(sys.argv[1])
