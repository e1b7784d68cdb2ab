"""Train-step time and memory of the OpenVision 2 captioner vs `keep_ratio`.

OpenVision 2 keeps a random K = int(N * keep_ratio) of the encoder's N patch
tokens and feeds only those to the caption decoder, as a prefix of the caption.
The encoder always runs on all N tokens, so the saving is in the decoder: its
sequence shrinks from N + T to K + T (T caption positions).

For each keep ratio this script builds the captioner in a fresh subprocess
(so peak memory is per configuration), compiles its JAX train step (the
Keras `train_step`: forward, caption loss, backward, AdamW update), runs one
warmup step, then times `--steps` steps and prints a table with the ratios
against keep_ratio 1.0:

    python benchmarks/keep_ratio.py
    python benchmarks/keep_ratio.py --batch-size 4 --image-size 224 --steps 5

Memory and time: see `step_measure.py` (XLA's buffer assignment for the
compiled step, the rise of resident memory, median and fastest step).

FLOPs: `XLA_GFLOP` is XLA's own count for the compiled step
(`compiled.cost_analysis()`); `flop/1.0` the ratio of the analytic matmul
FLOPs of `keras_ov2.flops`; both per step, whole batch.
"""

import argparse
import sys
import time

from keras_ov2 import flops
from step_measure import add_captioner_arguments
from step_measure import backend_line
from step_measure import build_captioner
from step_measure import caption_batch
from step_measure import check_captioner_arguments
from step_measure import measure_train_step
from step_measure import print_columns
from step_measure import print_result
from step_measure import ratio
from step_measure import ratio_cells
from step_measure import run_workers
from step_measure import step_cells
from step_measure import write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "OpenVision 2 captioner train step (JAX, CPU): time and memory "
            "per keep_ratio, side by side, with ratios vs keep_ratio 1.0."
        )
    )
    parser.add_argument(
        "--keep-ratios",
        default="1.0,0.35,0.25",
        help="comma-separated keep ratios; 1.0 is added if missing (default %(default)s)",
    )
    add_captioner_arguments(parser, encoder="ti16", seq_len=128, steps=5)
    parser.add_argument(
        "--attention-mask", default="causal", choices=("causal", "prefix")
    )
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    return check_captioner_arguments(parser, parser.parse_args(argv))


def analytic_flops(captioner, image_size, keep_ratio, seq_len):
    """Forward matmul FLOPs per sample (`keras_ov2.flops`), split into the
    encoder, the decoder's visual projection and blocks, and its vocabulary
    head. A train step costs about 3x, the same for every part, so ratios of
    these are ratios of train-step FLOPs."""
    decoder = captioner.decoder.get_config()
    parts = flops.captioner_flops(
        captioner.backbone.get_config(), decoder, image_size, keep_ratio, seq_len
    )
    head = flops.dense_flops(seq_len - 1, decoder["hidden_dim"], decoder["vocabulary_size"])
    return {
        "encoder": parts["encoder"],
        "decoder_blocks": parts["decoder"] - head,
        "head": head,
    }


# ----------------------------------------------------------------------------
# Worker: one keep ratio, in its own process
# ----------------------------------------------------------------------------


def run_worker(args, keep_ratio):
    captioner = build_captioner(
        args.encoder,
        args.decoder,
        args.vocabulary_size,
        keep_ratio,
        attention_mask=args.attention_mask,
    )
    size, num_text = args.image_size, args.seq_len - 1
    batch = caption_batch(args.batch_size, size, args.seq_len, args.vocabulary_size)
    measured = measure_train_step(captioner, *batch, args.steps)
    num_patches = flops.num_patches(size, captioner.backbone.patch_size)
    kept = captioner.token_masking.kept_count(num_patches)
    forward = analytic_flops(captioner, size, keep_ratio, args.seq_len)
    return {
        **measured,
        "keep_ratio": keep_ratio,
        "num_patches": num_patches,
        "kept": kept,
        "decoder_length": kept + num_text,
        "num_text": num_text,
        "analytic_forward_gflop_per_sample": {k: v / 1e9 for k, v in forward.items()},
    }


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def print_table(args, results):
    base = next(r for r in results if r["keep_ratio"] == 1.0)

    def total_flops(r):
        return sum(r["analytic_forward_gflop_per_sample"].values())

    print_columns([
        {
            "keep_ratio": f"{r['keep_ratio']:.2f}",
            "K": r["kept"],
            "dec_len": r["decoder_length"],
            **step_cells(r, args.batch_size),
            **ratio_cells(r, base, "1.0"),
            "flop/1.0": ratio(total_flops(r), total_flops(base)),
        }
        for r in results
    ])
    print()
    print("Analytic forward GFLOP per sample (matmuls; train step ~3x):")
    print(f"{'keep_ratio':>10} {'encoder':>8} {'dec_blocks':>10} {'head':>6} {'total':>6} {'encoder%':>8}")
    for r in results:
        f = r["analytic_forward_gflop_per_sample"]
        total = sum(f.values())
        print(
            f"{r['keep_ratio']:>10.2f} {f['encoder']:>8.2f} {f['decoder_blocks']:>10.2f} "
            f"{f['head']:>6.2f} {total:>6.2f} {100 * f['encoder'] / total:>7.0f}%"
        )
    print()
    print("Per-step times (s), compile and warmup:")
    for r in results:
        steps = ", ".join(f"{t:.2f}" for t in r["step_times_s"])
        print(
            f"  {r['keep_ratio']:.2f}: [{steps}]  compile {r['compile_s']:.0f} s, "
            f"warmup {r['warmup_s']:.1f} s, loss {r['loss']:.3f}"
        )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker is not None:
        print_result(run_worker(args, args.worker))
        return

    ratios = [float(r) for r in args.keep_ratios.split(",") if r.strip()]
    if 1.0 not in ratios:
        ratios.insert(0, 1.0)
    started = time.perf_counter()
    workers = [(f"keep_ratio {r}", ["--worker", str(r)]) for r in ratios]
    results = run_workers(__file__, argv, workers)
    first = results[0]
    print(f"backend:  {backend_line(first)}")
    print(
        f"model:    encoder {args.encoder} + decoder {args.decoder} "
        f"(vocab {args.vocabulary_size}, {args.attention_mask} mask), "
        f"{first['parameters'] / 1e6:.1f}M parameters"
    )
    print(
        f"input:    batch {args.batch_size}, {args.image_size} px "
        f"({first['num_patches']} patch tokens), caption length {args.seq_len} "
        f"(T = {first['num_text']}); median of {args.steps} steps after 1 warmup step"
    )
    print()
    print_table(args, results)
    print()
    print(
        "step_ms / min_ms = median / fastest timed step; images/s from the median; "
        "XLA_GFLOP = XLA cost analysis of one step; peak_MB = XLA arguments + outputs "
        "- donated + temporaries of the compiled step; temp_MB = its temporaries; "
        "rss_MB = rise of resident memory above the pre-step level while stepping; "
        "flop/1.0 = analytic matmul FLOPs vs keep_ratio 1.0."
    )
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()
