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

FLOPs: `GFLOP` is XLA's own count for the compiled step
(`compiled.cost_analysis()`); `flop/1.0` the analytic ratio of matmul FLOPs
(see `analytic_flops`); both per step, whole batch.
"""

import argparse
import json
import os
import sys
import time

from step_measure import machine
from step_measure import measure_train_step
from step_measure import print_result
from step_measure import ratio
from step_measure import run_in_subprocess

# (patch, width, depth, heads, MLP width) of the encoder choices.
ENCODERS = {
    "ti16": (16, 192, 12, 3, 768),
    "s16": (16, 384, 12, 6, 1536),
    "b16": (16, 768, 12, 12, 3072),
}


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
    parser.add_argument("--encoder", default="ti16", choices=sorted(ENCODERS))
    parser.add_argument(
        "--decoder",
        default="Ti",
        help="decoder variant of OpenVision2TextDecoder.from_variant (default %(default)s)",
    )
    parser.add_argument("--vocabulary-size", type=int, default=32000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--seq-len",
        type=int,
        default=128,
        help="caption length; the decoder sees seq_len - 1 positions (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default %(default)s)")
    parser.add_argument(
        "--attention-mask", default="causal", choices=("causal", "prefix")
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seq_len < 2:
        parser.error("--seq-len must be at least 2.")
    if args.image_size < ENCODERS[args.encoder][0]:
        parser.error("--image-size must be at least one patch.")
    return args


# ----------------------------------------------------------------------------
# Analytic FLOPs (forward, matmuls only, one sample)
# ----------------------------------------------------------------------------


def block_flops(length, width, mlp):
    """Pre-norm block: q/k/v/out (8 S D^2), MLP (4 S D F), QK^T and AV
    (4 S^2 D; masked positions are computed too: XLA has no causal skip)."""
    return 8 * length * width**2 + 4 * length * width * mlp + 4 * length**2 * width


def analytic_flops(num_patches, kept, num_text, patch, enc, dec, vocab):
    """Forward matmul FLOPs per sample, split by part. A train step costs
    about 3x (the backward pass is ~2x the forward), the same for every part,
    so ratios of these numbers are ratios of train-step FLOPs."""
    enc_width, enc_depth, enc_mlp = enc
    dec_width, dec_depth, dec_mlp = dec
    return {
        "encoder": 2 * num_patches * patch * patch * 3 * enc_width
        + enc_depth * block_flops(num_patches + 1, enc_width, enc_mlp),
        "decoder_blocks": 2 * kept * enc_width * dec_width
        + dec_depth * block_flops(kept + num_text, dec_width, dec_mlp),
        "head": 2 * num_text * dec_width * vocab,
    }


# ----------------------------------------------------------------------------
# Worker: one keep ratio, in its own process
# ----------------------------------------------------------------------------


def run_worker(args, keep_ratio):
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np

    import keras_ov2

    keras.utils.set_random_seed(0)
    patch, width, depth, heads, mlp = ENCODERS[args.encoder]
    backbone = keras_ov2.OpenVision2Backbone(
        patch_size=patch,
        hidden_dim=width,
        num_layers=depth,
        num_heads=heads,
        intermediate_dim=mlp,
    )
    decoder = keras_ov2.OpenVision2TextDecoder.from_variant(
        args.decoder,
        vocabulary_size=args.vocabulary_size,
        attention_mask=args.attention_mask,
    )
    captioner = keras_ov2.OpenVision2Captioner(
        backbone, decoder, preprocessor=None, keep_ratio=keep_ratio, seed=0
    )
    captioner.compile(learning_rate=1e-4, total_steps=1000)

    batch, size, num_text = args.batch_size, args.image_size, args.seq_len - 1
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, args.vocabulary_size, (batch, args.seq_len), dtype="int32")
    x = {
        "images": rng.integers(0, 256, (batch, size, size, 3), dtype="uint8"),
        "token_ids": tokens[:, :-1],
    }
    y = tokens[:, 1:]
    sample_weight = np.ones((batch, num_text), dtype="float32")

    measured = measure_train_step(captioner, x, y, sample_weight, args.steps)
    num_patches = (size // patch) ** 2
    kept = captioner.token_masking.kept_count(num_patches)
    flops = analytic_flops(
        num_patches,
        kept,
        num_text,
        patch,
        (width, depth, mlp),
        (decoder.hidden_dim, decoder.num_layers, decoder.intermediate_dim),
        decoder.vocabulary_size,
    )
    return {
        **measured,
        "keep_ratio": keep_ratio,
        "num_patches": num_patches,
        "kept": kept,
        "decoder_length": kept + num_text,
        "num_text": num_text,
        "analytic_forward_gflop_per_sample": {k: v / 1e9 for k, v in flops.items()},
        "keras": keras.__version__,
        "dtype": keras.config.dtype_policy().name,
    }


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def run_config(keep_ratio, argv):
    return run_in_subprocess(__file__, [*argv, "--worker", str(keep_ratio)], f"keep_ratio {keep_ratio}")


def print_table(args, results):
    base = next(r for r in results if r["keep_ratio"] == 1.0)

    def total_flops(r):
        return sum(r["analytic_forward_gflop_per_sample"].values())

    header = (
        f"{'keep_ratio':>10} {'K':>4} {'dec_len':>7} {'step_ms':>8} {'min_ms':>7} "
        f"{'images/s':>8} {'GFLOP':>6} {'peak_MB':>7} {'temp_MB':>7} {'rss_MB':>6} "
        f"{'step/1.0':>8} {'min/1.0':>7} {'flop/1.0':>8} {'mem/1.0':>7} {'temp/1.0':>8}"
    )
    print(header)
    for r in results:
        rss = "n/a" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
        gflop = "n/a" if r["xla_gflop"] is None else f"{r['xla_gflop']:.0f}"
        print(
            f"{r['keep_ratio']:>10.2f} {r['kept']:>4} {r['decoder_length']:>7} "
            f"{r['step_s'] * 1e3:>8.0f} {r['min_step_s'] * 1e3:>7.0f} "
            f"{args.batch_size / r['step_s']:>8.2f} "
            f"{gflop:>6} {r['peak_mb']:>7.0f} {r['temp_mb']:>7.0f} {rss:>6} "
            f"{ratio(r['step_s'], base['step_s']):>8} "
            f"{ratio(r['min_step_s'], base['min_step_s']):>7} "
            f"{ratio(total_flops(r), total_flops(base)):>8} "
            f"{ratio(r['peak_mb'], base['peak_mb']):>7} "
            f"{ratio(r['temp_mb'], base['temp_mb']):>8}"
        )

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
        result = run_worker(args, args.worker)
        print_result(result)
        return

    ratios = [float(r) for r in args.keep_ratios.split(",") if r.strip()]
    if 1.0 not in ratios:
        ratios.insert(0, 1.0)
    started = time.perf_counter()
    print(f"machine:  {machine()}")
    print("note:     timings are wall-clock on this machine; other load on it shows up in them")
    results = []
    for keep_ratio in ratios:
        print(f"running keep_ratio {keep_ratio} ...", flush=True)
        results.append(run_config(keep_ratio, argv))
    first = results[0]
    print(
        f"backend:  jax {first['jax']} (CPU), keras {first['keras']}, "
        f"dtype {first['dtype']}"
    )
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
        "GFLOP = XLA cost analysis of one step; peak_MB = XLA arguments + outputs "
        "- donated + temporaries of the compiled step; temp_MB = its temporaries; "
        "rss_MB = rise of resident memory above the pre-step level while stepping; "
        "flop/1.0 = analytic matmul FLOPs vs keep_ratio 1.0."
    )
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
