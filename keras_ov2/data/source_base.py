"""What the record sources share: paths, construction errors, error records,
recommended training settings.

Every source takes "one path, a glob, or a list of them" and fails at
construction, naming what it looked for, rather than on the first read; and
every source answers a record it cannot parse with an error record instead of
raising, so that one bad record is counted and skipped, not fatal.
"""

import dataclasses
import glob
import os
from pathlib import Path

LAYOUTS = (
    "supported: a folder holding captions.jsonl and the images it names; ArrayRecord "
    "shards (*.array_record, from `ov2 data build`); WebDataset tar shards (*.tar, "
    "from img2dataset); Parquet files with an image bytes column (*.parquet); or a "
    "folder, glob or list of shards of one of these kinds"
)

# Fields a source sets itself; a data file's fields of these names are dropped.
RESERVED = ("key", "image", "error", "detail")


@dataclasses.dataclass(frozen=True)
class TrainingDefaults:
    """Pretraining settings that suit a source's records, declared as its
    `training_defaults` attribute: `pretrain` applies them where not told
    otherwise (None: no opinion, the authors' setting applies). `label`
    names them in the run header, e.g. "the built-in scenes' default".
    `preset`: the captioner to train from scratch, e.g. one whose tokenizer
    holds the records' closed vocabulary."""

    label: str
    keep_ratio: float | None = None
    augment: bool | None = None
    caption_field: str | None = None
    preset: str | None = None


class SourceError(ValueError):
    """A whole file or folder that cannot be read as a source (missing, wrong
    format, no image column, ...). One bad record is never a SourceError."""


def expand(paths, what):
    """`paths` (a path or glob, or a list of them) -> the files, in the order
    given, each glob's matches sorted. `what` names the expected files in the
    error, e.g. "tar shards (*.tar)"."""
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not patterns:
        raise SourceError(f"No {what} given.")
    files = []
    for pattern in map(os.fspath, patterns):
        found = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        found = [f for f in found if Path(f).is_file()]
        if not found:
            raise SourceError(f"{pattern}: no such file; expected {what}.")
        files.extend(found)
    return files


def describe(files):
    """A short name for a list of files, for reprs: the first one and a count."""
    more = f" and {len(files) - 1} more" if len(files) > 1 else ""
    return f"{files[0]!r}{more}"


def error_record(key, detail, reason="unreadable_record"):
    """The raw record of a source that could not read record `key`."""
    return {"key": key, "error": reason, "detail": detail}
