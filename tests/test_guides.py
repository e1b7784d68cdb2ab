"""The guides: their notebooks are what `guides/make_notebooks.py` makes of
them, and each guide runs top to bottom (small settings, in a subprocess)
and prints and writes what its text describes."""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tests.once_per_suite import once_per_suite

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "guides"
GUIDE_NAMES = ("quickstart", "released_checkpoints", "pretraining", "evaluating_an_encoder",
               "llava_style_model")

spec = importlib.util.spec_from_file_location("make_notebooks", GUIDES / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_notebooks)


def test_every_guide_is_listed():
    assert [p.stem for p in make_notebooks.guide_paths()] == sorted(GUIDE_NAMES)


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_committed_notebook_matches_the_guide(name):
    notebook = GUIDES / f"{name}.ipynb"
    assert notebook.exists(), f"{notebook} is missing: run python guides/make_notebooks.py"
    assert notebook.read_text() == make_notebooks.notebook_text(GUIDES / f"{name}.py"), (
        f"{notebook} is stale: run python guides/make_notebooks.py"
    )


@pytest.mark.parametrize("name", GUIDE_NAMES)
def test_notebook_holds_the_guide(name):
    """Header cell, pip cell, then every line of the guide's code in order."""
    path = GUIDES / f"{name}.py"
    notebook = json.loads(make_notebooks.notebook_text(path))
    assert notebook["nbformat"] == 4
    cells = notebook["cells"]
    header = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and header.startswith("# ")
    assert "**Author:** keras_ov2 team" in header and "**Accelerator:**" in header
    assert "".join(cells[1]["source"]).splitlines()[-1].startswith("!pip install -q git+")
    code = "\n".join("".join(c["source"]) for c in cells[2:] if c["cell_type"] == "code")
    ast.parse(code)  # the code cells, joined, are valid Python
    source_code = [line for line in path.read_text().splitlines() if line.strip()]
    notebook_lines = [line for line in code.splitlines() if line.strip()]
    assert all(line in source_code for line in notebook_lines)
    assert len(notebook_lines) > 20 and all(c["outputs"] == [] for c in cells
                                            if c["cell_type"] == "code")


def test_cells_split_at_module_level_strings(tmp_path):
    guide = tmp_path / "demo.py"
    guide.write_text(
        '"""\nTitle: Demo\nAuthor: keras_ov2 team\nDate created: 2026/01/01\n'
        'Last modified: 2026/01/02\nDescription: A demo.\nAccelerator: GPU\n"""\n'
        '"""\n## Setup\n"""\n\nimport os\n\n\ndef f():\n    """Not a cell."""\n'
        '    return 1\n\n"""\nText.\n"""\n\nx = f()\n'
    )
    cells = [(c["cell_type"], "".join(c["source"]))
             for c in make_notebooks.notebook(guide)["cells"]]
    assert [kind for kind, _ in cells] == ["markdown", "code", "markdown", "code",
                                           "markdown", "code"]
    assert cells[0][1].splitlines()[0] == "# Demo"
    assert "**Date created:** 2026/01/01<br>" in cells[0][1]
    assert cells[3][1] == 'import os\n\n\ndef f():\n    """Not a cell."""\n    return 1'
    assert cells[4][1] == "Text." and cells[5][1] == "x = f()"
    assert make_notebooks.notebook(guide)["metadata"]["accelerator"] == "GPU"


def test_header_fields_are_required(tmp_path):
    guide = tmp_path / "bad.py"
    guide.write_text('"""\nTitle: Demo\nAuthor: me\n"""\nx = 1\n')
    with pytest.raises(ValueError, match="Date created, Last modified"):
        make_notebooks.notebook(guide)


# --- Running the guides ------------------------------------------------------

# Guides run once per suite (the quickstart starts its other backends itself).


