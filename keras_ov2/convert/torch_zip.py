"""Reads PyTorch checkpoints (`torch.save`'s zip format) without torch, safely.

The zip holds `<archive>/data.pkl`, a pickle of the saved object in which each
tensor is a call of `torch._utils._rebuild_tensor_v2` on a storage named by a
persistent id `("storage", torch.<Type>Storage, key, location, numel)`; the
storage's bytes are the member `<archive>/data/<key>`. Unpickling calls every
global a pickle names, so a file from anywhere could run code: this unpickler
admits only the globals that rebuild tensors and state dicts, each mapped to
code of this module, and refuses any other before it is called.

Tensors come back as `StoredArray`s: their bytes are read on `read()`, so a
converter holds one tensor at a time.
"""

import collections
import functools
import io
import pickle
import reprlib
import sys
import zipfile
from typing import NamedTuple

import ml_dtypes
import numpy as np

from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.convert.checkpoint import StoredArray

# The storage types torch.save pickles (as `torch.<name>`) for these dtypes.
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# torch._utils functions a state dict's pickle calls -> TensorUnpickler methods.
REBUILDERS = {
    "_rebuild_tensor_v2": "rebuild_tensor",  # every tensor
    "_rebuild_parameter": "rebuild_parameter",  # an nn.Parameter
    "_rebuild_parameter_with_state": "rebuild_parameter",  # one with attributes
}

# The pickled magic number that opens a file in torch's pre-1.6 format.
LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# What zipfile raises on a damaged archive.
ZIP_ERRORS = (zipfile.BadZipFile, EOFError, ValueError, KeyError)


class StorageType(NamedTuple):
    """Stands for a `torch.<Type>Storage` global (immutable, so a pickle
    cannot alter it)."""

    dtype: np.dtype


class Storage(NamedTuple):
    """One storage's zip member, which only `read_view` opens."""

    path: str
    member: str
    dtype: np.dtype
    numel: int
    swap: bool  # stored in the other byte order


def unreadable(path, reason):
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})")


def refused(path, what):
    return CheckpointError(
        f"{path}: refused to load: this pickle {what}; "
        "keras_ov2 only rebuilds tensors (reads without torch). Use a "
        "checkpoint from a source you trust, ideally .safetensors."
    )


def load(path):
    """The object `torch.save` wrote to `path`, each tensor a `StoredArray`."""
    path = str(path)
    with open_archive(path) as archive:
        prefix, data, swap = read_records(path, archive)
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    unpickler = TensorUnpickler(path, data, prefix, sizes, swap)
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as error:  # any malformed pickle; nothing here runs its code
        raise unreadable(path, f"a corrupt pickle: {type(error).__name__}: {error}") from None


def open_archive(path):
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as file:
            head = file.read(32)
        if head.startswith(b"\x80") and LEGACY_MAGIC in head:
            raise unreadable(
                path,
                "torch's legacy format from before torch 1.6; re-save it with "
                "a recent torch (torch.save) or, better, as .safetensors",
            ) from None
        raise unreadable(path, "not a zip archive, or a truncated one") from None
    except ZIP_ERRORS as error:
        raise unreadable(path, f"a damaged zip archive: {error}") from None


def read_records(path, archive):
    """The archive's folder, the pickle and whether storages need a byte swap.

    Like torch, takes the folder of the first member; files without a
    `byteorder` record come from torch versions that ran on little-endian
    machines."""
    names = archive.namelist()
    prefix = names[0].split("/")[0] if names else ""
    if f"{prefix}/data.pkl" not in names:
        raise unreadable(path, "no data.pkl in the zip archive")
    try:
        data = archive.read(f"{prefix}/data.pkl")
        order = "little"
        if f"{prefix}/byteorder" in names:
            order = archive.read(f"{prefix}/byteorder").decode("ascii", "replace")
    except ZIP_ERRORS as error:
        raise unreadable(path, f"a damaged zip archive: {error}") from None
    if order not in ("little", "big"):
        raise unreadable(path, f"unknown byteorder {order!r}")
    return prefix, data, order != sys.byteorder


class TensorUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl`, admitting only what rebuilds tensors and state
    dicts. Admitted functions are bound methods, made afresh on each lookup,
    so a pickle cannot set attributes on shared code."""

    def __init__(self, path, data, prefix, sizes, swap):
        super().__init__(io.BytesIO(data))
        self.path = path
        self.prefix = prefix
        self.sizes = sizes  # zip member -> bytes
        self.swap = swap

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in REBUILDERS:
            return getattr(self, REBUILDERS[name])
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(np.dtype(STORAGE_DTYPES[name]))
        raise refused(self.path, f"calls {module}.{name}, which could run code")

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and pid[4] >= 0
        ):
            raise refused(
                self.path, f"names {reprlib.repr(pid)} as an external object, not a tensor storage"
            )
        _, storage_type, key, _location, numel = pid
        member = f"{self.prefix}/data/{key}"
        if member not in self.sizes:
            raise unreadable(self.path, f"no storage {member}")
        nbytes = numel * storage_type.dtype.itemsize
        if self.sizes[member] != nbytes:
            raise unreadable(
                self.path, f"{member} holds {self.sizes[member]} bytes, not {nbytes}"
            )
        return Storage(self.path, member, storage_type.dtype, numel, self.swap)

    def rebuild_tensor(
        self, storage, offset, size, stride, requires_grad, backward_hooks, metadata=None
    ):
        """A tensor's view of `storage`, as a `StoredArray`."""
        if not isinstance(storage, Storage):
            raise unreadable(self.path, f"a tensor on {reprlib.repr(storage)}, not a storage")
        if metadata:  # torch's lazy negation / conjugation bits
            raise unreadable(self.path, f"a tensor flagged {reprlib.repr(metadata)}")
        extent = view_extent(storage, offset, size, stride)
        if extent is None:
            raise unreadable(
                self.path,
                f"a tensor of size {reprlib.repr(size)}, stride {reprlib.repr(stride)} "
                f"at offset {reprlib.repr(offset)} outside its storage of {storage.numel}",
            )
        read = functools.partial(read_view, storage, offset, extent, tuple(size), tuple(stride))
        return StoredArray(size, storage.dtype, read)

    def rebuild_parameter(self, data, requires_grad, backward_hooks, state=None):
        """An `nn.Parameter` is its tensor here."""
        return data


def view_extent(storage, offset, size, stride):
    """How many elements from `offset` the view spans, or None if it is not a
    valid view inside `storage` (a hostile layout would read out of bounds)."""

    def naturals(values):
        return isinstance(values, (tuple, list)) and all(
            isinstance(n, int) and n >= 0 for n in values
        )

    if not (naturals((offset,)) and naturals(size) and naturals(stride)):
        return None
    if len(size) != len(stride):
        return None
    extent = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride))
    return extent if offset + extent <= storage.numel else None


def read_view(storage, offset, extent, shape, strides):
    """Reads the bytes the view spans straight into a new array; the tensor,
    C-ordered (one copy only when the view is not already that)."""
    itemsize = storage.dtype.itemsize
    flat = np.empty(extent, storage.dtype)
    try:
        with zipfile.ZipFile(storage.path) as archive, archive.open(storage.member) as member:
            member.seek(offset * itemsize)
            filled = member.readinto(flat.view(np.uint8)) if extent else 0
    except ZIP_ERRORS as error:
        raise unreadable(storage.path, f"{storage.member}: {error}") from None
    if filled != extent * itemsize:
        raise unreadable(storage.path, f"{storage.member} is truncated")
    if storage.swap:
        flat.byteswap(inplace=True)
    if strides == contiguous_strides(shape) and flat.size == int(np.prod(shape)):
        return flat.reshape(shape)
    view = np.lib.stride_tricks.as_strided(flat, shape, [s * itemsize for s in strides])
    return np.array(view, order="C")


def contiguous_strides(shape):
    """The element strides of a C-ordered array of `shape`."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
