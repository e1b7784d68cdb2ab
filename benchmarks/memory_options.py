"""Memory and time of the captioner's train step with remat and mixed bfloat16.

Two switches trade speed for memory in large runs: rematerialization
(`keras.RematScope` over every transformer block: their activations are
recomputed in the backward pass instead of kept) and the `mixed_bfloat16`
policy (bfloat16 activations, float32 variables). This script builds a small
captioner four ways (plain, remat, mixed_bfloat16, both), each in a fresh
subprocess, compiles Keras' own JAX `train_step` ahead of time, and prints
peak memory and step time with ratios against plain:

    python benchmarks/memory_options.py
    python benchmarks/memory_options.py --encoder s16 --image-size 224 --batch-size 8

Memory (measured by step_measure.py, as for keep_ratio.py): peak_MB is XLA's buffer assignment of the
compiled step (arguments + outputs - donated + temporaries; deterministic),
temp_MB its temporaries (activations kept for the backward pass, gradients,
scratch), rss_MB the rise of the process's resident memory while stepping.
Time: median and fastest of `--steps` steps after one warmup step. On CPU,
bfloat16 matmuls are slower than float32 (see the README); on accelerators
with bfloat16 units the time column reads the other way.
"""

import argparse
import sys
import time

from step_measure import add_captioner_arguments
from step_measure import backend_line
from step_measure import build_captioner
from step_measure import caption_batch
from step_measure import check_captioner_arguments
from step_measure import measure_train_step
from step_measure import print_columns
from step_measure import print_result
from step_measure import ratio_cells
from step_measure import run_workers
from step_measure import step_cells
from step_measure import write_json

OPTIONS = {
    "plain": (False, "float32"),
    "remat": (True, "float32"),
    "bf16": (False, "mixed_bfloat16"),
    "remat+bf16": (True, "mixed_bfloat16"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--options", default=",".join(OPTIONS), help="of %(default)s")
    add_captioner_arguments(parser, encoder="s16", seq_len=32, steps=4)
    parser.add_argument("--keep-ratio", type=float, default=0.35)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return check_captioner_arguments(parser, parser.parse_args(argv))


def build(args, remat, dtype):
    """The captioner in the `dtype` policy, every block (encoder and
    decoder blocks are all named transformer_layer_{i}) rematerialized when
    `remat`."""
    import keras

    keras.config.set_dtype_policy(dtype)
    if not remat:
        return build_captioner(args.encoder, args.decoder, args.vocabulary_size, args.keep_ratio)
    blocks = [f"transformer_layer_{i}" for i in range(64)]
    with keras.RematScope(mode="list_of_layers", layer_names=blocks):
        return build_captioner(args.encoder, args.decoder, args.vocabulary_size, args.keep_ratio)


def run_worker(args, option):
    import jax

    remat, dtype = OPTIONS[option]
    captioner = build(args, remat, dtype)
    batch = caption_batch(args.batch_size, args.image_size, args.seq_len, args.vocabulary_size)
    result = measure_train_step(captioner, *batch, args.steps)
    # Checkpointed regions in the traced step (0 when remat is off).
    state = tuple(
        [v.value for v in variables]
        for variables in (captioner.trainable_variables, captioner.non_trainable_variables,
                          captioner.optimizer.variables, captioner.metrics_variables)
    )
    jaxpr = jax.make_jaxpr(captioner.train_step)(state, batch)
    return {
        **result, "option": option, "dtype": dtype, "remat": remat,
        "compute_dtypes": [captioner.backbone.compute_dtype, captioner.decoder.compute_dtype],
        "remat_regions": str(jaxpr).count("remat"),
    }


def print_table(args, results):
    print_columns([
        {
            "option": r["option"],
            "compute": r["compute_dtypes"][0],
            **step_cells(r, args.batch_size),
            **ratio_cells(r, results[0], "plain"),
            "loss": f"{r['loss']:.3f}",
        }
        for r in results
    ])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print_result(run_worker(args, args.worker))
        return
    options = [o for o in args.options.split(",") if o]
    started = time.perf_counter()
    results = run_workers(__file__, argv, [(o, ["--worker", o]) for o in options])
    first = results[0]
    print(f"backend:  {backend_line(first)}")
    print(f"model:    encoder {args.encoder} + decoder {args.decoder}, vocab {args.vocabulary_size}, "
          f"{first['parameters'] / 1e6:.1f}M parameters, keep_ratio {args.keep_ratio}")
    print(f"input:    batch {args.batch_size}, {args.image_size} px, caption length {args.seq_len}; "
          f"median / min of {args.steps} steps after 1 warmup")
    print()
    print_table(args, results)
    print("\nremat regions in the traced step: "
          + ", ".join(f"{r['option']} {r['remat_regions']}" for r in results))
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()
