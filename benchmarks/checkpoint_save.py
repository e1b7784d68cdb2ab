"""How long training waits for a checkpoint, and the host memory a save takes.

keras_ov2 used to save a training checkpoint by gathering every model and
optimizer variable whole to the host and writing `model.npz` and
`optimizer.npz` (then fsync), with training stopped for all of it. It now
saves through Orbax (`keras_ov2.training.checkpoint.CheckpointFolder`):
each shard is written from where it lives, in a background thread once the
arrays are copied off the devices. This script lays out the captioner
`--preset` (default: ViT-S/16 encoder + decoder S) by FSDP over 8 simulated
JAX CPU devices and saves it `--saves` times each way, each save after a
train step (as in training), and prints per way:

- blocked_s: median seconds until the save call returns (training waits
  this long); total_s: median seconds until the checkpoint is written
  (`wait()` returned; the same as blocked for the synchronous ways);
- disk_MiB: the size of one checkpoint's files;
- peak_MiB: median over the saves of the highest rise of the resident
  memory during a save, from the call until the write is done (VmRSS of
  /proc/self/status read every 5 ms by a thread, above its value just
  before the call, once the train step's memory is handed back, see
  `settle`). CPU "device" arrays live in this process, so this is the host
  memory a save adds;
- the ratios of blocked_s and peak_MiB to the gathered npz's.

The gathered npz save is re-implemented here (`Gathered`: the old
`save_checkpoint` without its state.json, data states and rename). The
Orbax saves write their small state JSON and no data position; with async
saves Orbax logs "Waiting for previous save to complete took ... s" on the
next save, which is the time this script spent in `wait()`.

    python benchmarks/checkpoint_save.py            # about 3 minutes on 2 cores
    python benchmarks/checkpoint_save.py --preset openvision2_captioner_vit_tiny_patch16_84
"""

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from keras_ov2.durable import fsync_path
from step_measure import load_average
from step_measure import machine
from step_measure import print_columns
from step_measure import proc_status_kb
from step_measure import ratio
from step_measure import release_free_heap

PRESET = "openvision2_captioner_vit_small_patch16_84"


class PeakRSS:
    """Within `with`: a thread reads VmRSS every `interval` s; `rise_mib`
    is the highest reading minus the one taken on entry."""

    def __init__(self, interval=0.005):
        self.interval = interval
        self.done = threading.Event()

    def __enter__(self):
        self.start = self.peak = proc_status_kb("VmRSS")
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, proc_status_kb("VmRSS"))

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, proc_status_kb("VmRSS"))
        self.rise_mib = (self.peak - self.start) / 1024


def captioner_and_step(preset, batch_size):
    """The captioner `preset` laid out by FSDP over 8 devices, and a
    function that trains it one step on a batch of synthetic scenes."""
    import keras

    from keras_ov2.data import SyntheticScenes
    from keras_ov2.training.setup import setup_training

    keras.utils.set_random_seed(0)
    setup = setup_training(preset, mesh="data=8", layout="fsdp", initialize=False)
    captioner = setup.captioner
    size = captioner.preprocessor.image_converter.image_size[0]
    scenes = SyntheticScenes(batch_size, image_size=size, seed=0)
    records = [scenes[i] for i in range(batch_size)]
    images = np.stack([r["image"] for r in records])
    captions = np.array([r["caption"] for r in records])
    with setup.scope():
        captioner.compile(learning_rate=1e-4, total_steps=100)

    def step():
        with setup.scope():
            captioner.train_on_batch(images, captions)

    return captioner, step


def settle():
    """Waits until VmRSS stops falling for half a second, handing freed
    heap back to the OS: XLA frees a step's buffers in the background for
    a while after the step returns, which would hide a save's rise."""
    last = None
    while True:
        release_free_heap()
        rss = proc_status_kb("VmRSS")
        if last is not None and rss >= last - 1024:
            return
        last = rss
        time.sleep(0.5)


class Gathered:
    """The old format, as a folder of checkpoints `<directory>/<step>`:
    each variable gathered whole to the host, one `np.savez` per file
    (model.npz, optimizer.npz), every file and the folder fsynced; `save`
    returns when all of it is on disk."""

    def __init__(self, directory):
        self.directory = directory

    def save(self, step, model, state):
        """`state` is not written (the old state.json was a few bytes)."""
        folder = self.directory / str(step)
        folder.mkdir()
        for name, variables in (("model.npz", model.variables),
                                ("optimizer.npz", model.optimizer.variables)):
            arrays = {f"{i}:{v.path}": np.asarray(v.value) for i, v in enumerate(variables)}
            np.savez(folder / name, **arrays)
            fsync_path(folder / name)
        fsync_path(folder)

    def wait(self):
        pass

    def close(self):
        pass


