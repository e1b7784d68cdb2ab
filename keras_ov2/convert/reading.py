"""Reads checkpoint files into flat `{key: numpy array}` dicts, safely.

PyTorch pickles are opened with `torch.load(weights_only=True)` only: a file
that would run code or build anything but tensors is refused, never run.
"""

import json
import pickle
import re
from pathlib import Path

import numpy as np

from keras_ov2.convert.checkpoint import CheckpointError

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def require_file(path, what):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def import_torch(path):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path} needs PyTorch (pip install torch), or convert it "
            "to .safetensors first."
        ) from None
    return torch


def to_numpy(tensor, torch):
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.to(torch.float32)  # numpy has no bfloat16
    return tensor.numpy()


def read_torch(path):
    torch = import_torch(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # A pickle can only reach code through a global it names.
        found = re.search(r"Unsupported global: (GLOBAL \S+)", str(error))
        if not found:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (torch.load with "
                "weights_only=True cannot parse it)."
            ) from None
        raise CheckpointError(
            f"{path}: refused to load: this pickle calls {found.group(1)}, so it "
            "could run code when loaded. keras_ov2 only opens PyTorch files with "
            "torch.load(weights_only=True); use a checkpoint from a source you "
            "trust, ideally as .safetensors."
        ) from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error}).") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]  # a training checkpoint
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors).")
    return {key.removeprefix("module."): to_numpy(v, torch) for key, v in payload.items()}


def read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors import safe_open

    try:
        torch = import_torch(path)
        framework = "pt"
    except ImportError:
        torch, framework = None, "np"
    try:
        with safe_open(str(path), framework=framework) as file:
            return {
                key: to_numpy(file.get_tensor(key), torch) if torch else file.get_tensor(key)
                for key in file.keys()
            }
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({error}).") from None


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
