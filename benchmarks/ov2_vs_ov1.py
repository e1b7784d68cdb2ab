"""OpenVision 2 vs OpenVision (v1): train-step cost at the same encoder.

The paper's claim: caption-only pretraining (OV2) is about 1.5-2x cheaper in
time and about 1.8x in memory than v1's two towers + contrastive + caption
training at the same encoder (L/14 at 224 px: 57 vs 83 TPU hours, 13.8 vs
24.5 GB per chip at batch 2k). This script measures the same comparison on
this machine, for small encoders: for each (encoder, resolution) it compiles
and times the JAX train step (forward, loss, backward, AdamW) of
- OV1: `OpenVisionCLIPS` (text encoder on the web caption and on one
  synthetic sentence, dual contrastive loss, 128-query caption decoder behind
  an [image; web caption] prefix), and
- OV2: `OpenVision2Captioner` at keep ratios 1.0, 0.35 (the authors') and 0.25,
each in its own process, with the architectures of the presets
`openvision_clips_vit_{tiny,small}_patch16_84` and
`openvision2_captioner_vit_{tiny,small}_patch16_84` (same encoder; the decoder
and text encoder sizes of the authors' pairing), and prints one table with
the ratios to OV1 beside the paper's:

    python benchmarks/ov2_vs_ov1.py                       # Ti/16, S/16 at 84 and 224 px
    python benchmarks/ov2_vs_ov1.py --encoders ti16 --image-sizes 224 --batch-size 16

Columns: step_ms / min_ms (median / fastest timed step), images/s, GFLOP/img
(analytic train FLOPs per image, `keras_ov2.flops`, 3 x forward), XLA_GFLOP
(XLA's count for the whole compiled step), peak_MB (XLA buffer assignment of
the step: parameters, AdamW slots, batch and activations), temp_MB (its
temporaries: the activations kept for the backward pass, which dominate at
the paper's batch sizes), rss_MB; see `step_measure.py`. Float32, CPU unless JAX sees an
accelerator.
"""

import argparse
import sys
import time

from step_measure import backend_line
from step_measure import caption_batch
from step_measure import measure_train_step
from step_measure import ov1_batch
from step_measure import print_columns
from step_measure import print_result
from step_measure import ratio
from step_measure import ratio_cells
from step_measure import run_workers
from step_measure import step_cells
from step_measure import write_json