def measure(saver, directory, model, step, saves):
    """{blocked_s, total_s, peak_mib, step_s: a list per save; disk_mib:
    the last checkpoint's}. Each save follows a train step, as in training:
    the step also replaces the arrays, and with them the host copies that
    `np.asarray` caches on a JAX array (a gathered save of the same arrays
    again would find them)."""
    result = {"blocked_s": [], "total_s": [], "peak_mib": [], "step_s": []}
    for number in range(1, saves + 1):
        start = time.perf_counter()
        step()
        result["step_s"].append(time.perf_counter() - start)
        settle()
        with PeakRSS() as rss:
            start = time.perf_counter()
            saver.save(number, model, {})
            result["blocked_s"].append(time.perf_counter() - start)
            saver.wait()
            result["total_s"].append(time.perf_counter() - start)
        result["peak_mib"].append(rss.rise_mib)
    saver.close()
    files = (directory / str(saves)).rglob("*")
    result["disk_mib"] = sum(p.stat().st_size for p in files if p.is_file()) / 2**20
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=PRESET, help="a captioner preset (default %(default)s)")
    parser.add_argument("--saves", type=int, default=3, help="saves per way (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="of the train steps; a multiple of 8 (default %(default)s)")
    parser.add_argument("--directory", help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    # Before JAX starts, which fixes its device count.
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()

    started = time.perf_counter()
    print(f"machine:  {machine()}; load average {load_average()}")
    print("note:     wall-clock timings; other load on the machine shows up in them")
    import jax
    import keras

    from keras_ov2.training.checkpoint import CheckpointFolder

    model, step = captioner_and_step(args.preset, args.batch_size)
    step()  # compiles the step and builds the AdamW slots
    weights = sum(v.value.nbytes for v in model.variables) / 2**20
    slots = sum(v.value.nbytes for v in model.optimizer.variables) / 2**20
    print(f"backend:  jax {jax.__version__} ({len(jax.devices())} {jax.default_backend()} "
          f"devices), keras {keras.__version__}")
    print(f"model:    {args.preset}, {model.count_params() / 1e6:.1f}M parameters, FSDP over "
          f"data=8; {weights:.0f} MiB of model variables + {slots:.0f} MiB optimizer")
    print(f"saves:    {args.saves} per way, each after a train step of batch {args.batch_size} "
          f"(built and compiled in {time.perf_counter() - started:.0f} s)")
    print()

    root = Path(args.directory or tempfile.mkdtemp(prefix="checkpoint_save_"))
    ways = {
        "gathered npz": Gathered,
        "Orbax async": lambda d: CheckpointFolder(d, keep=3, asynchronous=True),
        "Orbax sync": lambda d: CheckpointFolder(d, keep=3, asynchronous=False),
    }
    results = {}
    try:
        for name, make in ways.items():
            directory = root / name.replace(" ", "_")
            directory.mkdir(parents=True)
            results[name] = measure(make(directory), directory, model, step, args.saves)
            shutil.rmtree(directory)
    finally:
        if not args.directory:
            shutil.rmtree(root, ignore_errors=True)

    base = results["gathered npz"]
    rows = []
    for name, r in results.items():
        blocked, peak = statistics.median(r["blocked_s"]), statistics.median(r["peak_mib"])
        rows.append({
            "way": name,
            "blocked_s": f"{blocked:.2f}",
            "total_s": f"{statistics.median(r['total_s']):.2f}",
            "disk_MiB": f"{r['disk_mib']:.0f}",
            "peak_MiB": f"{peak:.0f}",
            "blocked/npz": ratio(blocked, statistics.median(base["blocked_s"])),
            "peak/npz": ratio(peak, statistics.median(base["peak_mib"])),
        })
    print_columns(rows)
    print("\nper save (blocked s / total s / peak MiB):")
    for name, r in results.items():
        cells = zip(r["blocked_s"], r["total_s"], r["peak_mib"])
        print(f"  {name + ':':14} " + ", ".join(f"{b:.2f}/{t:.2f}/{p:.0f}" for b, t, p in cells))
    steps = [s for r in results.values() for s in r["step_s"]]
    print(f"\ntrain step between saves (not in the table): median {statistics.median(steps):.2f} s")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
