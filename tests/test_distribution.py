"""keras_ov2.distribution: layouts, their errors, and one training step on
8 simulated CPU devices per layout, checked against one device."""

import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ov2
from keras_ov2.distribution import data_shard
from keras_ov2.distribution import make_distribution
from keras_ov2.distribution import per_host_batch_size
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


def placeholder_mesh(shape):
    """A mesh of named devices that need not exist: layout maps read only
    its axis names and sizes, and this process has one device."""
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, ("data", "model"), devices)


def decoder_config(hidden_dim=96, num_heads=3, intermediate_dim=384):
    return keras_ov2.OpenVision2TextDecoder(
        1000, hidden_dim, 1, num_heads, intermediate_dim, name=DECODER
    ).get_config()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Runs tests/distributed_step.py once on 8 simulated CPU devices."""
    out = tmp_path_factory.mktemp("distributed_step")
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
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
    assert fsdp_8[query] == ["data", None]
    assert fsdp_8[f"{DECODER}/head/kernel"] == [None, "data"]
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


def test_heads_that_do_not_divide_the_model_axis_are_refused():
    with pytest.raises(ValueError) as error:
        keras_ov2.OpenVision2TextDecoder.get_layout_map(
            placeholder_mesh((1, 2)), decoder_config(num_heads=3), mode="tensor"
        )
    message = str(error.value)
    for part in (f"{DECODER}/transformer_layer_*/attention/query/kernel",
                 "(96, 96)", "num_heads=3", "2-way 'model'"):
        assert part in message, message


def test_dimensions_that_do_not_divide_the_model_axis_are_refused():
    config = decoder_config(hidden_dim=64, num_heads=8, intermediate_dim=100)
    with pytest.raises(ValueError, match=r"mlp_intermediate/kernel of shape \(64, 100\) over "
                       r"the 8-way 'model' mesh axis: dimension 1 \(size 100\)"):
        keras_ov2.OpenVision2TextDecoder.get_layout_map(
            placeholder_mesh((1, 8)), config, mode="fsdp"
        )


def test_fsdp_keeps_a_variable_replicated_when_no_dimension_divides():
    config = decoder_config(hidden_dim=96, num_heads=3, intermediate_dim=384)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layout_map = keras_ov2.OpenVision2TextDecoder.get_layout_map(
            placeholder_mesh((64, 1)), config, mode="fsdp"
        )
    # 96 and 1000 are not multiples of 64; 384 is.
    warned = sorted(str(w.message).split()[1] for w in caught)
    block = f"{DECODER}/transformer_layer_*/attention"
    expected = [f"{block}/{name}/kernel" for name in ("query", "key", "value", "output")]
    expected += [f"{DECODER}/{path}" for path in
                 ("head/kernel", "token_embedding/embeddings", "visual_projection/kernel")]
    assert warned == sorted(expected)
    block = f"{DECODER}/transformer_layer_0"
    assert layout_map[f"{block}/attention/query/kernel"].axes == (None, None)
    assert layout_map[f"{block}/mlp_intermediate/kernel"].axes == (None, "data")
    assert layout_map[f"{block}/mlp_output/kernel"].axes == ("data", None)


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
