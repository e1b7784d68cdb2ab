"""`build_array_record`: any source -> checked ArrayRecord shards.

Web data is checked once, here, instead of at every epoch: records that the
pipeline would skip (bad images, bad captions) are counted and left out, and
the rest are stored as found (the image bytes are decoded to check them, never
re-encoded), in the format Grain reads fastest.

Shard k holds the good records among source records [k * records_per_shard,
(k + 1) * records_per_shard), so the output is the same however many worker
processes build it. Each shard is written under a hidden ".partial" name,
synced to disk and renamed when complete, then noted in the build's log
(`name.build.jsonl`: the build's options, then one line per finished shard):
running the same build again over an interrupted folder builds only the
shards the log does not hold intact.
"""

import dataclasses
import io
import itertools
import json
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from keras_ov2.data import record_format
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record
from keras_ov2.data.decode import decode_caption
from keras_ov2.data.decode import record_caption
from keras_ov2.durable import durable_replace

LOG = "{name}.build.jsonl"  # the build's options, then one line per finished shard


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


def build_shard(source, caption_fields, shard, start, stop, path):
    """Checks source records [start, stop) and writes the good ones to `path`:
    under a hidden ".partial" name first, renamed once complete and on disk.
    Returns the shard's log entry: its records, bytes and records skipped by reason."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    writer, written, skipped = ArrayRecordWriter(str(partial), "group_size:1"), 0, Counter()
    try:
        for index in range(start, stop):
            record = source[index]
            key = record.get("key", f"{type(source).__name__}/{index}")
            try:
                writer.write(record_format.encode_record(checked(record, caption_fields, key)))
                written += 1
            except BadRecord as error:
                skipped[error.reason] += 1
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    durable_replace(partial, path)
    return {"shard": shard, "records": written, "bytes": path.stat().st_size,
            "skipped": dict(skipped)}


_worker = {}  # a worker process's source and caption fields


def start_worker(source, caption_fields):
    _worker.update(source=source, caption_fields=caption_fields)


def build_in_worker(job):
    return build_shard(_worker["source"], _worker["caption_fields"], *job)


def in_workers(source, caption_fields, jobs, num_workers):
    """Runs `build_shard` for each job in `num_workers` processes ("spawn": the
    parent may hold JAX or TensorFlow); yields their log entries as shards
    finish. When one fails, no new shard starts; the entries of those that
    finished meanwhile are yielded, then its exception is raised."""
    pool = ProcessPoolExecutor(min(num_workers, len(jobs)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=start_worker, initargs=(source, caption_fields))
    futures, yielded, failure = [], set(), None
    try:
        futures = [pool.submit(build_in_worker, job) for job in jobs]
        for future in as_completed(futures):
            failure = future.exception()
            if failure is not None:
                break
            yielded.add(future)
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failure is None:
        return
    for future in futures:  # the shards that finished meanwhile are kept
        if future not in yielded and not future.cancelled() and future.exception() is None:
            yield future.result()
    raise failure


def build_array_record(source, out_dir, caption_fields=None, records_per_shard=10_000,
                       name="data", num_workers=0, verbose=1):
    """Writes the good records of `source` to `out_dir/name-00000-of-0000N.array_record`.

    Args:
        source: a random-access source of raw records (any `keras_ov2.data`
            source, `SyntheticScenes`, or a sequence of dicts); picklable
            when `num_workers` > 0.
        out_dir: folder to write. It must not hold shards named `name` yet,
            except from an interrupted run of this same build, which is then
            resumed: shards complete on disk are kept, the others built.
        caption_fields: the caption field(s) every record must have (default
            "caption"); every other text field is kept too.
        records_per_shard: source records per shard: shard k holds the good
            ones of records [k * records_per_shard, (k + 1) * records_per_shard).
        name: the shards' file name prefix.
        num_workers: processes that build shards side by side ("spawn": a
            script that calls this needs the `if __name__ == "__main__":`
            guard); 0 builds them in this process. The shards are the same
            either way.
        verbose: 0 silent, 1 a progress bar and the summary.

    Returns:
        The summary, also written to `out_dir/summary.json`: records read and
        written, records skipped by reason, shard file names and bytes, and
        the source's `training_defaults` (the shards' reader declares them).

    Raises:
        FileExistsError: `out_dir` holds shards named `name` of another
            build (the message names the options that differ).
    """
    if isinstance(caption_fields, str):
        caption_fields = [caption_fields]
    fields = list(caption_fields or ["caption"])
    if records_per_shard < 1:
        raise ValueError(f"`records_per_shard` must be >= 1, got {records_per_shard}.")
    if num_workers < 0:
        raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(source)
    count = -(-total // records_per_shard)
    shards = [f"{name}-{k:05d}-of-{count:05d}.array_record" for k in range(count)]
    options = {"source": source_name(source), "records": total, "caption_fields": fields,
               "records_per_shard": records_per_shard}
    log = out / LOG.format(name=name)
    done = resumable(out, name, log, options, shards)
    for stray in out.glob(f".{name}-*.partial"):  # of a build that stopped mid-shard
        stray.unlink()
    write_durably(log, "".join(json.dumps(line) + "\n"
                               for line in [{"options": options}, *done.values()]))
    if done and verbose:
        print(f"Resuming the build in {out}: {len(done)} of {count} shards done.")

    jobs = [(k, k * records_per_shard, min(total, (k + 1) * records_per_shard), out / shards[k])
            for k in range(count) if k not in done]
    built = (in_workers(source, fields, jobs, num_workers) if num_workers and jobs
             else (build_shard(source, fields, *job) for job in jobs))
    import keras  # here: worker processes need not load it

    progress = keras.utils.Progbar(total, verbose=verbose, interval=1.0, unit_name="record",
                                   stateful_metrics=["written", "skipped"])
    totals = Counter()
    for entry in itertools.chain(list(done.values()), built):
        if entry["shard"] not in done:
            append_durably(log, json.dumps(entry) + "\n")
            done[entry["shard"]] = entry
        totals.update(read=min(records_per_shard, total - entry["shard"] * records_per_shard),
                      written=entry["records"], skipped=sum(entry["skipped"].values()))
        progress.update(totals["read"], [("written", totals["written"]),
                                         ("skipped", totals["skipped"])])
    skipped = Counter()
    for k in range(count):
        skipped.update(done[k]["skipped"])
    summary = {
        "source": options["source"],
        "caption_fields": fields,
        "records_read": total,
        "records_written": sum(done[k]["records"] for k in range(count)),
        "skipped": dict(skipped.most_common()),
        "shards": shards,
        "bytes": sum(done[k]["bytes"] for k in range(count)),
        "training_defaults": recorded(source),
    }
    from keras_ov2.data.array_record_source import SUMMARY

    write_durably(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(describe(summary, out))
    return summary


def source_name(source):
    """The source's repr; its type and length for a list or tuple of records
    (the repr of in-memory image bytes would be huge) or a type without a
    repr of its own (the object's address would differ on resuming)."""
    if isinstance(source, (list, tuple)) or type(source).__repr__ is object.__repr__:
        return f"{type(source).__name__} of {len(source)} records"
    return repr(source)


def resumable(out, name, log, options, shards):
    """{shard index: log entry} of the shards of an interrupted run of this
    build that are intact on disk (the size and record count the log holds).
    FileExistsError when `out` holds shards named `name` or a log of another
    build, naming what differs."""
    existing = sorted(out.glob(f"{name}-*.array_record"))
    held = (existing[0] if existing else log).name
    if not log.exists():
        if existing:
            raise FileExistsError(f"{out} already holds {held}; choose an empty folder or "
                                  "another name.")
        return {}
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass  # cut short by a crash: that shard is built again
    previous = lines[0].get("options", {}) if lines and isinstance(lines[0], dict) else {}
    differences = [f"{key} was {previous.get(key)!r}, now {value!r}"
                   for key, value in options.items() if previous.get(key) != value]
    if differences:
        raise FileExistsError(
            f"{out} already holds {held} of another build ({'; '.join(differences)}); run "
            f"that build to resume it, or choose an empty folder or another name.")
    entries = {line["shard"]: line for line in lines[1:]
               if isinstance(line, dict) and "shard" in line}
    return {k: entries[k] for k in sorted(entries) if intact(out / shards[k], entries[k])}


def intact(path, entry):
    """Whether shard `path` is as its log entry says: its size and record count."""
    from keras_ov2.data.array_record_source import count_records
    from keras_ov2.data.source_base import SourceError

    try:
        return (path.stat().st_size == entry["bytes"]
                and count_records(path) == entry["records"])
    except (OSError, SourceError):
        return False


def write_durably(path, text):
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    durable_replace(partial, path)


def append_durably(path, text):
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


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
