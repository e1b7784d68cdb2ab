"""Checkpoints: a save/restore round trip, a crash while saving and refused
mismatches on the current backend (all three); SIGKILL-and-resume of
`pretrain` across a stage boundary and `ov2 pretrain --mesh data=8` in
subprocesses, on JAX only (the subprocesses pin KERAS_BACKEND=jax: the resume
logic is backend-neutral and the round trip covers each backend's variables,
while Keras 3.15 distributes on JAX only)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_ov2.training import checkpoint
from keras_ov2.training.data_position import TrackedBatches
from keras_ov2.training.data_position import resplit
from keras_ov2.training.resume import RunCheckpoints
from keras_ov2.training.resume import config_leaves
from tests import checkpoint_run
from tests.test_captioner import scenes
from tests.test_captioner import tiny_captioner

ROOT = Path(__file__).resolve().parent.parent


def trained_captioner(seed, steps):
    """The tiny captioner after `steps` training steps (its optimizer built)."""
    keras.utils.set_random_seed(seed)
    captioner = tiny_captioner()
    captioner.compile(learning_rate=1e-3, total_steps=10, warmup_steps=1)
    images, captions = scenes(4)
    for _ in range(steps):
        captioner.train_on_batch(images, np.array(captions))
    return captioner


@pytest.fixture(scope="module")
def trained():
    """The tiny captioner after two steps, shared: each test saves what it compares."""
    return trained_captioner(seed=0, steps=2)


def values(variables):
    return [keras.ops.convert_to_numpy(v.value) for v in variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_round_trip_restores_weights_optimizer_and_masking_randomness(trained, tmp_path):
    saved = trained
    folder = checkpoint.CheckpointFolder(tmp_path)
    started = time.perf_counter()
    folder.save(2, saved, {"note": "x"}, {"next_index": 8})
    blocked = time.perf_counter() - started
    folder.wait()
    assert folder.steps() == [2]
    assert {"model", "optimizer", "state", "data"} <= {p.name for p in (tmp_path / "2").iterdir()}
    assert (tmp_path / "2" / "data" / "process_0-of-1.json").is_file()  # Grain's own format
    restored = trained_captioner(seed=1, steps=0)
    states = [v for m in (saved, restored) for v in m.variables if "seed_generator" in v.path]
    assert len(states) == 2
    assert not np.array_equal(*values(states))  # masks would differ without a restore
    reopened = checkpoint.CheckpointFolder(tmp_path)
    reopened.restore_model(2, restored)
    reopened.restore_optimizer(2, restored)
    assert_same(values(restored.variables), values(saved.variables))
    assert_same(values(restored.optimizer.variables), values(saved.optimizer.variables))
    iterations = int(keras.ops.convert_to_numpy(saved.optimizer.iterations))
    assert iterations >= 2
    assert int(keras.ops.convert_to_numpy(restored.optimizer.iterations)) == iterations
    # The next step draws the same masks, sees the same state: the same loss.
    images, captions = scenes(4)
    losses = [float(m.train_on_batch(images, np.array(captions))) for m in (saved, restored)]
    assert losses[0] == losses[1]
    state, data = reopened.read_state(2)
    assert (state["note"], state["step"], data) == ("x", 2, {"next_index": 8})
    size = sum(p.stat().st_size for p in (tmp_path / "2").rglob("*") if p.is_file()) / 2**20
    print(f"checkpoint of the tiny captioner: {size:.1f} MiB, training blocked {blocked:.2f} s")
    folder.close()


def test_a_save_that_fails_keeps_the_last_checkpoint(trained, tmp_path, monkeypatch):
    model = trained
    folder = checkpoint.CheckpointFolder(tmp_path, keep=2)
    folder.save(1, model, {})
    folder.wait()

    def disk_full(self):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.DataPosition, "get_state", disk_full)
    with pytest.raises(Exception, match="simulated"):
        folder.save(2, model, {}, {"next_index": 4})
        folder.wait()
    monkeypatch.undo()
    left = [p.name for p in tmp_path.iterdir()]
    assert "2" not in left  # the step folder appears only once complete
    reopened = checkpoint.CheckpointFolder(tmp_path, keep=2)
    assert reopened.steps() == [1]
    restored = trained_captioner(seed=1, steps=0)
    reopened.restore_model(1, restored)
    assert_same(values(restored.weights), values(model.weights))
    for step in (3, 4, 5):
        reopened.save(step, model, {})
    reopened.close()
    assert checkpoint.CheckpointFolder(tmp_path).steps() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4", "5"]  # nothing partial left


def test_another_model_or_run_is_refused_naming_the_difference(trained, tmp_path):
    model = trained
    run = {"seed": 0, "stages": [[56, 4, 4]]}
    saver = RunCheckpoints(tmp_path, 1, run, [4])
    saver.save(model, 0, 1, None, [])
    saver.close()
    keras.utils.set_random_seed(0)
    other = tiny_captioner()
    with pytest.raises(checkpoint.CheckpointError, match="seed is 0 there, 1 here"):
        RunCheckpoints(tmp_path, 1, {**run, "seed": 1}, [4]).resume(other)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"another model: backbone.config.hidden_dim is 32 there, 16 here"):
        RunCheckpoints(tmp_path, 1, run, [4]).resume(keras_ov2_tiny(hidden_dim=16))
    keras.utils.set_random_seed(0)
    narrow = keras_ov2_tiny(hidden_dim=16)
    with pytest.raises(checkpoint.CheckpointError, match=r"patch_embedding/kernel "
                       r"\(16, 16, 3, 32\) in the checkpoint, patch_embedding/kernel "
                       r"\(16, 16, 3, 16\) in this model"):
        checkpoint.CheckpointFolder(tmp_path).restore_model(1, narrow)
    assert "backbone.config.hidden_dim" in config_leaves(model.get_config())


def test_data_states_are_resplit_for_another_number_of_hosts():
    """Two shards that each read 6 records: 12 read, so one shard goes on
    from 12 and four from 3; unequal or non-pipeline states are refused."""
    two = [{"next_index": 6}, {"next_index": 6}]
    assert resplit(two, 2, 1, where="d") == {"next_index": 12}
    assert resplit(two, 2, 4, where="d") == {"next_index": 3}
    # four processes reading two shards (a model axis across hosts): pairs agree
    assert resplit(two * 2, 2, 1, where="d") == {"next_index": 12}
    with pytest.raises(ValueError, match=r"d: the 2 data shards had read \[5, 6\] records"):
        resplit([{"next_index": 5}, {"next_index": 6}], 2, 1, where="d")
    with pytest.raises(ValueError, match="1 shards cannot be split into 2.*Grain workers"):
        resplit([{"workers_state": {}}], 1, 2, where="d")


def keras_ov2_tiny(hidden_dim):
    import keras_ov2

    backbone = keras_ov2.OpenVision2Backbone(
        patch_size=16, hidden_dim=hidden_dim, num_layers=1, num_heads=2, intermediate_dim=64)
    decoder = keras_ov2.OpenVision2TextDecoder(32000, 32, 2, 2, 64)
    return keras_ov2.OpenVision2Captioner(backbone, decoder, seed=1)


def test_tracked_batches_give_the_state_after_each_step():
    import grain

    batches = TrackedBatches(grain.MapDataset.range(20).to_iter_dataset().batch(2))
    peek = iter(batches)
    next(peek)  # as Keras peeks at a spec with its own iterator
    iterator = iter(batches)
    first = [next(iterator) for _ in range(3)]  # read ahead of the step trained
    assert batches.state_at(1) == {"next_index": 2}
    resumed = iter(TrackedBatches(batches._parent, batches.state_at(1), start_step=1))
    np.testing.assert_array_equal(next(resumed), first[1])


def jax_env(tmp_path, **extra):
    return dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", **extra)


def start_run(tmp_path, name, checkpoints, seconds=0.0):
    out = tmp_path / name
    out.mkdir()
    log = open(out / "stdout.txt", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint_run", str(tmp_path / "preset"),
         str(checkpoints), str(out / "preset"), str(out / "steps.jsonl"), "28:8:4,56:8:4",
         str(seconds)],
        cwd=ROOT, env=jax_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    return process, out


def finish(process, out, timeout=300):
    assert process.wait(timeout) == 0, (out / "stdout.txt").read_text()[-4000:]
    return checkpoint_run.read_log(out / "steps.jsonl")


def comparable(lines):
    return [(s["image_size"], s["step"], s["lr"], s["batch"]) for s in lines]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="runs on JAX in subprocesses")
def test_a_killed_run_resumes_across_stages_as_if_never_stopped(tmp_path):
    """Two stages of 8 steps (28 px, then 56 px), a checkpoint every 4 steps.
    A run slowed down is SIGKILLed one step after the checkpoint at stage 2,
    step 4; restarted, it must go on from that checkpoint exactly as an
    uninterrupted run: the same batches, learning rates and losses, step for
    step. A copy of the checkpoints without that one resumes at the stage
    boundary instead."""
    checkpoint_run.save_tiny_preset(tmp_path / "preset")
    running = start_run(tmp_path, "uninterrupted", tmp_path / "ckpt_u")
    killed, out = start_run(tmp_path, "killed", tmp_path / "ckpt", seconds=0.5)
    log, deadline = out / "steps.jsonl", time.monotonic() + 300
    while killed.poll() is None and time.monotonic() < deadline and not (
            log.is_file() and len(checkpoint_run.read_log(log)) >= 13):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    uninterrupted = finish(*running)
    before = checkpoint_run.read_log(log)
    saved_step = checkpoint.CheckpointFolder(tmp_path / "ckpt").latest()
    assert saved_step == 12 and 12 < len(before) < 16  # killed in stage 2, past a checkpoint
    boundary = tmp_path / "ckpt_boundary"
    shutil.copytree(tmp_path / "ckpt", boundary)
    for step in checkpoint.CheckpointFolder(boundary).steps():
        if step > 8:
            shutil.rmtree(boundary / str(step))
    resumed = start_run(tmp_path, "resumed", tmp_path / "ckpt")
    from_boundary = start_run(tmp_path, "boundary", boundary)
    after, at_boundary = finish(*resumed), finish(*from_boundary)

    assert len(uninterrupted) == 16
    assert len({s["batch"] for s in uninterrupted}) == 16  # no batch twice
    assert (after[0]["image_size"], after[0]["step"]) == (56, 5)
    stitched = before[:saved_step] + after
    assert comparable(stitched) == comparable(uninterrupted)
    np.testing.assert_allclose([s["loss"] for s in stitched],
                               [s["loss"] for s in uninterrupted], rtol=1e-5)
    assert comparable(at_boundary) == comparable(uninterrupted[8:])
    np.testing.assert_allclose([s["loss"] for s in at_boundary],
                               [s["loss"] for s in uninterrupted[8:]], rtol=1e-5)
    logs = [json.loads((tmp_path / name / "preset" / "pretrain_log.json").read_text())
            for name in ("uninterrupted", "resumed", "boundary")]
    assert logs[1]["loss_after"] == logs[0]["loss_after"] == logs[2]["loss_after"]
    assert "Resumed from" in (tmp_path / "resumed" / "stdout.txt").read_text()
    assert "trained before the checkpoint" in (tmp_path / "boundary" / "stdout.txt").read_text()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution is JAX-only")
def test_ov2_pretrain_on_a_mesh_of_8_devices_checkpoints_and_resumes(tmp_path):
    """`ov2 pretrain --mesh data=8 --layout fsdp` on 8 simulated CPU devices
    (JAX only: XLA_FLAGS fixes the device count when JAX starts, hence a
    subprocess) saves each shard through Orbax; a rerun on a
    4x2 tensor-parallel mesh re-shards them and trains the last step."""
    checkpoint_run.save_tiny_preset(tmp_path / "preset")
    env = jax_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=8")

    def ov2(*mesh):
        command = [sys.executable, "-m", "keras_ov2.cli", "pretrain", "--preset",
                   str(tmp_path / "preset"), "--stages", "56:3:8", "--output",
                   str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt"),
                   "--checkpoint-every", "1", "--no-report", *mesh]
        run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=400)
        assert run.returncode == 0, run.stderr[-4000:]
        return run.stdout

    first = ov2("--mesh", "data=8", "--layout", "fsdp")
    folder = checkpoint.CheckpointFolder(tmp_path / "ckpt")
    assert folder.steps() == [1, 2, 3]
    saved = folder.saved_state(3)["variables"]["model"]
    assert ["patch_embedding/kernel", [14, 14, 3, 32]] in saved
    shutil.rmtree(tmp_path / "ckpt" / "3")
    second = ov2("--mesh", '{"data": 4, "model": 2}', "--layout", "tensor")
    assert "Resumed from" in second and "step 2/3" in second
    step_3 = [line for line in (first, second)
              for line in line.splitlines() if "step 3/3" in line]
    losses = [float(re.search(r"loss ([0-9.]+)", line).group(1)) for line in step_3]
    np.testing.assert_allclose(losses[0], losses[1], atol=2e-3)
