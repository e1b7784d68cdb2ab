"""Records stored by `ov2 data build`: ArrayRecord shards of `record_format` records.

The primary format: random access without an index built at start-up, and
Grain reads it natively (lazy per-process readers, picklable).
"""

import bisect
import dataclasses
import itertools
import json
import os
from pathlib import Path

import grain
from array_record.python.array_record_module import ArrayRecordReader

from keras_ov2.data import record_format
from keras_ov2.data.source_base import SourceError
from keras_ov2.data.source_base import TrainingDefaults
from keras_ov2.data.source_base import describe
from keras_ov2.data.source_base import error_record
from keras_ov2.data.source_base import expand

SUMMARY = "summary.json"  # written by `build_array_record` beside the shards


def recorded_defaults(paths):
    """The `TrainingDefaults` of the source these shards were built from, as
    `build_array_record` recorded them beside the shards, so that a source
    stored as shards trains as it would have; None when the shards are not
    all of the build that summary describes, or it recorded none."""
    folders = {Path(p).parent for p in paths}
    if len(folders) != 1:
        return None
    path = folders.pop() / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    fields = summary.get("training_defaults")
    if not fields or not {Path(p).name for p in paths} <= set(summary.get("shards", ())):
        return None
    known = {field.name for field in dataclasses.fields(TrainingDefaults)}
    if not isinstance(fields, dict) or set(fields) - known:
        raise SourceError(f"{path}: training_defaults must be an object with fields from "
                          f"{sorted(known)}; got {fields!r}.")
    return TrainingDefaults(**fields)


def count_records(path):
    """Records in one ArrayRecord file, or SourceError naming it."""
    reader = ArrayRecordReader(os.fspath(path))
    try:
        count = reader.num_records() if reader.ok() else None
        reader.close()  # raises the reader's complaint when it is not ok
    except RuntimeError as error:
        raise SourceError(f"{path}: not an ArrayRecord file ({error}); expected shards as "
                          "written by `ov2 data build`.") from None
    return count


class ArrayRecordSource:
    """A Grain random-access source over ArrayRecord shards (a path, a glob, or
    a list of them), globs in sorted order. Records are raw record dicts; one
    whose bytes are not a keras_ov2 record gives an "unreadable_record" error
    record. `training_defaults`: those of the source the shards were built
    from (see `recorded_defaults`)."""

    def __init__(self, paths):
        self.paths = expand(paths, "ArrayRecord shards (*.array_record)")
        self.training_defaults = recorded_defaults(self.paths)
        counts = [count_records(p) for p in self.paths]
        self._ends = list(itertools.accumulate(counts))
        # Counted once here, so Grain's source need not open every file again.
        self._source = grain.sources.ArrayRecordDataSource(
            [f"{p}[0:{n}]" for p, n in zip(self.paths, counts)]
        )

    def __len__(self):
        return self._ends[-1]

    def __repr__(self):
        return f"ArrayRecordSource({describe(self.paths)}, {len(self)} records)"

    def __getitem__(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        try:
            record = record_format.decode_record(self._source[index])
        except record_format.RecordFormatError as error:
            return error_record(self._location(index), str(error))
        record.setdefault("key", self._location(index))
        return record

    def _location(self, index):
        """"shard.array_record/position": where record `index` is stored."""
        file = bisect.bisect_right(self._ends, index)
        position = index - (self._ends[file - 1] if file else 0)
        return f"{os.path.basename(self.paths[file])}/{position}"
