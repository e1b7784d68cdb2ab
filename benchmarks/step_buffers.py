"""Where a train step's memory goes: the buffers live at the step's peak, by
what made them.

`ov2_vs_ov1.py` reports one number per step (XLA's peak); this script opens
it up. For OV1 (`OpenVisionCLIPS`) and OV2 (`OpenVision2Captioner`, keep
0.35) at the same encoder, each in its own process, it compiles the JAX train
step (forward, loss, backward, AdamW; state donated, as `fit` does) with
XLA's dumps on, and reads XLA's own accounting of the optimized step:

- `*-live-range.txt`: the buffers live at the peak of the schedule, with
  their sizes (their sum is the peak XLA plans for);
- `*after_optimizations.txt`: each buffer's instruction, its shape and the
  `op_name` JAX recorded for it: the Keras layer path (Keras names a scope
  per layer) and the primitive, inside `jvp(...)` for the forward pass and
  `transpose(jvp(...))` for the backward one.

It prints, per model, the largest buffers live at the peak (size, shape,
maker) and the peak summed by maker (the layer path with block numbers
folded, forward or backward, and the primitive); step arguments (weights,
optimizer slots, the batch) are one group.

    python benchmarks/step_buffers.py                       # Ti/16 @224, batch 32
    python benchmarks/step_buffers.py --encoder s16 --image-size 84 --batch-size 8 --top 20

JAX backend, CPU (or whatever device JAX sees; the dump files are XLA's
CPU names).
"""

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

from ov2_vs_ov1 import ENCODER_PRESETS
from step_measure import backend_line
from step_measure import caption_batch
from step_measure import compile_train_step
from step_measure import ov1_batch
from step_measure import print_columns
from step_measure import print_result
from step_measure import run_workers
from step_measure import xla_peak_bytes

OV2_KEEP_RATIO = 0.35
MIB = 2.0**-20

