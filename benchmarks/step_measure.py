"""What the benchmarks share: the models they build, how each configuration
runs in its own process, and how a compiled Keras train step on JAX is
measured (time, XLA FLOPs, memory).

Used by `keep_ratio.py`, `memory_options.py`, `ov2_vs_ov1.py`,
`accelerator_step.py` (train steps), `encoder_step.py` (the matmul peak),
`convert_memory.py`, `pretrain_backends.py` and `probe_comparison.py` (the
machine line, subprocesses, peak memory). Each
configuration runs in its own process (see `run_in_subprocess`), so its peak
memory is its own. Importing this module loads no Keras: the models are built
by functions that import it.

Memory is reported two ways, because JAX's CPU device has no `memory_stats()`:
- peak_mb: XLA's buffer assignment for the compiled step: arguments +
  outputs - donated aliases + temporaries, i.e. what the step needs live at
  once, independent of the allocator and of other processes; temp_mb is the
  temporaries alone (activations kept for the backward pass, scratch).
- rss_mb: how far the resident set rose while stepping, above its level just
  before (model, optimizer state and batch already live). Noisier.
Time: the median and the fastest of the timed steps, compilation and the
first run excluded; on a shared machine the fastest is the better estimate.
"""

import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from keras_ov2.variants import ENCODERS as VARIANTS

RESULT_MARK = "STEP_MEASURE_RESULT "

# The benchmarks' encoder choices: short name -> (variant of
# keras_ov2.variants.ENCODERS, patch size).
ENCODERS = {
    "ti16": ("Ti", 16),
    "s16": ("S", 16),
    "b16": ("B", 16),
}


# ----------------------------------------------------------------------------
# Models and batches
# ----------------------------------------------------------------------------


def encoder_size(name):
    """(patch, Size(width, depth, mlp, heads)) of a benchmark encoder name."""
    variant, patch = ENCODERS[name]
    return patch, VARIANTS[variant]


def build_backbone(name, **kwargs):
    """`OpenVision2Backbone` of a benchmark encoder name (`kwargs`: e.g.
    `projection_dim`)."""
    import keras_ov2

    patch, size = encoder_size(name)
    return keras_ov2.OpenVision2Backbone(
        patch_size=patch,
        hidden_dim=size.width,
        num_layers=size.depth,
        num_heads=size.heads,
        intermediate_dim=size.mlp,
        **kwargs,
    )


def build_captioner(encoder, decoder, vocabulary_size, keep_ratio, **decoder_kwargs):
    """A compiled `OpenVision2Captioner` (no preprocessor, seed 0): the
    benchmark encoder `encoder` and the decoder variant `decoder` of
    `OpenVision2TextDecoder.from_variant`."""
    import keras

    import keras_ov2

    keras.utils.set_random_seed(0)
    captioner = keras_ov2.OpenVision2Captioner(
        build_backbone(encoder),
        keras_ov2.OpenVision2TextDecoder.from_variant(
            decoder, vocabulary_size=vocabulary_size, **decoder_kwargs
        ),
        keep_ratio=keep_ratio,
        seed=0,
    )
    captioner.compile(learning_rate=1e-4, total_steps=1000)
    return captioner


def caption_batch(batch, image_size, seq_len, vocabulary_size, seed=0):
    """(x, y, sample_weight) of a captioner train step: random uint8 images,
    random captions of `seq_len` ids (inputs 0..T-2, targets 1..T-1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocabulary_size, (batch, seq_len), dtype="int32")
    x = {
        "images": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype="uint8"),
        "token_ids": tokens[:, :-1],
    }
    return x, tokens[:, 1:], np.ones((batch, seq_len - 1), dtype="float32")


def ov1_batch(model, batch, size, seed=0):
    """(x, y, sample_weight) of an `OpenVisionCLIPS` train step: random
    uint8 images, two texts of the preprocessor's `sequence_length` ids, a
    caption target of the decoder's `num_queries` ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    text_length = model.preprocessor.sequence_length
    target_length = model.decoder.num_queries
    vocabulary = model.decoder.vocabulary_size
    x = {
        "images": rng.integers(0, 256, (batch, size, size, 3), dtype="uint8"),
        "web_token_ids": rng.integers(3, vocabulary, (batch, text_length), dtype="int32"),
        "sentence_token_ids": rng.integers(3, vocabulary, (batch, text_length), dtype="int32"),
    }
    y = rng.integers(3, vocabulary, (batch, target_length), dtype="int32")
    return x, y, np.ones(y.shape, dtype="float32")


