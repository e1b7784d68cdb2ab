"""OpenVision 2 vs OpenVision (v1) train step at the paper's scale, on a GPU or TPU.

The paper's efficiency table compares the two at ViT-L/14, 224 px, on TPUs
(57 vs 83 TPU v4-512 hours, 13.8 vs 24.5 GB per chip). This script measures
that pair on one accelerator, in bfloat16 (the `mixed_bfloat16` policy:
float32 variables, bfloat16 compute, set before building):
- OV2: `OpenVision2Captioner`, L/14 + decoder L (the authors' pairing, the
  `openvision2_captioner_vit_large_patch14_84` row), keep ratio 0.35,
  captions of 128 ids;
- OV1: `OpenVisionCLIPS` at the same L/14 encoder with a 768-d head, text
  encoder L and caption decoder L (768 wide, 12 blocks: the authors' L/14
  text towers; keras_ov2 ships no L/14 CLIPS preset, so the row is
  `keras_ov2.preset_table.clips("L", 14)`, built as the shipped Ti and S
  ones are), web captions of 80 ids, 128 caption queries.
Both are built from their preset rows (random weights) at the chosen image
size, each in its own process, and their JAX train steps (forward, loss,
backward, AdamW, state donated, as `fit` compiles them) are timed on random
batches. Per model it prints: median and fastest step, images/s, MFU (the
analytic train FLOPs of a step, `keras_ov2.flops` with train = 3 x forward,
over the step time and over the device's bfloat16 matmul peak, measured in
the same run: a jitted 8192^3 matmul, best of 10 in each process, the best
process taken), XLA's peak memory for the compiled step and the device's
own `peak_bytes_in_use` where it reports one; then the OV2 / OV1 ratios
beside the paper's.

    python benchmarks/accelerator_step.py                  # L/14 @224 on a GPU/TPU
    python benchmarks/accelerator_step.py --batch-size 128 --steps 20
    python benchmarks/accelerator_step.py --scale accelerator --dry-run   # build and count only

The defaults depend on `--scale` (default: "accelerator" when JAX's first
device is a GPU or TPU, else "cpu"; see SCALES). The accelerator batch, 64,
is the paper's per-chip batch in its memory table if its v4-64 has 32 chips
(batch 2k). Without an accelerator the same comparison runs reduced, to
finish in a few minutes on 2 cores: Ti/16 (decoder Ti, text towers Ti) at
112 px, batch 8, float32 (bfloat16 matmuls are slower than float32 on CPU),
2 timed steps, a 2048^3 float32 matmul peak. JAX backend only.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keras_ov2.preset_generation import write_presets
from keras_ov2.preset_table import PRESETS
from keras_ov2.preset_table import clips
from keras_ov2.variants import ENCODERS
from keras_ov2.variants import KEEP_RATIO
from ov2_vs_ov1 import PAPER_RATIOS
from ov2_vs_ov1 import train_inputs
from step_measure import backend_line
from step_measure import cell
from step_measure import jax_matmul_peak
from step_measure import measure_train_step
from step_measure import print_columns
from step_measure import print_result
from step_measure import ratio
from step_measure import ratio_cells
from step_measure import run_workers
from step_measure import step_cells
from step_measure import write_json

SCALES = {
    "accelerator": dict(encoder="L/14", image_size=224, batch_size=64,
                        dtype="mixed_bfloat16", steps=10, peak_size=8192),
    "cpu": dict(encoder="Ti/16", image_size=112, batch_size=8,
                dtype="float32", steps=2, peak_size=2048),
}
PEAK_REPEATS = 10
MODELS = {"ov1": "OV1 (OpenVisionCLIPS)", "ov2": f"OV2 (captioner, keep {KEEP_RATIO})"}


def captioner_rows():
    """The authors' encoder names ("L/14") -> keras_ov2's OV2 captioner
    preset rows (their decoder: the authors' pairing, or keras_ov2's where
    the row's note says so)."""
    variants = {size: variant for variant, size in ENCODERS.items()}
    return {
        f"{variants[row.encoder]}/{row.patch_size}": row
        for row in PRESETS
        if row.family == "openvision2_captioner" and row.encoder in variants
    }


def preset_rows(encoder, image_size):
    """{"ov1": CLIPS row, "ov2": captioner row} at `encoder`, at `image_size` px."""
    ov2 = captioner_rows()[encoder]
    ov1 = clips(encoder.split("/")[0], ov2.patch_size)
    return {kind: row._replace(image_size=image_size) for kind, row in (("ov1", ov1), ("ov2", ov2))}


def describe(kind, row):
    """One line: the sizes of a preset row's parts."""
    def size(s):
        return f"{s.width}x{s.depth}"

    encoder = f"encoder {size(row.encoder)}/{row.patch_size}"
    if kind == "ov1":
        parts = (f"{encoder} + {row.projection_dim}-d head, text encoder "
                 f"{size(row.text_encoder)} on {row.sequence_length} ids, caption decoder "
                 f"{size(row.decoder)} with {row.caption_length} queries")
    else:
        parts = (f"{encoder}, decoder {size(row.decoder)}, keep {KEEP_RATIO}, captions of "
                 f"{row.sequence_length} ids")
    return f"{MODELS[kind]}: {parts}" + (f" ({row.note})" if row.note else "")


def default_scale():
    """"accelerator" when JAX's first device is a GPU or TPU, else "cpu".
    Asked in a child process: JAX here would hold the device while the
    workers measure (a TPU opens in one process only, a GPU's memory is
    preallocated)."""
    done = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
        capture_output=True, text=True, check=True,
    )
    return "cpu" if done.stdout.split()[-1] == "cpu" else "accelerator"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=tuple(SCALES),
                        help=f"the defaults below (default: accelerator when JAX sees a GPU or "
                        f"TPU, else cpu): {SCALES}")
    parser.add_argument("--encoder", choices=sorted(captioner_rows()))
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dtype", choices=("float32", "mixed_bfloat16"), help="Keras dtype policy")
    parser.add_argument("--steps", type=int, help="timed steps after 1 warmup step")
    parser.add_argument("--peak-size", type=int, help="side of the matmul whose speed is the peak")
    parser.add_argument("--dry-run", action="store_true",
                        help="build both models and count parameters and FLOPs; no step")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=tuple(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scale = args.scale or default_scale()
    for name, value in SCALES[args.scale].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.image_size < captioner_rows()[args.encoder].patch_size:
        parser.error("--image-size must be at least one patch.")
    return args


# ----------------------------------------------------------------------------
# Worker: one model
# ----------------------------------------------------------------------------


def build(kind, row, dtype):
    """The model of a preset row in the `dtype` policy, random weights,
    compiled with the recipe's optimizer (AdamW, warmup + cosine)."""
    import keras

    from keras_ov2.models import OpenVisionCLIPS
    from keras_ov2.training import load_captioner

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        write_presets(folder, [row])
        path = str(Path(folder) / row.name)
        if kind == "ov1":
            model = OpenVisionCLIPS.from_preset(path, load_weights=False, dtype=dtype)
        else:
            model = load_captioner(path, keep_ratio=KEEP_RATIO, seed=0, dtype=dtype)
    model.compile(learning_rate=1e-4, total_steps=1000)
    return model


def device_peak_mb():
    """The device's own peak of bytes in use in this process, in MiB; None
    where it keeps no statistics (JAX's CPU device)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def run_worker(args):
    import jax
    import keras

    from keras_ov2 import flops

    keras.config.set_dtype_policy(args.dtype)
    kind, row = args.worker, preset_rows(args.encoder, args.image_size)[args.worker]
    peak = None
    if not args.dry_run:  # first, on a device nothing else uses yet
        compute = keras.config.dtype_policy().compute_dtype
        peak = jax_matmul_peak(args.peak_size, compute, PEAK_REPEATS)
    model = build(kind, row, args.dtype)
    batch, forward = train_inputs(model, kind, KEEP_RATIO, args.image_size, args.batch_size)
    result = {
        "model": kind,
        "parameters": int(model.count_params()),
        "forward_gflop_per_image": {part: f / 1e9 for part, f in forward.items()},
        "train_gflop_per_image": flops.train_flops(forward["total"]) / 1e9,
        "compute_dtypes": [model.backbone.compute_dtype, model.decoder.compute_dtype],
        "device_kind": jax.devices()[0].device_kind,
        "peak_gflops": peak,
    }
    if args.dry_run:
        return result
    return {**result, **measure_train_step(model, *batch, args.steps), "device_peak_mb": device_peak_mb()}


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------


def mfu(result, batch_size, peak_gflops, step_field):
    """Analytic train FLOP/s of a step (`step_field`: median or fastest
    time) as a percentage of the matmul peak."""
    achieved = result["train_gflop_per_image"] * batch_size / result[step_field]
    return 100 * achieved / peak_gflops


def model_cells(r):
    return {
        "model": MODELS[r["model"]],
        "params_M": f"{r['parameters'] / 1e6:.1f}",
        "fwd_GFLOP/img": f"{r['forward_gflop_per_image']['total']:.2f}",
        "train_GFLOP/img": f"{r['train_gflop_per_image']:.2f}",
    }


def print_table(args, results, peak):
    if args.dry_run:
        print_columns([model_cells(r) for r in results])
        return
    print_columns([
        {
            **model_cells(r),
            **step_cells(r, args.batch_size),
            "device_peak_MB": cell(r["device_peak_mb"]),
            "MFU%": f"{mfu(r, args.batch_size, peak, 'step_s'):.1f}",
            "MFU%_fastest": f"{mfu(r, args.batch_size, peak, 'min_step_s'):.1f}",
        }
        for r in results
    ])


def print_ratios(args, ov1, ov2):
    print("OV2 / OV1, measured here beside the paper's:")
    flop = ratio(ov2["train_gflop_per_image"], ov1["train_gflop_per_image"])
    if args.dry_run:
        print(f"  here: FLOPs/image {flop}")
    else:
        versus = ratio_cells(ov2, ov1, "OV1")
        print(f"  here: time {versus['step/OV1']} (fastest step {versus['min/OV1']}), "
              f"XLA peak memory {versus['peak/OV1']} (temporaries {versus['temp/OV1']}), "
              f"device peak {ratio(ov2['device_peak_mb'], ov1['device_peak_mb'])}, "
              f"FLOPs/image {flop}")
    for what, kind, value in PAPER_RATIOS:
        print(f"  paper {kind:>6}: {value:.2f}  ({what})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print_result(run_worker(args))
        return
    started = time.perf_counter()
    rows = preset_rows(args.encoder, args.image_size)
    workers = [(MODELS[kind], ["--scale", args.scale, "--worker", kind]) for kind in MODELS]
    results = run_workers(__file__, argv, workers)
    ov1, ov2 = results
    peak = None if args.dry_run else max(r["peak_gflops"] for r in results)
    print(f"scale:    {args.scale}; {args.encoder} @{args.image_size}px, dtype {args.dtype} "
          f"(compute {ov1['compute_dtypes'][0]}), device {ov1['device_kind']}")
    for kind, row in rows.items():
        print(f"model:    {describe(kind, row)}")
    if not args.dry_run:
        print(f"backend:  {backend_line(ov1)}")
        print(f"input:    batch {args.batch_size}; median and fastest of {args.steps} steps "
              "after 1 warmup step")
        print(f"peak:     {peak / 1e3:.2f} TFLOP/s (jitted {args.peak_size}^3 matmul in "
              f"{ov1['compute_dtypes'][0]}, best of {PEAK_REPEATS} in each of {len(results)} "
              "processes)")
    print()
    print_table(args, results, peak)
    print()
    print_ratios(args, ov1, ov2)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, args, results, peak_gflops=peak)


if __name__ == "__main__":
    main()
