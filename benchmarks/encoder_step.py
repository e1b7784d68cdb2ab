"""The encoder's train step on CPU: keras_ov2 (JAX) against open_clip (PyTorch).

The same ViT (OpenVision layout: no pre-norm, mean pooling, LayerNorm after
the pool, a bias-free projection to the width), the same batch of random
float32 images, the same loss (mean square of the projected feature), one
AdamW update per step:

- keras_ov2: `OpenVision2Backbone(projection_dim=width)`, a jitted stateless
  train step (`stateless_call`, `jax.value_and_grad`, `AdamW.stateless_apply`),
  parameters and optimizer state donated;
- open_clip: its `VisionTransformer` built the way open_clip builds an
  OpenVision tower, `loss.backward()` and `torch.optim.AdamW`.

Each framework runs in its own subprocess (open_clip's torchvision import
crashes after TensorFlow, which keras_hub loads), one after the other, for
`--rounds` rounds, so slow spells on a shared machine hit both. The matmul
peak of the machine is measured in the same run (a jitted 2048x2048 float32
matmul in JAX, best of 20) and achieved GFLOP/s come from the analytic count
(`keras_ov2.flops`: matmuls, 2 x MACs, train = 3 x forward):

    python benchmarks/encoder_step.py
    python benchmarks/encoder_step.py --models s16 --batch-size 16 --rounds 3
"""

import argparse
import statistics
import sys
import time

from keras_ov2 import flops
from step_measure import ENCODERS
from step_measure import build_backbone
from step_measure import encoder_size
from step_measure import jax_matmul_peak
from step_measure import load_average
from step_measure import machine
from step_measure import print_result
from step_measure import run_in_subprocess
from step_measure import timed
from step_measure import write_json

PEAK_SIZE = 2048


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ti16,s16", help="comma-separated, of %s" % sorted(ENCODERS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both frameworks")
    parser.add_argument("--frameworks", default="keras_ov2,open_clip")
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def images(batch, size):
    import numpy as np

    return np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype("float32")


def timed_steps(run, steps):
    """One warmup call of `run`, `steps` timed ones, and the loss of one more."""
    run()
    cpu_times = []
    times = timed(run, steps, cpu_times)
    return {"times_s": times, "cpu_times_s": cpu_times, "loss": float(run())}


# ----------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------


def run_keras_ov2(args):
    import jax
    import keras

    peak = jax_matmul_peak(PEAK_SIZE)
    keras.utils.set_random_seed(0)
    backbone = build_backbone(args.model, projection_dim=encoder_size(args.model)[1].width)
    optimizer = keras.optimizers.AdamW(1e-4, beta_1=0.9, beta_2=0.95, weight_decay=0.2)
    optimizer.build(backbone.trainable_variables)
    non_trainable = [v.value for v in backbone.non_trainable_variables]

    def loss_fn(trainable, x):
        outputs, _ = backbone.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.mean(keras.ops.square(outputs["projected_output"]))

    def train_step(trainable, optimizer_state, x):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, x)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return loss, trainable, optimizer_state

    state = (
        [v.value for v in backbone.trainable_variables],
        [v.value for v in optimizer.variables],
    )
    x = jax.device_put(images(args.batch_size, args.image_size))
    start = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(*state, x).compile()
    compile_s = time.perf_counter() - start

    def run():
        nonlocal state
        loss, *state = step(*state, x)
        jax.block_until_ready(loss)
        return loss

    return {
        **timed_steps(run, args.steps),
        "framework": "keras_ov2", "version": f"jax {jax.__version__}, keras {keras.__version__}",
        "peak_gflops": peak, "compile_s": compile_s,
    }


def run_open_clip(args):
    import torch
    from open_clip.model import _build_vision_tower

    patch, vit = encoder_size(args.model)
    width = vit.width
    vision_cfg = dict(
        image_size=args.image_size, layers=vit.depth, width=width, patch_size=patch,
        head_width=width // vit.heads, mlp_ratio=vit.mlp / width, no_ln_pre=True,
        pool_type="avg", final_ln_after_pool=True, norm_kwargs={"eps": 1e-6},
    )
    torch.manual_seed(0)
    tower = _build_vision_tower(width, vision_cfg).train()
    optimizer = torch.optim.AdamW(tower.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.2)
    x = torch.from_numpy(images(args.batch_size, args.image_size).transpose(0, 3, 1, 2).copy())

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = tower(x).square().mean()
        loss.backward()
        optimizer.step()
        return loss

    a = torch.ones(PEAK_SIZE, PEAK_SIZE)
    torch.mm(a, a)
    peak = 2 * PEAK_SIZE**3 / min(timed(lambda: torch.mm(a, a), 20)) / 1e9
    return {
        **timed_steps(run, args.steps),
        "framework": "open_clip", "version": f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "torch_peak_gflops": peak,
    }


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def run_worker(framework, model, argv):
    """One framework's run in its own process; open_clip's without a Keras
    backend (torchvision's import crashes after TensorFlow's)."""
    return run_in_subprocess(
        __file__,
        [*argv, "--worker", framework, "--model", model],
        f"{framework} {model}",
        backend="jax" if framework == "keras_ov2" else None,
    )