ENCODER_PRESETS = {
    "ti16": ("openvision_clips_vit_tiny_patch16_84", "openvision2_captioner_vit_tiny_patch16_84"),
    "s16": ("openvision_clips_vit_small_patch16_84", "openvision2_captioner_vit_small_patch16_84"),
}
OV2_KEEP_RATIOS = (1.0, 0.35, 0.25)
# OV2 / OV1 from the authors' efficiency table (openvision-reference.md §8.1).
PAPER_RATIOS = (
    ("L/14 @224, TPU v4-512 hours 57 / 83", "time", 57 / 83),
    ("So400m/14 @384, hours 121 / 241", "time", 121 / 241),
    ("L/14 @224, GB/chip at batch 2k 13.8 / 24.5", "memory", 13.8 / 24.5),
    ("So400m/14 @384, GB/chip at batch 512 14.5 / 27.4", "memory", 14.5 / 27.4),
    ("L/14 @224, FLOPs/image 208.90 / 271.75", "flops", 208.90 / 271.75),
    ("So400m/14 @384, FLOPs/image 1017.74 / 1636.75", "flops", 1017.74 / 1636.75),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="OV2 vs OV1 train step (JAX): time, FLOPs and memory side by side."
    )
    parser.add_argument("--encoders", default="ti16,s16", help="of %s" % sorted(ENCODER_PRESETS))
    parser.add_argument("--image-sizes", default="84,224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # model keep encoder size
    args = parser.parse_args(argv)
    args.encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    unknown = [e for e in args.encoders if e not in ENCODER_PRESETS]
    if unknown:
        parser.error(f"unknown encoder(s) {unknown}; choose from {sorted(ENCODER_PRESETS)}.")
    args.image_sizes = [int(s) for s in args.image_sizes.split(",") if s.strip()]
    return args


def train_inputs(model, kind, keep, size, batch_size):
    """A random train batch (x, y, sample_weight) of `batch_size` images at
    `size` px for `model` (kind "ov1": `OpenVisionCLIPS`, "ov2": a captioner
    at keep ratio `keep`), and its analytic forward FLOPs per image
    (`keras_ov2.flops`, split by part)."""
    from keras_ov2 import flops

    if kind == "ov1":
        batch = ov1_batch(model, batch_size, size)
        forward = flops.clips_flops(
            model.backbone.get_config(),
            model.text_encoder.get_config(),
            model.decoder.get_config(),
            size,
            text_length=model.preprocessor.sequence_length,
        )
    else:
        length = model.preprocessor.sequence_length
        batch = caption_batch(batch_size, size, length, model.decoder.vocabulary_size)
        forward = flops.captioner_flops(
            model.backbone.get_config(),
            model.decoder.get_config(),
            size,
            keep_ratio=keep,
            sequence_length=length,
        )
    return batch, forward


def run_worker(args):
    import keras

    from keras_ov2 import flops
    from keras_ov2.models import OpenVisionCLIPS
    from keras_ov2.training import load_captioner

    kind, keep, encoder, size = args.worker
    keep, size = float(keep), int(size)
    keras.utils.set_random_seed(0)
    ov1_preset, ov2_preset = ENCODER_PRESETS[encoder]
    if kind == "ov1":
        model = OpenVisionCLIPS.from_preset(ov1_preset, load_weights=False)
    else:
        model = load_captioner(ov2_preset, keep_ratio=keep, seed=0)
    batch, forward = train_inputs(model, kind, keep, size, args.batch_size)
    model.compile(learning_rate=1e-4, total_steps=1000)
    measured = measure_train_step(model, *batch, args.steps)
    return {
        **measured,
        "model": kind,
        "keep_ratio": keep if kind == "ov2" else None,
        "encoder": encoder,
        "image_size": size,
        "train_gflop_per_image": flops.train_flops(forward["total"]) / 1e9,
    }


def label(r):
    return "OV1" if r["model"] == "ov1" else f"OV2 keep {r['keep_ratio']:.2f}"


def print_table(args, results):
    rows, summary = [], []
    for encoder in args.encoders:
        for size in args.image_sizes:
            configs = [r for r in results if r["encoder"] == encoder and r["image_size"] == size]
            base = next(r for r in configs if r["model"] == "ov1")
            for r in configs:
                flop = r["train_gflop_per_image"]
                rows.append({
                    "encoder": encoder,
                    "px": size,
                    "model": label(r),
                    "GFLOP/img": f"{flop:.2f}",
                    **step_cells(r, args.batch_size),
                    **ratio_cells(r, base, "OV1"),
                    "flop/OV1": ratio(flop, base["train_gflop_per_image"]),
                })
                if r["model"] == "ov2" and r["keep_ratio"] == 0.35:
                    summary.append((encoder, size, r, base))
    print_columns(rows)
    print()
    print("OV2 (keep 0.35) / OV1 at the same encoder: measured here vs the paper")
    for encoder, size, r, base in summary:
        versus = ratio_cells(r, base, "OV1")
        print(
            f"  {encoder} @{size}px: time {versus['step/OV1']} "
            f"(fastest step {versus['min/OV1']}), memory {versus['peak/OV1']} "
            f"(activations {versus['temp/OV1']}), "
            f"FLOPs {ratio(r['train_gflop_per_image'], base['train_gflop_per_image'])}"
        )
    for what, kind, value in PAPER_RATIOS:
        print(f"  paper {kind:>6}: {value:.2f}  ({what})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker is not None:
        print_result(run_worker(args))
        return
    started = time.perf_counter()
    workers = []
    for encoder in args.encoders:
        for size in args.image_sizes:
            for kind, keep in [("ov1", 0.0)] + [("ov2", k) for k in OV2_KEEP_RATIOS]:
                name = f"{encoder} @{size}px {kind}" + (f" keep {keep}" if kind == "ov2" else "")
                workers.append((name, ["--worker", kind, str(keep), encoder, str(size)]))
    results = run_workers(__file__, argv, workers)
    print(f"backend:  {backend_line(results[0])}")
    print(f"input:    batch {args.batch_size}; median of {args.steps} steps after 1 warmup step")
    print()
    print_table(args, results)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()
