"""Reads checkpoint files into flat `{key: array}` dicts, safely, without torch.

PyTorch files are read by `torch_zip`, which rebuilds tensors and refuses
any other object a pickle names, so a malicious file never runs code;
`.safetensors` through safetensors' NumPy API. Tensors come back as
`StoredArray`s, read one at a time when a converter assigns them.
"""

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from keras_ov2.convert import torch_zip
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.convert.checkpoint import StoredArray

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def require_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def is_array(value):
    return isinstance(value, (StoredArray, np.ndarray))


def read_torch(path):
    payload = torch_zip.load(path)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # a training checkpoint
    if not isinstance(payload, dict) or not all(is_array(v) for v in payload.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors).")
    return {key.removeprefix("module."): value for key, value in payload.items()}


def safetensors_bfloat16(path, header_size, entry):
    """One BF16 tensor, which safetensors' NumPy API cannot represent."""
    start, end = entry["data_offsets"]
    with open(path, "rb") as file:
        file.seek(8 + header_size + start)
        data = file.read(end - start)
    return np.frombuffer(data, ml_dtypes.bfloat16).reshape(entry["shape"])


def read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors import safe_open

    def reader(key):
        def read():
            if header[key]["dtype"] == "BF16":
                return safetensors_bfloat16(path, header_size, header[key])
            with safe_open(str(path), framework="np") as file:
                return file.get_tensor(key)
        return read

    try:
        with open(path, "rb") as file:
            (header_size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(header_size))
        with safe_open(str(path), framework="np") as file:  # validates the layout
            keys = list(file.keys())
    except (SafetensorError, OSError, ValueError, struct.error) as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({error}).") from None
    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": "float16", "F32": "float32",
              "F64": "float64", "I64": "int64", "I32": "int32", "I16": "int16",
              "I8": "int8", "U8": "uint8", "BOOL": "bool"}
    arrays = {}
    for key in keys:
        kind = header[key]["dtype"]
        if kind not in dtypes:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {kind}.")
        arrays[key] = StoredArray(header[key]["shape"], dtypes[kind], reader(key))
    return arrays


def read_state_dict(path):
    """A `.safetensors` or PyTorch (`.bin`, `.pt`, `.pth`) state dict."""
    path = require_file(path, "Checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return read_torch(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format; expected .safetensors, "
        f"{', '.join(TORCH_SUFFIXES)} (open_clip) or .npz (JAX parameters)."
    )


def read_json(path):
    path = require_file(path, "Configuration file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}).") from None


def read_npz(path):
    """A JAX parameter tree saved flat: `np.savez(file, **{"a/b/kernel": ...})`."""
    path = require_file(path, "Parameter file")
    try:
        with np.load(path, allow_pickle=False) as file:
            return {key: file[key] for key in file.files}
    except ValueError as error:
        raise CheckpointError(
            f"{path}: refused to load: it holds pickled objects, not plain arrays ({error})."
        ) from None
    except (OSError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable .npz file ({error}).") from None


def find_open_clip_files(folder):
    """(config path, weights path) in a folder of open_clip release files."""
    folder = Path(folder)
    config = folder / OPEN_CLIP_CONFIG
    weights = [folder / name for name in OPEN_CLIP_WEIGHTS if (folder / name).is_file()]
    if not config.is_file() or not weights:
        raise FileNotFoundError(
            f"{folder} does not hold an open_clip release: expected "
            f"{OPEN_CLIP_CONFIG} and one of {', '.join(OPEN_CLIP_WEIGHTS)}."
        )
    return config, weights[0]