def run_guide(name, folder):
    env = {**os.environ, "KERAS_BACKEND": "jax", "KERAS_OV2_GUIDE_SMALL": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg",
           "KERAS_OV2_CACHE": str(folder / "cache")}
    result = subprocess.run([sys.executable, str(GUIDES / f"{name}.py")], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result.stdout


def check_png(path, min_size):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # not blank


def number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in the output:\n{text[-3000:]}"
    return float(match.group(1))


def assert_held_out_loss_fell(out):
    """The guide's pretraining run printed a lower held-out loss after than before."""
    assert number(r"Held-out loss: [\d.]+ -> ([\d.]+)", out) < \
        number(r"Held-out loss before training: ([\d.]+)", out)


@once_per_suite
def test_quickstart_runs(tmp_path):
    out = run_guide("quickstart", tmp_path)
    assert "openvision2_vit_large_patch14_224          302.9M  224" in out
    # The suite runs offline (HF_HUB_OFFLINE): the answer says how to get the weights.
    assert "ov2 convert FOLDER --preset openvision_vit_tiny_patch16_160" in out
    assert_held_out_loss_fell(out)
    assert "sequence_output  (8, 36, 128)" in out and "224 px: (8, 256, 128)" in out
    for backend in ("tensorflow", "torch"):
        tokens = number(rf"\n{backend} +([\d.e+-]+) ", out)
        pooled = number(rf"\n{backend} +[\d.e+-]+ +([\d.e+-]+)", out)
        assert tokens < 1e-4 and pooled < 1e-4
    assert "encoder tokens: (1, 256, 128) -> tokens the decoder sees: (1, 89, 128)" in out
    assert "256 patches, 89 kept per step" in out
    assert 0 < number(r"kept in both steps: (\d+)", out) < 89  # a fresh subset per step
    check_png(tmp_path / "token_masking.png", 300)
    # The caption table: a generated and the true detailed caption per scene.
    assert len(re.findall(r"\n   true: \w+ shapes?: a (small|large) ", out)) == 8
    assert len(re.findall(r"\n(ok|  ) made: ", out)) == 8
    assert "the photo: " in out
    accuracy = {row: number(rf"\n{re.escape(row)} +(\d+)%", out)
                for row in ("colour+shape", "colour", "shape")}
    # One prediction per image: right on both means right on each.
    assert accuracy["colour+shape"] <= min(accuracy["colour"], accuracy["shape"])
    assert number(r"\ncolour\+shape +\d+% +(\d+)%", out) == 4  # chance: 1 of 24 classes


@once_per_suite
def test_released_checkpoints_runs(tmp_path):
    # find_spec, not import: torchvision imported after TensorFlow (which an
    # earlier test may have loaded here) segfaults; the guide imports it in
    # its own process.
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch (the test extra) is not installed")
    out = run_guide("released_checkpoints", tmp_path)
    assert sorted(os.listdir(tmp_path / "release")) == ["open_clip_config.json",
                                                        "open_clip_pytorch_model.bin"]
    assert "outputs: ['pooled_output', 'sequence_output']" in out  # proj dropped
    assert number(r"sequence_output +\(2, 256, 1024\) +([\d.e+-]+)", out) < 1e-4
    assert number(r"pooled_output +\(2, 1024\) +([\d.e+-]+)", out) < 1e-4
    assert "penultimate patch tokens: (2, 256, 1024)" in out
    assert "last block == sequence_output: True" in out
    assert "visual embeddings for the language model: (2, 256, 256)" in out
    for key in ("sequence_output", "pooled_output"):
        assert number(rf"on the export, {key}: max \|diff\| ([\d.e+-]+)", out) < 1e-4
    assert "Keras -> open_clip -> Keras, weights identical: True" in out


@once_per_suite
def test_pretraining_runs(tmp_path):
    out = run_guide("pretraining", tmp_path)
    assert "written 198 of 200, skipped {'unreadable_image': 1, 'empty_caption': 1}" in out
    assert "ArrayRecordSource 198 records" in out
    assert "batch: (8, 84, 84, 3) uint8" in out
    check_png(tmp_path / "augmented_batch.png", 300)
    assert "[stage 2/2, 224 px] step 4/4" in out
    rows = re.findall(r"\n +(\d) +(84|224) +([\d.]+) +([\d.]+)", out)
    assert [(r[0], r[1]) for r in rows] == [("1", "84"), ("2", "224")]
    assert float(rows[0][3]) < float(rows[0][2])  # the loss fell in stage 1
    check_png(tmp_path / "training_curves.png", 300)
    log = json.loads((tmp_path / "ov2_two_stage" / "pretrain_log.json").read_text())
    assert log["loss_after"] < log["loss_before"]
    assert {stage for stage, _, _ in log["losses"]} == {0, 1}
    # The preempted first call, its checkpoints, and the resumed second call.
    assert "The run stopped: preempted after step 10" in out
    assert re.search(r"\n  4 +[\d.]+ MiB  \[.*'data', 'model', 'optimizer', 'state'\]\n  8 ",
                     out)
    assert "{'step': 8, 'stage': 0, 'stage_step': 8, 'processes': 1}" in out
    assert "Resumed from checkpoints/8: stage 1, step 8/16" in out
    assert "[stage 1/2, 84 px] step 9/16: loss" in out
    assert "[stage 1/2, 84 px] step 1/16" not in out.split("Resumed from")[1]
    assert number(r"steps 9-10 trained twice, largest loss difference: ([\d.e+-]+)", out) < 1e-3
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == [
        "12", "16", "20"]  # the last three kept
    stage_1 = [step for stage, step, _ in log["losses"] if stage == 0]
    assert stage_1 == sorted(stage_1) and min(stage_1) <= 8 < max(stage_1) == 16  # kept across
    assert "KERAS_DISTRIBUTION_NUM_PROCESSES=64" in (GUIDES / "pretraining.py").read_text()


@once_per_suite
def test_evaluating_an_encoder_runs(tmp_path):
    out = run_guide("evaluating_an_encoder", tmp_path)
    assert_held_out_loss_fell(out)
    assert "synthetic scenes (300 train, 100 test, 84 px)" in out
    table = {}
    for line in re.findall(r"\n(\w+) +([\d.]+) +([\d.]+) +([\d.]+|-) +([\d.]+)(?=\n)", out):
        table[line[0]] = [None if v == "-" else float(v) for v in line[1:]]
    assert set(table) == {"count", "colours", "shapes", "left_colour", "left_shape",
                          "left_size", "pair_relation"}
    pretrained, random_init, zero_shot, chance = zip(*table.values())
    # Prompts in the detailed captions' style, which state sizes too.
    assert [t for t, row in table.items() if row[2] is not None] == [
        "left_colour", "left_shape", "left_size", "pair_relation"]
    # What the text says: colour is easy even for random features, pretraining adds to it.
    assert table["left_colour"][1] > 2 * table["left_colour"][3]
    assert table["colours"][0] > table["colours"][1] > table["colours"][3]
    assert table["left_colour"][0] > table["left_colour"][1] + 0.05
    assert 0.4 < table["pair_relation"][3] < 0.6
    rows = json.loads((tmp_path / "results.json").read_text())
    assert len(rows) == 2 * 7 + 4
    check_png(tmp_path / "probe_accuracy.png", 300)
    # Grid features beat the pooled ones on left/right.
    pooled, grid = number(r"\npair_relation +([\d.]+) +[\d.]+ +[\d.]+\n", out), \
        number(r"\npair_relation +[\d.]+ +([\d.]+) +[\d.]+\n", out)
    assert grid > pooled
    # ov2 eval on the folder: the broken file is counted, a table of three rows.
    assert "images per class: {'red': 8, 'green': 8, 'blue': 8}" in out
    assert "Skipped unreadable images: {'unreadable_image': 1}" in out
    folder = json.loads((tmp_path / "folder_results.json").read_text())
    assert [(r["task"], r["method"], r["encoder"]) for r in folder["results"]] == [
        ("class", "probe", "preset"), ("class", "probe", "random"),
        ("class", "zero-shot", "preset")]
    assert all(r["num_train"] + r["num_test"] == 24 or r["method"] == "zero-shot"
               for r in folder["results"])


@once_per_suite
def test_llava_style_model_runs(tmp_path):
    out = run_guide("llava_style_model", tmp_path)
    assert_held_out_loss_fell(out)
    assert "encoder: patch 14, width 128, 4 blocks" in out
    # Block -2's patch tokens: a 6 x 6 grid at 84 px, width 128.
    assert "layer -2 tokens: (4, 36, 128)" in out
    assert "layer -2 tokens with the class token: (4, 37, 128)" in out
    assert "layer -1 tokens == sequence_output: True" in out
    # The questions: one of each type per scene, relation for two objects only.
    types = ["count", "colour", "shape", "size", "presence", "relation"]
    per_type = {}
    for split, scenes in (("training", 100), ("test", 20)):
        found = re.search(rf"\n{split} questions: (\d+), per type (\{{.*\}})", out)
        per_type[split] = ast.literal_eval(found.group(2))
        assert list(per_type[split]) == types
        assert all(per_type[split][kind] == scenes for kind in types[:5])
        assert 0 < per_type[split]["relation"] < scenes
        assert int(found.group(1)) == sum(per_type[split].values())
    # The packed example: the loss on the answer and [eos] only.
    assert re.search(r"\ninput : \[bos\] how many shapes are there \? \w+ \[eos\] \[PAD\]", out)
    tokens, weights = re.search(r"\ntarget: (.*)\nweight: (.*)\n", out).groups()
    weighted = [t for t, w in zip(tokens.split(), weights.split()) if w == "1"]
    assert tokens.split()[:6] == "how many shapes are there ?".split()
    assert weighted in (["one", "[eos]"], ["two", "[eos]"])
    # Both encoders trained (the loss fell), examples asked, the model
    # reloaded, and the table has a row per type with both encoders and chance.
    losses = re.findall(r"\ntrained 10 steps of 8 in \d+ s; mean loss per quarter: "
                        r"([\d.]+), [\d.]+, [\d.]+, ([\d.]+)\n", out)
    assert len(losses) == 2 and all(float(last) < float(first) for first, last in losses)
    assert len(re.findall(r"\n(ok|  ) Q: .+ A: .* \(true: \w+\)", out)) == 10
    assert "reloaded: OpenVisionLLaVACausalLM, same answers: True" in out
    assert sorted(os.listdir(tmp_path / "ov2_llava")) == [
        "assets", "config.json", "image_converter.json", "metadata.json", "model.weights.h5",
        "preprocessor.json", "task.json", "tokenizer.json"]
    assert "\nquestion    asked  pretrained  random init  chance\n" in out
    rows = re.findall(r"\n(\w+) +(\d+) +(\d+)% +(\d+)% +(\d+)%(?=\n|$)", out)
    assert [row[0] for row in rows] == types
    assert [int(row[1]) for row in rows] == [per_type["test"][kind] for kind in types]
    assert all(0 <= int(value) <= 100 for row in rows for value in row[2:])
