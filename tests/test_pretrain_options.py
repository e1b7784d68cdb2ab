"""One warmup rule, held-out records that training never reads, and the
backend `ov2` runs on."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_ov2 import cli
from keras_ov2.cli.pretrain import parse_stages
from keras_ov2.data import RecordRange
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import split_held_out
from keras_ov2.models.common.recipe_optimizer import default_warmup_steps
from keras_ov2.training import Stage
from keras_ov2.training import pretrain
from keras_ov2.training.pretrain import HELD_OUT_SIZE
from tests.checkpoint_run import save_tiny_preset
from tests.once_per_suite import once_per_suite

ROOT = Path(__file__).resolve().parent.parent


def tiny_preset(folder):
    save_tiny_preset(folder)
    return str(folder)


# -- warmup ---------------------------------------------------------------------


def warmup_of(optimizer):
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else None
    schedule = getattr(optimizer, "_learning_rate", schedule)
    schedule = getattr(schedule, "schedule", schedule)  # PerUpdateSchedule wraps it
    return schedule.warmup_steps


def test_one_default_warmup_for_compile_stages_and_the_cli(tmp_path):
    import keras_ov2

    assert default_warmup_steps(390_981) == 1_563  # the authors' 84 px stage
    assert Stage(84, 1000, 8).warmup == default_warmup_steps(1000) == 4
    assert parse_stages("84:1000:8")[0].warmup == 4
    captioner = keras_ov2.OpenVision2Captioner.from_preset(
        tiny_preset(tmp_path / "tiny"), load_weights=False)
    captioner.compile(total_steps=1000)
    assert warmup_of(captioner.optimizer) == 4


def test_stages_take_their_warmup_in_steps():
    stages = parse_stages("84:390981:32768:1.024e-3:1563,224:62556:16384:2.56e-5:1563")
    assert [(s.learning_rate, s.warmup) for s in stages] == [(1.024e-3, 1563), (2.56e-5, 1563)]
    assert parse_stages("84:1500:16::75")[0].learning_rate is None
    assert parse_stages("84:10:4:1e-3:0")[0].warmup == 0  # no warmup, as the authors' last
    for bad in ("84:10:4:1e-3:10", "84:10:4:1e-3:-1", "84:10:4:1e-3:2.5", "84:10:4:1:2:3"):
        with pytest.raises(Exception, match="bad stage"):
            parse_stages(bad)


# -- held out ---------------------------------------------------------------------


class CountingSource:
    """Records of scenes, counting how often each index is read."""

    def __init__(self, count):
        self.scenes = SyntheticScenes(count, image_size=56, seed=3)
        self.reads = collections.Counter()

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, index):
        self.reads[index] += 1
        return self.scenes[index]


def test_record_range_is_a_source_of_its_own():
    source = list(range(10))
    part = RecordRange(source, 3, 7)
    assert len(part) == 4 and [part[i] for i in range(4)] == [3, 4, 5, 6]
    with pytest.raises(IndexError):
        part[4]
    with pytest.raises(ValueError, match="does not fit a source of 10 records"):
        RecordRange(source, 5, 11)
    train, held = split_held_out(source, 3)
    assert [train[i] for i in range(len(train))] == list(range(7))
    assert [held[i] for i in range(len(held))] == [7, 8, 9]
    train, held = split_held_out(list(range(5)), 3)  # small data: half held out
    assert len(train) == 3 and [held[i] for i in range(len(held))] == [3, 4]
    with pytest.raises(ValueError, match="needs at least 2"):
        split_held_out([0], 3)


def test_held_out_records_are_never_trained_on(tmp_path):
    """The last HELD_OUT_SIZE records are read once (to measure the run),
    the others by training, several times over."""
    source = CountingSource(2 * HELD_OUT_SIZE + 8)
    printed = []
    pretrain(tiny_preset(tmp_path / "tiny"), dataset=source,
             stages=[Stage(56, 12, 8)], output_dir=tmp_path / "out", print_fn=printed.append,
             sequence_length=16, augment=False)
    cut = len(source) - HELD_OUT_SIZE
    assert all(source.reads[i] == 1 for i in range(cut, len(source)))
    assert sum(source.reads[i] for i in range(cut)) >= 12 * 8
    assert f"Held out: the last {HELD_OUT_SIZE} of {len(source)} records, never trained on." \
        in printed


# -- the backend ------------------------------------------------------------------


def test_backend_option_cannot_switch_a_running_keras(capsys):
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["--backend", other, "presets"])
    assert exit_code.value.code == 1
    assert f"already runs Keras on {keras.backend.backend()}" in capsys.readouterr().err
    assert cli.main(["--backend", keras.backend.backend(), "presets"]) == 0


@once_per_suite
def test_ov2_runs_on_the_backend_asked_for_without_a_restart(tmp_path):
    """The console script's path: KERAS_BACKEND says tensorflow, `--backend
    torch` wins, and Keras comes up on torch in the same process: the code
    after `main()` runs (an exec would never return to it)."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    args = ["--backend", "torch", "pretrain", "--preset", tiny_preset(tmp_path / "tiny"),
            "--stages", "56:2:2", "--output", str(tmp_path / "out")]
    script = ("import os; print('pid', os.getpid(), flush=True); "
              "from keras_ov2.cli import main; "
              "main(); print('pid', os.getpid())")
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on torch\n" in done.stdout
    pids = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("pid ")]
    assert len(pids) == 2 and pids[0] == pids[1]
    assert np.isfinite(float(done.stdout.split("Held-out loss: ")[1].split()[0]))
