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
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keep_ratio import ENCODERS  # noqa: E402
from step_measure import machine  # noqa: E402
from step_measure import measure_train_step  # noqa: E402

OPTIONS = {
    "plain": (False, "float32"),
    "remat": (True, "float32"),
    "bf16": (False, "mixed_bfloat16"),
    "remat+bf16": (True, "mixed_bfloat16"),
}
RESULT_MARK = "MEMORY_OPTIONS_RESULT "


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--options", default=",".join(OPTIONS), help="of %(default)s")
    parser.add_argument("--encoder", default="s16", choices=sorted(ENCODERS))
    parser.add_argument("--decoder", default="Ti")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--vocabulary-size", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--keep-ratio", type=float, default=0.35)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_captioner(args, remat, dtype):
    import keras

    import keras_ov2

    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(0)
    patch, width, depth, heads, mlp = ENCODERS[args.encoder]

    def build():
        backbone = keras_ov2.OpenVision2Backbone(
            patch_size=patch, hidden_dim=width, num_layers=depth,
            num_heads=heads, intermediate_dim=mlp,
        )
        decoder = keras_ov2.OpenVision2TextDecoder.from_variant(
            args.decoder, vocabulary_size=args.vocabulary_size
        )
        return keras_ov2.OpenVision2Captioner(
            backbone, decoder, keep_ratio=args.keep_ratio, seed=0
        ), backbone, decoder

    if not remat:
        return build()
    # Encoder and decoder blocks are both named transformer_layer_{i}.
    blocks = [f"transformer_layer_{i}" for i in range(64)]
    with keras.RematScope(mode="list_of_layers", layer_names=blocks):
        return build()


def run_worker(args, option):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import numpy as np

    remat, dtype = OPTIONS[option]
    captioner, backbone, decoder = build_captioner(args, remat, dtype)
    captioner.compile(learning_rate=1e-4, total_steps=1000)
    rng = np.random.default_rng(0)
    batch, size = args.batch_size, args.image_size
    tokens = rng.integers(3, args.vocabulary_size, (batch, args.seq_len), dtype="int32")
    x = {"images": rng.integers(0, 256, (batch, size, size, 3), dtype="uint8"),
         "token_ids": tokens[:, :-1]}
    y, sample_weight = tokens[:, 1:], np.ones((batch, args.seq_len - 1), "float32")
    result = measure_train_step(captioner, x, y, sample_weight, args.steps)
    # Checkpointed regions in the traced step (0 when remat is off).
    state = tuple(
        [v.value for v in variables]
        for variables in (captioner.trainable_variables, captioner.non_trainable_variables,
                          captioner.optimizer.variables, captioner.metrics_variables)
    )
    jaxpr = jax.make_jaxpr(captioner.train_step)(state, (x, y, sample_weight))
    return {
        **result, "option": option, "dtype": dtype, "remat": remat,
        "compute_dtypes": [backbone.compute_dtype, decoder.compute_dtype],
        "remat_regions": str(jaxpr).count("remat"),
    }


def run_option(option, argv):
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker", option]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    raise SystemExit(f"{option}: the worker failed (exit {done.returncode}).")


def print_table(results):
    base = results[0]

    def ratio(key, r):
        return f"{r[key] / base[key]:.2f}" if r[key] and base[key] else "n/a"

    print(f"{'option':>11} {'compute':>9} {'peak_MB':>7} {'temp_MB':>7} {'rss_MB':>6} "
          f"{'step_ms':>7} {'min_ms':>7} {'peak/plain':>10} {'temp/plain':>10} "
          f"{'step/plain':>10} {'min/plain':>9} {'loss':>7}")
    for r in results:
        rss = "n/a" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
        print(f"{r['option']:>11} {r['compute_dtypes'][0]:>9} {r['peak_mb']:>7.0f} "
              f"{r['temp_mb']:>7.0f} {rss:>6} {r['step_s'] * 1e3:>7.0f} "
              f"{r['min_step_s'] * 1e3:>7.0f} {ratio('peak_mb', r):>10} {ratio('temp_mb', r):>10} "
              f"{ratio('step_s', r):>10} {ratio('min_step_s', r):>9} {r['loss']:>7.3f}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(RESULT_MARK + json.dumps(run_worker(args, args.worker)), flush=True)
        return
    options = [o for o in args.options.split(",") if o]
    started = time.perf_counter()
    print(f"machine:  {machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = []
    for option in options:
        print(f"running {option} ...", flush=True)
        results.append(run_option(option, argv))
    first = results[0]
    print(f"backend:  jax {first['jax']} (CPU)")
    print(f"model:    encoder {args.encoder} + decoder {args.decoder}, vocab {args.vocabulary_size}, "
          f"{first['parameters'] / 1e6:.1f}M parameters, keep_ratio {args.keep_ratio}")
    print(f"input:    batch {args.batch_size}, {args.image_size} px, caption length {args.seq_len}; "
          f"median / min of {args.steps} steps after 1 warmup")
    print()
    print_table(results)
    print("\nremat regions in the traced step: "
          + ", ".join(f"{r['option']} {r['remat_regions']}" for r in results))
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