def summarize(args, model, runs, peak):
    patch, vit = encoder_size(model)
    forward = flops.encoder_flops(
        args.image_size, patch, vit.width, vit.depth, vit.mlp, projection_dim=vit.width
    )
    step_flops = flops.train_flops(forward) * args.batch_size
    rows = {}
    for framework, results in runs.items():
        times = [t for r in results for t in r["times_s"]]
        best, median = min(times), statistics.median(times)
        cpu = statistics.median([t for r in results for t in r["cpu_times_s"]])
        rows[framework] = {
            "cpu_s": cpu,
            "min_s": best, "median_s": median, "images_per_s": args.batch_size / best,
            "gflops": step_flops / best / 1e9, "percent_of_peak": 100 * step_flops / best / 1e9 / peak,
            "times_s": times, "version": results[0]["version"],
        }
    return {"train_gflop_per_step": step_flops / 1e9, "rows": rows}


def print_model(args, model, summary, peak):
    rows = summary["rows"]
    print(f"\n{model} at {args.image_size} px, batch {args.batch_size}: "
          f"{summary['train_gflop_per_step']:.1f} GFLOP per train step (analytic)")
    print(f"{'framework':>10} {'min_ms':>7} {'median_ms':>9} {'images/s':>8} {'GFLOP/s':>7} "
          f"{'%peak':>6} {'cpu_s/step':>10} {'min vs open_clip':>16}")
    base = rows.get("open_clip")
    for framework, row in rows.items():
        ratio = f"{base['min_s'] / row['min_s']:.2f}x faster" if base else "n/a"
        print(f"{framework:>10} {row['min_s'] * 1e3:>7.0f} {row['median_s'] * 1e3:>9.0f} "
              f"{row['images_per_s']:>8.1f} {row['gflops']:>7.1f} {row['percent_of_peak']:>5.0f}% "
              f"{row['cpu_s']:>10.2f} {ratio:>16}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print_result({"keras_ov2": run_keras_ov2, "open_clip": run_open_clip}[args.worker](args))
        return
    models = [m for m in args.models.split(",") if m]
    frameworks = [f for f in args.frameworks.split(",") if f]
    print(f"machine:  {machine()}; load average before: {load_average()}")
    print(f"input:    float32, {args.image_size} px, batch {args.batch_size}; {args.rounds} "
          f"alternating rounds x {args.steps} timed steps (after 1 warmup) per framework")
    started = time.perf_counter()
    runs = {m: {f: [] for f in frameworks} for m in models}
    for _ in range(args.rounds):
        for model in models:
            for framework in frameworks:
                runs[model][framework].append(run_worker(framework, model, argv))
    peaks = [r["peak_gflops"] for m in models for r in runs[m].get("keras_ov2", [])]
    peak = max(peaks) if peaks else float("nan")
    torch_peaks = [r["torch_peak_gflops"] for m in models for r in runs[m].get("open_clip", [])]
    print(f"matmul peak: {peak:.0f} GFLOP/s (JAX, jitted {PEAK_SIZE}x{PEAK_SIZE} float32, best of "
          f"{len(peaks)} runs)" + (f"; torch.mm: {max(torch_peaks):.0f} GFLOP/s" if torch_peaks else ""))
    for framework in frameworks:
        print(f"{framework}: {runs[models[0]][framework][0]['version']}")
    summaries = {}
    for model in models:
        summaries[model] = summarize(args, model, runs[model], peak)
        print_model(args, model, summaries[model], peak)
    print("\nmin_ms / median_ms: fastest / median step over all rounds; images/s, GFLOP/s and "
          "%peak from the fastest step and the analytic FLOPs; cpu_s/step: median process CPU "
          "time per step (all threads; spinning threads count too).")
    print(f"load average after: {load_average()}; total wall time {time.perf_counter() - started:.0f} s")
    write_json(args.json, args, runs, peak_gflops=peak, models=summaries)


if __name__ == "__main__":
    main()
