"""torch_zip: `torch.save` files read without torch, lazily, exactly; malicious
pickles refused before they run; damaged files refused with a clear error."""

import json
import os
import pathlib
import pickle
import shlex
import subprocess
import sys
import zipfile

import keras
import ml_dtypes
import numpy as np
import pytest
import torch

from keras_ov2.convert import torch_zip
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.convert.checkpoint import StoredArray

ROOT = pathlib.Path(__file__).resolve().parent.parent

NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}


def tensors():
    """Every dtype and layout the reader handles, by name."""
    torch.manual_seed(0)
    base = torch.arange(10, dtype=torch.float32)
    linear = torch.nn.Linear(3, 2).state_dict()
    return {
        "f32": torch.randn(2, 3),
        "f64": torch.randn(3, dtype=torch.float64),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(2, 2).bfloat16(),
        "i64": torch.arange(-3, 3),
        "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-7, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),  # stride 0
        "tail": base[2:],  # shares base's storage, at offset 2
        "head": base[:3],
        "linear.weight": linear["weight"],
        "linear.bias": linear["bias"],
        "parameter": torch.nn.Parameter(torch.randn(3)),
    }


def assert_matches(stored, tensor):
    assert isinstance(stored, StoredArray)
    assert stored.shape == tuple(tensor.shape)
    assert stored.dtype == NUMPY_DTYPES[tensor.dtype]
    array = stored.read()
    assert array.dtype == stored.dtype and array.flags.c_contiguous and array.flags.writeable
    # bfloat16 widens to float32 exactly, so the comparison is exact for all.
    np.testing.assert_array_equal(array.astype(np.float32), tensor.detach().float().numpy())


def test_round_trip_of_dtypes_layouts_views_and_parameters(tmp_path):
    saved = tensors()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": saved, "linear": torch.nn.Linear(3, 2).state_dict()}, path)
    with zipfile.ZipFile(path) as archive:
        storages = [n for n in archive.namelist() if "/data/" in n]
    assert len(storages) == len(saved) - 1 + 2  # head and tail share one; Linear adds 2

    loaded = torch_zip.load(path)
    assert sorted(loaded["state_dict"]) == sorted(saved)
    for name, tensor in saved.items():
        assert_matches(loaded["state_dict"][name], tensor)
    assert list(loaded["linear"]) == ["weight", "bias"]  # an OrderedDict, in order


def test_a_plain_tensor_and_a_parameter_as_the_top_level_object(tmp_path):
    tensor = torch.randn(2, 3).t()
    torch.save(tensor, tmp_path / "t.pt")
    assert_matches(torch_zip.load(tmp_path / "t.pt"), tensor)
    parameter = torch.nn.Parameter(torch.randn(4))
    parameter.note = "an attribute: torch pickles _rebuild_parameter_with_state"
    torch.save(parameter, tmp_path / "p.pt")
    assert_matches(torch_zip.load(tmp_path / "p.pt"), parameter)


def rewrite(source, target, changes):
    """A copy of the zip `source`, its members (named without their folder)
    replaced by `changes`' bytes, or dropped where those are None."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = changes.get(info.filename.split("/", 1)[1], old.read(info))
            if data is not None:
                new.writestr(info.filename, data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.int16])
def test_a_big_endian_file_is_byteswapped(tmp_path, dtype):
    tensor = (torch.arange(6) * 37 - 50).to(dtype).reshape(2, 3)
    torch.save({"x": tensor}, tmp_path / "little.pt")
    big = tensor.numpy() if dtype != torch.bfloat16 else tensor.view(torch.int16).numpy()
    rewrite(tmp_path / "little.pt", tmp_path / "big.pt",
            {"byteorder": b"big", "data/0": big.byteswap().tobytes()})
    assert_matches(torch_zip.load(tmp_path / "big.pt")["x"], tensor)


def test_load_reads_no_storage_and_read_only_its_own(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    first, second = torch.randn(3), torch.randn(2, 2)
    torch.save({"first": first, "second": second}, path)
    opened = []
    original_open = zipfile.ZipFile.open

    def spy(archive, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return original_open(archive, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    loaded = torch_zip.load(path)
    assert any(name.endswith("/data.pkl") for name in opened)
    assert not [name for name in opened if "/data/" in name]
    opened.clear()
    np.testing.assert_array_equal(loaded["second"].read(), second.numpy())
    assert opened == ["model/data/1"]


NO_TORCH = """
import json, sys

from tests.load_without_torch import BlockTorch

sys.meta_path.insert(0, BlockTorch())
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was imported")

import numpy as np
from keras_ov2.convert import torch_zip

loaded = torch_zip.load(sys.argv[1])
np.savez(sys.argv[2], **{k: v.read().astype(np.float32) for k, v in loaded.items()})
print(json.dumps({"torch_loaded": "torch" in sys.modules,
                  "dtypes": {k: str(v.dtype) for k, v in loaded.items()}}))
