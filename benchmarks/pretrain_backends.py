"""`ov2 pretrain` images/s on JAX, TensorFlow and PyTorch, side by side.

Runs the same `ov2 pretrain` (the built-in scenes and the captioner they
recommend, one stage of STEPS x BATCH at 84 px) once per backend through `--backend`,
each in its own process, and prints the images/s of its progress lines
(compilation and the first window excluded: the median of the later
windows), the wall time of the whole command, and each backend's rate over
JAX's.

    python benchmarks/pretrain_backends.py               # about 6 minutes on 2 cores
    python benchmarks/pretrain_backends.py --steps 120 --batch-size 32
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from step_measure import machine

BACKENDS = ("jax", "tensorflow", "torch")
RATE = re.compile(r"step \d+/\d+: loss [\d.]+, (\d+) images/s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=84)
    return parser.parse_args(argv)


def run(backend, args, folder):
    """(median images/s after the first window, seconds, last loss line)."""
    command = [sys.executable, "-m", "keras_ov2.cli", "--backend", backend, "pretrain",
               "--stages", f"{args.image_size}:{args.steps}:{args.batch_size}",
               "--output", str(folder / backend)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"ov2 pretrain on {backend} failed (exit {done.returncode}).")
    rates = [int(r) for r in RATE.findall(done.stdout)]
    if len(rates) < 2:
        raise SystemExit(f"{backend}: too few progress lines; raise --steps.")
    return statistics.median(rates[1:]), seconds


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = {backend: run(backend, args, Path(folder)) for backend in BACKENDS}
    print(f"\n{machine()}; float32; `ov2 pretrain` {args.steps} steps of {args.batch_size} "
          f"at {args.image_size} px (the scenes' demo captioner)")
    print(f"{'backend':11} | {'images/s':>8} | {'x jax':>5} | {'command s':>9}")
    print("-" * 44)
    base = results["jax"][0]
    for backend, (rate, seconds) in results.items():
        print(f"{backend:11} | {rate:8.0f} | {rate / base:5.2f} | {seconds:9.0f}")


if __name__ == "__main__":
    main()
