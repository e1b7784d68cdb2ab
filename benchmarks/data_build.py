"""How much faster does `ov2 data build` go with worker processes?

Builds ArrayRecord shards (`build_array_record`) from the same in-memory
web-like JPEG records (`input_pipeline.web_like_jpegs`: 512x384, quality 90,
as img2dataset stores them; `--distinct` of them, repeated) in this process, with 1 worker process and with
`--workers` processes, and prints records/s side by side with the ratio to
this process. The shards are the same each time (checked). Every record's
image is decoded to check it, as a real build does; the times include
starting the workers.

    python benchmarks/data_build.py                  # under a minute on 2 cores
    python benchmarks/data_build.py --records 5000 --workers 4
"""

import argparse
import tempfile
import time
from pathlib import Path

from step_measure import load_average
from step_measure import machine
from step_measure import print_columns


def build_rate(records, workers, records_per_shard, folder):
    """(records/s, seconds, shard bytes by name) of one build of `records` into `folder`."""
    from keras_ov2.data import build_array_record

    start = time.perf_counter()
    build_array_record(records, folder, records_per_shard=records_per_shard,
                       num_workers=workers, verbose=0)
    seconds = time.perf_counter() - start
    shards = {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.array_record"))}
    return len(records) / seconds, seconds, shards


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--distinct", type=int, default=500,
                        help="different JPEGs, repeated to make --records (faster to make)")
    parser.add_argument("--records-per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--source-size", default="512x384", help="WxH of the JPEGs")
    args = parser.parse_args()
    from input_pipeline import web_like_jpegs  # loads Keras: here, not in the workers

    width, height = (int(v) for v in args.source_size.split("x"))
    jpegs = web_like_jpegs(min(args.distinct, args.records), width, height)
    records = [jpegs[i % len(jpegs)] for i in range(args.records)]
    mean_kb = sum(len(r["image"]) for r in records) / len(records) / 1024
    print(f"{machine()}; load average {load_average()}; {len(records)} records: {len(jpegs)} "
          f"JPEGs of {width}x{height} ({mean_kb:.0f} KB each) repeated, "
          f"{args.records_per_shard} per shard")
    results, first = {}, None
    with tempfile.TemporaryDirectory() as folder:
        for workers in sorted({0, 1, args.workers}):
            rate, seconds, shards = build_rate(records, workers, args.records_per_shard,
                                               Path(folder) / str(workers))
            results[workers], first = (rate, seconds), first or shards
            if shards != first:
                raise SystemExit(f"{workers} workers wrote other shards than this process.")
    print_columns([{"workers": workers or "0 (this process)", "records/s": f"{rate:.0f}",
                    "seconds": f"{seconds:.1f}",
                    "x this process": f"{rate / results[0][0]:.2f}",
                    "x 1 worker": f"{rate / results[1][0]:.2f}"}
                   for workers, (rate, seconds) in results.items()])
    print("The shards were the same for every number of workers.")


if __name__ == "__main__":
    main()