"""


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a JAX subprocess, once")
def test_reads_without_torch(tmp_path):
    saved = tensors()
    torch.save(saved, tmp_path / "model.pt")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path / "model.pt"), str(tmp_path / "out.npz")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch_loaded"] is False
    with np.load(tmp_path / "out.npz") as arrays:
        for name, tensor in saved.items():
            assert report["dtypes"][name] == np.dtype(NUMPY_DTYPES[tensor.dtype]).name
            np.testing.assert_array_equal(arrays[name], tensor.detach().float().numpy())


class Call:
    """Pickles as a call of `function(*args)`, which unpickling runs."""

    def __init__(self, function, *args):
        self.reduced = (function, args)

    def __reduce__(self):
        return self.reduced


def assert_refused(path, *words):
    with pytest.raises(CheckpointError) as refusal:
        torch_zip.load(path)
    message = str(refusal.value)
    assert message.startswith(f"{path}: refused to load")
    for word in words:
        assert word in message


@pytest.mark.parametrize("protocol, global_name", [
    (2, "__builtin__.getattr"),  # torch's default: Path.touch as getattr(Path, "touch")
    (4, "pathlib.Path.touch"),
])
def test_a_pickle_touching_a_file_is_refused_and_never_runs(tmp_path, protocol, global_name):
    marker = tmp_path / "touched"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "evil": Call(pathlib.Path.touch, marker)}, path,
               pickle_protocol=protocol)
    assert_refused(path, global_name)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unrestricted unpickler does
    assert marker.exists()


def test_a_pickle_calling_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    command = f"touch {shlex.quote(str(marker))}"
    torch.save({"evil": Call(os.system, command), "weight": torch.ones(2)}, path)
    assert_refused(path, f"{os.system.__module__}.system")
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def hand_written(path, pid, tensor=None):
    """A zip of the storage [1, 2, 3] and a pickle of `tensor` (a float tensor
    of 3 elements unless given), which names its storage by `pid`."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return pid if isinstance(obj, torch.storage.TypedStorage) else None

    with open(path.with_suffix(".pkl"), "wb") as file:
        Pickler(file, protocol=2).dump({"x": torch.ones(3) if tensor is None else tensor})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", path.with_suffix(".pkl").read_bytes())
        archive.writestr("archive/byteorder", sys.byteorder)
        archive.writestr("archive/data/0", np.array([1, 2, 3], np.float32).tobytes())
    return path


def test_a_hand_written_zip_with_the_right_persistent_id_loads(tmp_path):
    path = hand_written(tmp_path / "good.pt", ("storage", torch.FloatStorage, "0", "cpu", 3))
    np.testing.assert_array_equal(torch_zip.load(path)["x"].read(), [1, 2, 3])


@pytest.mark.parametrize("tensor", [
    torch.arange(4.0)[1:],  # offset 1: one element past the storage
    torch.ones(2, 2),  # 4 elements from a storage of 3
])
def test_a_view_reaching_past_its_storage_is_unreadable(tmp_path, tensor):
    pid = ("storage", torch.FloatStorage, "0", "cpu", 3)
    path = hand_written(tmp_path / "odd.pt", pid, tensor)
    with pytest.raises(CheckpointError, match="outside its storage of 3"):
        torch_zip.load(path)


@pytest.mark.parametrize("pid", [
    "0",
    ("storage", torch.FloatStorage, "0", "cpu"),
    ("storage", "FloatStorage", "0", "cpu", 3),
    ("module", torch.FloatStorage, "0", "cpu", 3),
])
def test_a_persistent_id_of_another_form_is_refused(tmp_path, pid):
    assert_refused(hand_written(tmp_path / "odd.pt", pid), "not a tensor storage")


@pytest.mark.parametrize("pid, reason", [
    (("storage", torch.FloatStorage, "1", "cpu", 3), "no storage archive/data/1"),
    (("storage", torch.FloatStorage, "0", "cpu", 4), "holds 12 bytes, not 16"),
])
def test_a_persistent_id_not_matching_the_storages_is_unreadable(tmp_path, pid, reason):
    path = hand_written(tmp_path / "odd.pt", pid)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as error:
        torch_zip.load(path)
    assert reason in str(error.value)


# name -> writes a damaged or unsupported file at `path`, given a good one.
BAD_FILES = {
    "random.pt": lambda good, path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
    "truncated.pt": lambda good, path: path.write_bytes(  # cut in half
        good.read_bytes()[: good.stat().st_size // 2]),
    "legacy.pt": lambda good, path: torch.save(
        {"weight": torch.ones(2)}, path, _use_new_zipfile_serialization=False),
    "no_pickle.pt": lambda good, path: rewrite(good, path, {"data.pkl": None}),
    "no_storage.pt": lambda good, path: rewrite(good, path, {"data/0": None}),
    "corrupt_pickle.pt": lambda good, path: rewrite(
        good, path, {"data.pkl": b"\x80\x02}q\x00(X\x01"}),
    "empty_zip.pt": lambda good, path: zipfile.ZipFile(path, "w").close(),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_damaged_or_legacy_file_is_not_readable(tmp_path, name):
    good, path = tmp_path / "good.pt", tmp_path / name
    torch.save({"weight": torch.randn(64, 64)}, good)
    BAD_FILES[name](good, path)
    with pytest.raises(CheckpointError) as error:
        torch_zip.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint (")
    assert message.count("not a readable") == 1
    if name == "legacy.pt":
        assert "legacy" in message and ".safetensors" in message
