"""`build_array_record`: any source -> checked ArrayRecord shards.

Web data is checked once, here, instead of at every epoch: records that the
pipeline would skip (bad images, bad captions) are counted and left out, and
the rest are stored as found (the image bytes are decoded to check them, never
re-encoded), in the format Grain reads fastest.
"""

import dataclasses
import io
import json
from collections import Counter
from pathlib import Path

import keras
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from keras_ov2.data import record_format
from keras_ov2.data.array_record_source import SUMMARY
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record
from keras_ov2.data.decode import decode_caption
from keras_ov2.data.decode import record_caption


def checked(record, caption_fields, key):
    """The record as stored: key, image bytes and its storable fields; or
    BadRecord when the pipeline could not use it for every caption field."""
    record = {"key": key, **record}
    image, _ = check_record(record, caption_fields[0])
    for field in caption_fields:
        record_caption(record, field)  # the field is there and its first caption is good
        if isinstance(record[field], (list, tuple)):  # so is every other one
            for caption in record[field]:
                if caption is not None:
                    decode_caption(caption, key, field)
    stored = {k: v for k, v in record.items()
              if k not in ("image", "error", "detail") and record_format.storable(v)}
    stored["image"] = png(image) if isinstance(record["image"], np.ndarray) else record["image"]
    return stored


def png(image):
    """A uint8 (H, W, 3) array (the built-in scenes) -> PNG bytes, lossless."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ShardWriter:
    """Writes encoded records to shards of `records_per_shard`, under hidden
    ".partial" names until `close` knows the count N and names them
    `name-0000i-of-0000N.array_record`: a glob never sees a half-written set."""

    def __init__(self, out, name, records_per_shard):
        self.out, self.name, self.records_per_shard = out, name, records_per_shard
        self.parts, self.written, self._writer = [], 0, None

    def write(self, data):
        if self.written % self.records_per_shard == 0:
            self._close_part()
            self.parts.append(self.out / f".{self.name}-{len(self.parts):05d}.partial")
            self._writer = ArrayRecordWriter(str(self.parts[-1]), "group_size:1")
        self._writer.write(data)
        self.written += 1

    def close(self):
        """Closes the last shard and renames them all; returns their paths."""
        self._close_part()
        count = len(self.parts)
        shards = [self.out / f"{self.name}-{i:05d}-of-{count:05d}.array_record"
                  for i in range(count)]
        for part, shard in zip(self.parts, shards):
            part.rename(shard)
        return shards

    def abort(self):
        self._close_part()
        for part in self.parts:
            part.unlink(missing_ok=True)

    def _close_part(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def build_array_record(source, out_dir, caption_fields=None, records_per_shard=10_000,
                       name="data", verbose=1):
    """Writes the good records of `source` to `out_dir/name-00000-of-0000N.array_record`.

    Args:
        source: a random-access source of raw records (any `keras_ov2.data`
            source, `SyntheticScenes`, or a sequence of dicts).
        out_dir: folder to write; it must not hold shards named `name` yet.
        caption_fields: the caption field(s) every record must have (default
            "caption"); every other text field is kept too.
        records_per_shard: records per shard file.
        name: the shards' file name prefix.
        verbose: 0 silent, 1 a progress bar and the summary.

    Returns:
        The summary, also written to `out_dir/summary.json`: records read and
        written, records skipped by reason, shard file names and bytes, and
        the source's `training_defaults` (the shards' reader declares them).
    """
    if isinstance(caption_fields, str):
        caption_fields = [caption_fields]
    fields = list(caption_fields or ["caption"])
    if records_per_shard < 1:
        raise ValueError(f"`records_per_shard` must be >= 1, got {records_per_shard}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{name}-*.array_record"))
    if existing:
        raise FileExistsError(f"{out} already holds {existing[0].name}; choose an empty "
                              "folder or another name.")
    writer, skipped = ShardWriter(out, name, records_per_shard), Counter()
    progress = keras.utils.Progbar(len(source), verbose=verbose, interval=1.0,
                                   stateful_metrics=["written", "skipped"], unit_name="record")
    try:
        for index in range(len(source)):
            record = source[index]
            key = record.get("key", f"{type(source).__name__}/{index}")
            try:
                writer.write(record_format.encode_record(checked(record, fields, key)))
            except BadRecord as error:
                skipped[error.reason] += 1
            progress.update(index + 1, [("written", writer.written),
                                        ("skipped", sum(skipped.values()))])
    except BaseException:
        writer.abort()
        raise
    shards = writer.close()
    summary = {
        "source": repr(source),
        "caption_fields": fields,
        "records_read": len(source),
        "records_written": writer.written,
        "skipped": dict(skipped.most_common()),
        "shards": [s.name for s in shards],
        "bytes": sum(s.stat().st_size for s in shards),
        "training_defaults": recorded(source),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(describe(summary, out))
    return summary


def recorded(source):
    """The source's `training_defaults` as JSON, or None."""
    defaults = getattr(source, "training_defaults", None)
    return None if defaults is None else dataclasses.asdict(defaults)


def describe(summary, out):
    """The summary in two lines, for people."""
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items())
    return (f"Read {summary['records_read']} records from {summary['source']}; wrote "
            f"{summary['records_written']} in {len(summary['shards'])} shards "
            f"({summary['bytes'] / 2**20:.1f} MiB) to {out}.\n"
            f"Skipped {sum(summary['skipped'].values())}" + (f": {skipped}." if skipped else "."))
