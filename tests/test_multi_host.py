"""Two hosts killed mid-stage, resumed on one (JAX only: keras.distribution
and multi-process JAX are JAX's). Each host is a process with 4 simulated
CPU devices, joined by `keras.distribution.initialize()` (Gloo collectives).

Both train the tiny preset under FSDP over 8 devices, each writing its own
shards of the Orbax checkpoints every 2 steps, and are SIGKILLed after step
5 (every token kept: see tests/multi_host_run.py). The run then resumes as
one process with 8 devices under the tensor layout: Orbax reads the arrays
into the new shardings and the two hosts' data positions are re-split for
one. Its losses must be an uninterrupted one-process run's, step for step.
"""

import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests import checkpoint_run
from tests.test_checkpoint import ROOT
from tests.test_checkpoint import jax_env
from tests.test_multi_process import free_port

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="keras.distribution and multi-process JAX are JAX-only")


def host(tmp_path, name, checkpoints, devices, mesh, layout, kill_after=0, process=None,
         port=None):
    env = jax_env(tmp_path, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if process is not None:
        env.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port},127.0.0.1:{port + 1}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                   KERAS_DISTRIBUTION_PROCESS_ID=str(process))
        name = f"{name}_{process}"
    command = [sys.executable, "-m", "tests.multi_host_run", str(tmp_path / "preset"),
               str(tmp_path / checkpoints), str(tmp_path / name), mesh,
               layout, str(kill_after)]
    with open(tmp_path / f"{name}.txt", "w") as log:  # the child keeps its own handle
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_all(processes, timeout):
    """The exit codes; once one host fails, the others are killed (else
    they would wait minutes at a barrier for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in processes):
        if any(p.poll() not in (None, -signal.SIGKILL, -signal.SIGABRT) for p in processes):
            break
        time.sleep(0.2)
    for process in processes:
        if process.poll() is None:
            process.kill()
    return [process.wait() for process in processes]


def output(tmp_path, name):
    return (tmp_path / f"{name}.txt").read_text()


def losses(tmp_path, name):
    """{step: loss} as printed (every step: log_every=1)."""
    found = re.findall(r"step (\d+)/8: loss ([0-9.]+)", output(tmp_path, name))
    return {int(step): float(loss) for step, loss in found}


def test_two_hosts_killed_mid_stage_resume_on_one_with_another_layout(tmp_path):
    checkpoint_run.save_tiny_preset(tmp_path / "preset")
    port = free_port()
    hosts = [host(tmp_path, "killed", "ckpt", 4, "data=8", "fsdp", kill_after=5, process=i, port=port)
             for i in (0, 1)]
    codes = wait_all(hosts, 400)
    for i, code in enumerate(codes):  # a host whose peer died first may abort instead
        assert code in (-signal.SIGKILL, -signal.SIGABRT), output(tmp_path, f"killed_{i}")[-3000:]
    assert -signal.SIGKILL in codes
    saved = sorted(int(p) for p in os.listdir(tmp_path / "ckpt") if p.isdigit())
    assert saved and saved[-1] in (2, 4)  # the save after step 4 may not have finished
    step = saved[-1]
    folder = tmp_path / "ckpt" / str(step)
    data = sorted(p for p in os.listdir(folder / "data") if p.endswith(".json"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"]  # one per host
    for item in ("model", "optimizer"):  # each host wrote its own shards
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(folder / item))

    uninterrupted = host(tmp_path, "uninterrupted", "ckpt_u", 8, "data=8", "fsdp")
    assert uninterrupted.wait(400) == 0, output(tmp_path, "uninterrupted")[-3000:]
    resumed = host(tmp_path, "resumed", "ckpt", 8, "data=4,model=2", "tensor")
    assert resumed.wait(400) == 0, output(tmp_path, "resumed")[-3000:]
    assert f"step {step}/8" in output(tmp_path, "resumed").split("Resumed from")[1][:200]

    # Two hosts, then one resumed on another layout: one uninterrupted run.
    expected = losses(tmp_path, "uninterrupted")
    got = {**losses(tmp_path, "killed_0"), **losses(tmp_path, "resumed")}
    assert sorted(expected) == sorted(got) == list(range(1, 9))
    assert min(losses(tmp_path, "resumed")) == step + 1
    np.testing.assert_allclose([got[s] for s in range(1, 9)],
                               [expected[s] for s in range(1, 9)], atol=2e-3)