def add_captioner_arguments(parser, encoder, seq_len, steps):
    """The options of a captioner train-step benchmark, with these defaults."""
    parser.add_argument("--encoder", default=encoder, choices=sorted(ENCODERS))
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
        default=seq_len,
        help="caption length; the decoder sees seq_len - 1 positions (default %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps, help="timed steps (default %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")


def check_captioner_arguments(parser, args):
    if args.seq_len < 2:
        parser.error("--seq-len must be at least 2.")
    if args.image_size < encoder_size(args.encoder)[0]:
        parser.error("--image-size must be at least one patch.")
    return args


# ----------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------


def proc_status_kb(field):
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(match.group(1)) if match else None


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_heap():
    """glibc `malloc_trim(0)`: returns freed heap pages to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(run, steps, cpu_times=None):
    """Wall seconds of each of `steps` calls of `run`; the process's CPU
    seconds (all threads) of each appended to `cpu_times` when given."""
    times = []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
    return times


def jax_matmul_peak(size=2048, dtype="float32", repeats=20):
    """GFLOP/s of a jitted `size`^3 matmul in `dtype` on JAX's default
    device, the best of `repeats`: the peak a step's FLOP/s are a fraction
    of, measured in the same run so that it sees the same machine."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, a).block_until_ready()
    best = min(timed(lambda: matmul(a, a).block_until_ready(), repeats))
    return 2 * size**3 / best / 1e9


def compile_train_step(model, batch):
    """`model.train_step` compiled the way Keras' `fit` does on JAX (state
    donated), with the model, metrics and optimizer slots built as `fit`
    builds them. `model` is compiled already. Returns (compiled step,
    state, batch on the device)."""
    import jax

    model._symbolic_build(data_batch=batch)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    data = jax.device_put(batch)
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, data).compile()
    return compiled, state, data


def xla_peak_bytes(memory):
    """What a compiled step needs live at once, from its `memory_analysis()`:
    arguments + outputs - donated aliases + temporaries."""
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes)


def measure_train_step(model, x, y, sample_weight, steps):
    """Compiles `model.train_step` (see `compile_train_step`), then times
    `steps` runs after one warmup run. `model` is compiled already. Returns
    a dict of figures (see the module docstring)."""
    import jax
    import keras
    import numpy as np

    start = time.perf_counter()
    compiled, state, data = compile_train_step(model, (x, y, sample_weight))
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    xla_flops = (cost or {}).get("flops")

    # What compilation freed goes back to the OS first, so that the step has
    # to fault in its own memory and the high-water mark sees it.
    release_free_heap()
    rss_before_kb = proc_status_kb("VmRSS")
    peak_reset = reset_peak_rss()

    logs = None

    def step():
        nonlocal logs, state
        logs, state = compiled(state, data)
        jax.block_until_ready((logs, state))

    (warmup_s,) = timed(step, 1)
    times = timed(step, steps)
    rss_peak_kb = proc_status_kb("VmHWM")
    loss = float(logs["loss"])
    if not np.isfinite(loss):
        raise RuntimeError(f"train step returned a non-finite loss: {loss}")

    mb = 2.0**-20
    peak_bytes = xla_peak_bytes(memory)
    return {
        "parameters": int(model.count_params()),
        "compile_s": compile_s,
        "warmup_s": warmup_s,
        "step_times_s": times,
        "step_s": statistics.median(times),
        "min_step_s": min(times),
        "loss": loss,
        "xla_gflop": None if xla_flops is None else xla_flops / 1e9,
        "peak_mb": peak_bytes * mb,
        "temp_mb": memory.temp_size_in_bytes * mb,
        "argument_mb": memory.argument_size_in_bytes * mb,
        "rss_mb": None
        if not peak_reset or rss_peak_kb is None
        else (rss_peak_kb - rss_before_kb) / 1024,
        "jax": jax.__version__,
        "device": jax.default_backend(),
        "keras": keras.__version__,
        "dtype": keras.config.dtype_policy().name,
    }


