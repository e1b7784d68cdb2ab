"""img2dataset-style WebDataset tar shards, read by random access.

A sample is the group of members sharing a key (the member name up to the
first dot of its base name): "000123.jpg", "000123.txt", "000123.json".
Construction reads every tar header once and remembers where each member's
bytes are, so that `__getitem__` is one seek and read: Grain can then shuffle
and shard the samples like any random-access source.
"""

import json
import os
import tarfile

from keras_ov2.data.source_base import RESERVED
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.source_base import describe
from keras_ov2.data.source_base import error_record
from keras_ov2.data.source_base import expand

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_name(name):
    """"part/000123.caption.txt" -> ("part/000123", "caption.txt")."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def index_tar(path):
    """{key: {extension: (offset, size)}} of one uncompressed tar, in file order."""
    samples = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile():
                    key, extension = split_name(member.name)
                    samples.setdefault(key, {})[extension] = (member.offset_data, member.size)
    except tarfile.TarError as error:
        raise SourceError(f"{path}: not an uncompressed tar file ({error}); expected "
                          "WebDataset shards as img2dataset writes them.") from None
    return samples


def text(data):
    """Caption file bytes -> str, or the bytes themselves when not UTF-8
    (so that the pipeline can count them as caption_not_utf8)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


class WebDatasetSource:
    """A Grain random-access source over WebDataset tar shards (a path, a glob,
    or a list of them), globs in sorted order.

    A record holds "key" ("shard.tar/000123"), "image" (the bytes of the
    .jpg/.jpeg/.png/.webp member, as stored), "caption" (the .txt member) and
    the text fields of the .json member (e.g. "re_caption"); a .json that is
    not a JSON object gives an "unreadable_record" error record.
    """

    def __init__(self, paths):
        self.paths = expand(paths, "tar shards (*.tar)")
        self._samples = []  # (file index, key, {extension: (offset, size)})
        for file, path in enumerate(self.paths):
            self._samples.extend((file, k, m) for k, m in index_tar(path).items())
        self._files = {}

    def __len__(self):
        return len(self._samples)

    def __repr__(self):
        return f"WebDatasetSource({describe(self.paths)}, {len(self)} records)"

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}  # open files stay in their process

    def __getitem__(self, index):
        file, key, members = self._samples[index]
        key = f"{os.path.basename(self.paths[file])}/{key}"
        record = {"key": key}
        if "json" in members:
            try:
                fields = json.loads(self._read(file, *members["json"]))
                if not isinstance(fields, dict):
                    raise ValueError(f"a JSON {type(fields).__name__}, expected an object")
            except ValueError as error:  # also UnicodeDecodeError
                return error_record(key, f"bad {key}.json: {error}")
            record.update((k, v) for k, v in fields.items()
                          if k not in RESERVED and isinstance(v, (str, list)))
        if "txt" in members:
            record["caption"] = text(self._read(file, *members["txt"]))
        image = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if image is not None:
            record["image"] = self._read(file, *members[image])
        return record

    def _read(self, file, offset, size):
        """`size` bytes at `offset`: pread, so Grain's reader threads can share a file."""
        handle = self._files.get(file)
        if handle is None:  # a racing thread's extra handle is closed when dropped
            handle = self._files.setdefault(file, open(self.paths[file], "rb", buffering=0))
        return os.pread(handle.fileno(), size, offset)