PEAK_HEADER = re.compile(r"^\s*Live ranges at \d+ \(peak\):\s*$")
LIVE_BUFFER = re.compile(r"^\s+(\S+?)(?:\{[^}]*\})?: (\d+) bytes")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]*)"')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="ti16", choices=sorted(ENCODER_PRESETS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top", type=int, default=12, help="rows per table (default %(default)s)")
    parser.add_argument("--worker", choices=("ov1", "ov2"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def peak_buffers(live_range_text):
    """[(instruction name, bytes)] of the buffers live at the peak."""
    lines = iter(live_range_text.splitlines())
    for line in lines:
        if PEAK_HEADER.match(line):
            break
    else:
        raise ValueError("no 'Live ranges at N (peak)' section in XLA's live-range dump")
    found = []
    for line in lines:
        match = LIVE_BUFFER.match(line)
        if not match:
            break
        found.append((match.group(1), int(match.group(2))))
    return found


def instructions(hlo_text):
    """{instruction name: (shape, opcode, op_name or "")} of an HLO module's text."""
    found = {}
    for line in hlo_text.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            op_name = OP_NAME.search(line)
            found[match.group(1)] = (*match.group(2, 3), op_name.group(1) if op_name else "")
    return found


def maker(opcode, op_name):
    """A buffer's maker from the op_name JAX recorded, e.g.
    "jit(train_step)/transpose(jvp(open_vision2_backbone))/transformer_layer_3/mlp_norm/mul"
    -> "open_vision2_backbone/transformer_layer_*/mlp_norm/mul (backward)":
    transformations unwrapped, block numbers folded."""
    if opcode == "parameter":
        return "step argument (weights, optimizer, batch)"
    if not op_name:
        return f"{opcode} (no op_name)"
    direction = " (backward)" if "transpose(" in op_name else " (forward)" if "jvp(" in op_name else ""
    parts = []
    for part in op_name.split("/"):
        while (wrapped := re.fullmatch(r"\w+\((.*)\)", part)):
            part = wrapped.group(1)
        if part and part != "train_step":
            parts.append(part)
    path = re.sub(r"transformer_layer_\d+", "transformer_layer_*", "/".join(parts))
    return path + direction


def read_dump(directory):
    """The peak buffers of the train step dumped in `directory`, each a dict
    of name, bytes, shape and maker."""
    def one(pattern):
        paths = sorted(glob.glob(os.path.join(directory, f"*train_step*{pattern}")))
        if not paths:
            raise FileNotFoundError(f"XLA wrote no *train_step*{pattern} in {directory}")
        with open(paths[-1]) as f:
            return f.read()

    hlo = instructions(one("after_optimizations.txt"))
    rows = []
    for name, size in peak_buffers(one("after_optimizations-live-range.txt")):
        shape, opcode, op_name = hlo.get(name, ("?", "?", ""))
        rows.append({"name": name, "bytes": size, "shape": shape,
                     "maker": maker(opcode, op_name)})
    return rows


def run_worker(args):
    dump = tempfile.mkdtemp(prefix="step_buffers_")
    # Before JAX starts: XLA reads its flags once.
    os.environ["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={dump}",
        "--xla_dump_hlo_module_re=train_step",
    ]).strip()
    import jax
    import keras

    from keras_ov2.models import OpenVisionCLIPS
    from keras_ov2.training import load_captioner

    keras.utils.set_random_seed(0)
    ov1_preset, ov2_preset = ENCODER_PRESETS[args.encoder]
    size = args.image_size
    if args.worker == "ov1":
        model = OpenVisionCLIPS.from_preset(ov1_preset, load_weights=False)
        batch = ov1_batch(model, args.batch_size, size)
    else:
        model = load_captioner(ov2_preset, keep_ratio=OV2_KEEP_RATIO, seed=0)
        length = model.preprocessor.sequence_length
        batch = caption_batch(args.batch_size, size, length, model.decoder.vocabulary_size)
    model.compile(learning_rate=1e-4, total_steps=1000)
    compiled, _, _ = compile_train_step(model, batch)
    peak = xla_peak_bytes(compiled.memory_analysis())
    buffers = read_dump(dump)
    shutil.rmtree(dump)
    return {"model": args.worker, "buffers": buffers, "xla_peak_bytes": peak,
            "jax": jax.__version__, "device": jax.default_backend(),
            "keras": keras.__version__, "dtype": keras.config.dtype_policy().name}


def print_model(result, top):
    buffers = sorted(result["buffers"], key=lambda b: -b["bytes"])
    live = sum(b["bytes"] for b in buffers)
    name = "OV1 (OpenVisionCLIPS)" if result["model"] == "ov1" else (
        f"OV2 (OpenVision2Captioner, keep {OV2_KEEP_RATIO})")
    print(f"{name}: {live * MIB:.0f} MiB live at the peak in {len(buffers)} buffers "
          f"(XLA's peak for the step: {result['xla_peak_bytes'] * MIB:.0f} MiB)")
    print("\nlargest buffers live at the peak:")
    print_columns([{"MiB": f"{b['bytes'] * MIB:.1f}", "share": f"{b['bytes'] / live:.0%}",
                    "shape": b["shape"][:40], "maker": b["maker"]} for b in buffers[:top]])
    totals = collections.Counter()
    counts = collections.Counter()
    for b in buffers:
        totals[b["maker"]] += b["bytes"]
        counts[b["maker"]] += 1
    print("\nthe peak by maker:")
    print_columns([{"MiB": f"{size * MIB:.1f}", "share": f"{size / live:.0%}",
                    "buffers": counts[m], "maker": m} for m, size in totals.most_common(top)])
    print()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print_result(run_worker(args))
        return
    started = time.perf_counter()
    workers = [(f"{kind} {args.encoder} @{args.image_size}px", ["--worker", kind])
               for kind in ("ov1", "ov2")]
    results = run_workers(__file__, argv, workers)
    print(f"backend:  {backend_line(results[0])}")
    print(f"step:     {args.encoder} @{args.image_size}px, batch {args.batch_size}, "
          "compiled only (nothing is run)\n")
    for result in results:
        print_model(result, args.top)
    ov1, ov2 = (sum(b["bytes"] for b in r["buffers"]) for r in results)
    print(f"OV2 / OV1 live at the peak: {ov2 / ov1:.2f}")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