# ----------------------------------------------------------------------------
# Processes and printing
# ----------------------------------------------------------------------------


def machine():
    """The CPU model and the cores this process may use, for the printout."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if found:
            model = found.group(1).strip()
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {usable} usable cores ({os.cpu_count()} online)"


def load_average():
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def print_result(result):
    """A worker's last word: its figures, on one marked line."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_in_subprocess(script, argv, label, backend="jax"):
    """Runs `script argv` in a fresh process on Keras backend `backend`
    (None: KERAS_BACKEND unset) and returns the dict it printed with
    `print_result`; exits naming `label` if it failed."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    if backend:
        env["KERAS_BACKEND"] = backend
    done = subprocess.run(
        [sys.executable, os.path.abspath(script), *argv],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
    raise SystemExit(f"{label}: the worker failed (exit {done.returncode}).")


def run_workers(script, argv, workers):
    """Prints the machine, then runs each (label, worker arguments) of
    `workers` as `script argv arguments` in its own process, in order;
    returns their results."""
    print(f"machine:  {machine()}; load average {load_average()}")
    print("note:     wall-clock timings; other load on the machine shows up in them")
    results = []
    for label, arguments in workers:
        print(f"running {label} ...", flush=True)
        results.append(run_in_subprocess(script, [*argv, *arguments], label))
    return results


def backend_line(result):
    """"jax 0.x (CPU), keras 3.x, dtype float32" of a `measure_train_step` result."""
    return (
        f"jax {result['jax']} ({result['device'].upper()}), keras {result['keras']}, "
        f"dtype {result['dtype']}"
    )


def write_json(path, args, results, **extra):
    """The arguments, the machine and the results (and `extra`), as JSON."""
    if path:
        content = {"args": vars(args), "machine": machine(), "results": results, **extra}
        with open(path, "w") as f:
            json.dump(content, f, indent=1)


def ratio(value, base):
    return "n/a" if value is None or not base else f"{value / base:.2f}"


def cell(value, spec=".0f"):
    """A table cell: `value` formatted, "n/a" for None."""
    return "n/a" if value is None else format(value, spec)


def step_cells(result, batch_size):
    """The measured columns of a `measure_train_step` result."""
    return {
        "step_ms": cell(result["step_s"] * 1e3),
        "min_ms": cell(result["min_step_s"] * 1e3),
        "images/s": cell(batch_size / result["step_s"], ".2f"),
        "XLA_GFLOP": cell(result["xla_gflop"], ".1f"),
        "peak_MB": cell(result["peak_mb"]),
        "temp_MB": cell(result["temp_mb"]),
        "rss_MB": cell(result["rss_mb"]),
    }


def ratio_cells(result, base, name):
    """Median and fastest step, XLA peak and temporaries of `result` over
    those of `base`, as columns "step/<name>", "min/<name>", ..."""
    fields = (("step", "step_s"), ("min", "min_step_s"), ("peak", "peak_mb"), ("temp", "temp_mb"))
    return {f"{key}/{name}": ratio(result[field], base[field]) for key, field in fields}


def print_columns(rows):
    """Rows (dicts: column -> cell, the same columns in each) as a table of
    right-aligned columns."""
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    for row in [dict(zip(widths, widths)), *rows]:
        print(" ".join(f"{str(row[key]):>{width}}" for key, width in widths.items()))
