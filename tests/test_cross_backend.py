"""The same weights give the same encoder outputs on JAX, TensorFlow and
PyTorch (float32, 1e-5), at two resolutions. The backend under test computes
in-process (the jax run of the suite); the two others run in subprocesses
on the same saved preset."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np

from keras_ov2 import OpenVision2Backbone
from tests.encode_in_backend import main as encode
from tests.once_per_suite import once_per_suite

BACKENDS = ("jax", "tensorflow", "torch")


@once_per_suite
def test_outputs_agree_across_backends(tmp_path):
    model = OpenVision2Backbone(
        patch_size=8,
        hidden_dim=48,
        num_layers=2,
        num_heads=3,
        intermediate_dim=96,
        projection_dim=16,
    )
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(scale=0.3, size=variable.shape))
    model.save_to_preset(str(tmp_path / "preset"))
    for size in (40, 64):
        images = rng.normal(size=(2, size, size, 3)).astype("float32")
        np.save(tmp_path / f"images_{size}.npy", images)

    here = keras.backend.backend()
    encode(tmp_path)
    root = Path(__file__).resolve().parent.parent
    for backend in BACKENDS:
        if backend == here:
            continue
        env = {**os.environ, "KERAS_BACKEND": backend}
        subprocess.run(
            [sys.executable, "-m", "tests.encode_in_backend", str(tmp_path)],
            check=True,
            cwd=root,
            env=env,
            capture_output=True,
        )

    outputs = {b: np.load(tmp_path / f"outputs_{b}.npz") for b in BACKENDS}
    keys = sorted(outputs[here].files)
    assert len(keys) == 6  # 2 resolutions x 3 outputs
    for backend in BACKENDS:
        assert sorted(outputs[backend].files) == keys
        for key in keys:
            np.testing.assert_allclose(
                outputs[backend][key],
                outputs[here][key],
                atol=1e-5,
                rtol=1e-5,
                err_msg=f"{backend} vs {here}: {key}",
            )
