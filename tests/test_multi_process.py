"""Two processes on one machine train as one: `keras.distribution.initialize()`
on localhost, 4 CPU devices each, each host reading its own data shard,
against one process with all 8 devices on the same global batches."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="multi-process training is JAX-only by design: keras.distribution "
    "(initialize, DataParallel) trains on JAX in Keras 3.15, and CPU "
    "processes join through JAX's Gloo collectives.",
)

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi_process")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    module = [sys.executable, "-m", "tests.multi_process_step", str(out)]
    port = str(free_port())
    commands = [module + ["two", port, str(i)] for i in range(2)] + [module + ["one"]]
    processes = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-5000:]
    names = ("process_0", "process_1", "one_process")
    return {n: json.loads((out / f"{n}.json").read_text()) for n in names}


def test_processes_read_disjoint_shards_that_make_up_the_global_batch(runs):
    first, second, one = runs["process_0"], runs["process_1"], runs["one_process"]
    assert (first["shard"], second["shard"]) == ([0, 2], [1, 2])
    assert first["process_count"] == second["process_count"] == 2
    assert first["batch_size"] == second["batch_size"] == 4
    assert len(set(first["rows"] + second["rows"])) == 2 * len(first["rows"])
    # One process reads host 0's rows then host 1's, step by step.
    expected = []
    for step in range(0, len(first["rows"]), 4):
        expected += first["rows"][step:step + 4] + second["rows"][step:step + 4]
    assert one["rows"] == expected


def test_two_processes_agree_with_one_on_the_loss(runs):
    first, second, one = runs["process_0"], runs["process_1"], runs["one_process"]
    assert first["losses"] == second["losses"]  # one global loss, seen by both
    np.testing.assert_allclose(first["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][-1] < one["losses"][0]  # the steps did train
    assert first["weight_checksum"] == second["weight_checksum"]
    np.testing.assert_allclose(first["weight_checksum"], one["weight_checksum"], rtol=1e-5)
