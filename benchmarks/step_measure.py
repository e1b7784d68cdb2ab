"""Measures one compiled Keras train step on JAX: time, XLA FLOPs, memory.

Shared by the benchmarks that compare train steps (`keep_ratio.py`,
`ov2_vs_ov1.py`). Each configuration runs in its own process (see
`run_in_subprocess`), so its peak memory is its own.

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

RESULT_MARK = "STEP_MEASURE_RESULT "


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


def measure_train_step(model, x, y, sample_weight, steps):
    """Compiles `model.train_step` the way Keras' `fit` does on JAX (state
    donated), then times `steps` runs after one warmup run. `model` is
    compiled already. Returns a dict of figures (see the module docstring)."""
    import jax
    import numpy as np

    # Build the model, the metrics and the optimizer slots as `fit` does.
    model._symbolic_build(data_batch=(x, y, sample_weight))
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    data = jax.device_put((x, y, sample_weight))

    start = time.perf_counter()
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, data).compile()
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

    start = time.perf_counter()
    logs, state = compiled(state, data)
    jax.block_until_ready((logs, state))
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logs, state = compiled(state, data)
        jax.block_until_ready((logs, state))
        times.append(time.perf_counter() - start)
    rss_peak_kb = proc_status_kb("VmHWM")
    loss = float(logs["loss"])
    if not np.isfinite(loss):
        raise RuntimeError(f"train step returned a non-finite loss: {loss}")

    mb = 2.0**-20
    peak_bytes = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
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
    }


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


def print_result(result):
    """A worker's last word: its figures, on one marked line."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_in_subprocess(script, argv, label):
    """Runs `script argv` on JAX in a fresh process and returns the dict it
    printed with `print_result`; exits naming `label` if it failed."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
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


def ratio(value, base):
    return "n/a" if value is None or not base else f"{value / base:.2f}"
