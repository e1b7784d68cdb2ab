"""keras_ov2.distribution: layouts, their errors, and one training step on
8 simulated CPU devices per layout, checked against one device.

JAX only, by design: Keras 3.15 trains distributed on JAX only."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ov2
from keras_ov2.distribution import data_shard
from keras_ov2.distribution import make_distribution
from keras_ov2.distribution import per_host_batch_size
from tests.distributed_step import CLIPS_LAYOUTS
from tests.distributed_step import LAYOUTS
from tests.distributed_step import LEARNING_RATE
from tests.same_update import assert_same_update

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras_ov2.distribution is JAX-only: Keras 3.15 trains distributed "
    "on JAX (TensorFlow has layout helpers only, PyTorch support is unreleased).",
)

ROOT = Path(__file__).resolve().parent.parent
DECODER = "open_vision2_text_decoder"


def placeholder_mesh(shape, axis_names=("batch", "model")):
    """A mesh of named devices that need not exist: layout maps read only
    its axis names, and this process has one device."""
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, axis_names, devices)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Runs tests/distributed_step.py once on 8 simulated CPU devices. XLA
    optimizes little: its compile time is most of the run, and every run
    there (one device or 8) compiles alike."""
    out = tmp_path_factory.mktemp("distributed_step")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
    )
    run = subprocess.run(
        [sys.executable, "-m", "tests.distributed_step", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_training_steps_match_one_device(trained, layout):
    results, out = trained
    expected = results["one_device"]["losses"]
    assert expected[1] < expected[0]  # the second step sees updated weights
    np.testing.assert_allclose(results[layout]["losses"], expected, rtol=1e-5)
    reference = np.load(out / "weights_one_device.npz")
    weights = np.load(out / f"weights_{layout}.npz")
    assert_same_update(dict(weights), dict(reference), LEARNING_RATE, layout)


def test_variables_are_sharded_as_declared(trained):
    results, _ = trained
    for layout in LAYOUTS:
        actual, declared = results[layout]["actual"], results[layout]["declared"]
        kernels = [p for p in actual if p.endswith(("/kernel", "/embeddings"))]
        assert kernels and set(kernels) <= set(declared), layout
        for path, axes in actual.items():
            if path in declared:
                assert axes == declared[path], (layout, path)
            elif not path.startswith("adam_w"):  # biases, norms, CLS
                assert axes == [None] * len(axes), (layout, path)
    fsdp_8, fsdp_4x2 = results["fsdp_8"]["actual"], results["fsdp_4x2"]["actual"]
    tensor = results["tensor_4x2"]["actual"]
    query = "transformer_layer_0/attention/query/kernel"
    embedding = f"{DECODER}/token_embedding/embeddings"
    assert all(a is None for a in results["data_8"]["actual"][embedding])
    assert fsdp_8[query] == ["data", "model"]  # "model" is 1-way
    assert fsdp_8[f"{DECODER}/head/kernel"] == ["data", "model"]
    assert fsdp_8["patch_embedding/kernel"] == [None, None, None, "data"]
    assert fsdp_4x2[query] == ["data", "model"]
    assert fsdp_4x2[embedding] == ["model", "data"]
    assert tensor[f"{DECODER}/transformer_layer_1/attention/key/kernel"] == [None, "model"]
    assert tensor["transformer_layer_0/attention/output/kernel"] == ["model", None]
    assert tensor[f"{DECODER}/transformer_layer_0/mlp_intermediate/kernel"] == [None, "model"]
    assert tensor["transformer_layer_0/mlp_output/kernel"] == ["model", None]
    assert tensor[embedding] == ["model", None]
    assert tensor["patch_embedding/kernel"] == [None] * 4
    # Optimizer state is laid out as its variable: FSDP splits it too.
    for layout in ("fsdp_8", "fsdp_4x2", "tensor_4x2"):
        actual = results[layout]["actual"]
        slots = [p for p in actual if p.endswith(f"{DECODER}_token_embedding_embeddings_momentum")]
        assert slots and all(actual[p] == actual[embedding] for p in slots), layout


def test_clips_trains_two_steps_under_each_layout_as_on_one_device(trained):
    losses = trained[0]["clips"]
    assert np.isfinite(losses["one_device"]).all()
    assert losses["one_device"][1] != losses["one_device"][0]  # after the update
    for layout in CLIPS_LAYOUTS:
        np.testing.assert_allclose(losses[layout], losses["one_device"], rtol=1e-5,
                                   err_msg=layout)


def test_keras_hub_call_form_shards_the_backbone_on_the_model_axis(trained):
    specs = trained[0]["keras_hub_backbone"]
    block = "transformer_layer_0"
    assert specs[f"{block}/attention/query/kernel"] == ["batch", "model"]
    assert specs[f"{block}/attention/output/kernel"] == ["model", "batch"]
    assert specs[f"{block}/mlp_intermediate/kernel"] == ["batch", "model"]
    assert specs[f"{block}/mlp_output/kernel"] == ["model", "batch"]
    assert specs["patch_embedding/kernel"] == [None, None, None, "batch"]
    assert specs[f"{block}/attention/query/bias"] == [None]


def test_a_dimension_the_mesh_axis_does_not_divide_is_named(trained):
    assert trained[0]["layout_error"] == (
        "Cannot lay out transformer_layer_0/mlp_intermediate/kernel of shape (32, 66): "
        "dimension 1 (size 66) is not divisible by the 4-way mesh axis 'model'. Use a "
        "mesh whose axes divide it, or a layout that does not split it."
    )


def test_layout_maps_take_no_config_and_follow_the_mode():
    mesh = placeholder_mesh((2, 4))
    query = f"{DECODER}/transformer_layer_3/attention/query/kernel"
    embedding = f"{DECODER}/token_embedding/embeddings"
    expected = {
        "fsdp": {query: ("batch", "model"), embedding: ("model", "batch")},
        "tensor": {query: (None, "model"), embedding: ("model", None)},
        "data": {query: (None, None), embedding: (None, None)},
    }
    for mode, axes in expected.items():
        layout_map = keras_ov2.OpenVision2Captioner.get_layout_map(mesh, mode=mode)
        assert {path: layout_map[path].axes for path in axes} == axes, mode
    assert layout_map["encoder_norm/gamma"] is None  # replicated
    # OpenVision v1: every kernel of the three towers has a role.
    layout_map = keras_ov2.OpenVisionCLIPS.get_layout_map(
        placeholder_mesh((2, 4), ("dp", "tp")), "tp", "dp", mode="fsdp"
    )
    assert layout_map["open_vision1_caption_decoder/image_projection/kernel"].axes == (
        None, "dp")
    assert layout_map["open_vision1_text_encoder/head/kernel"].axes == ("dp", "tp")
    # FSDP needs no model axis; tensor parallelism does.
    one_axis = placeholder_mesh((8,), ("batch",))
    layout_map = keras_ov2.OpenVision2Backbone.get_layout_map(one_axis)
    assert layout_map["transformer_layer_0/mlp_output/kernel"].axes == (None, "batch")
    with pytest.raises(ValueError, match="mode 'tensor' needs a 'model' axis"):
        keras_ov2.OpenVision2TextDecoder.get_layout_map(one_axis, mode="tensor")


def test_make_distribution_checks_the_mesh_and_mode():
    count = len(keras.distribution.list_devices())
    with pytest.raises(ValueError, match=f"needs {2 * count} devices; there are {count}"):
        make_distribution({"data": 2 * count})
    with pytest.raises(ValueError, match="mode 'data' replicates"):
        make_distribution({"data": 1, "model": 2}, "data")
    with pytest.raises(ValueError, match="needs `model`"):
        make_distribution(mode="fsdp")
    distribution = make_distribution(
        mode="fsdp", model="openvision2_captioner_tiny_patch14_84"
    )
    assert isinstance(distribution, keras.distribution.ModelParallel)
    assert distribution.batch_dim_name == "data"


def test_each_host_reads_its_part_of_the_batch():
    # One process: it reads everything.
    assert data_shard(make_distribution()) == (0, 1)
    assert per_host_batch_size(8, make_distribution()) == 8
    # 4 hosts, 2 replicas (a "model" axis spanning pairs of hosts): hosts
    # 2 and 3 hold replica 1 and read the same half of each batch.
    replica = types.SimpleNamespace(num_processes=4, num_model_replicas=2, data_shard_id=1)
    assert data_shard(replica) == (1, 2)
    assert per_host_batch_size(64, replica) == 32
    # 2 hosts, 8 replicas: each host reads its own half.
    hosts = types.SimpleNamespace(num_processes=2, num_model_replicas=8, data_shard_id=1)
    assert data_shard(hosts) == (1, 2)
    with pytest.raises(ValueError, match="12 must be divisible by the 8 data-parallel"):
        per_host_batch_size(12, hosts)
