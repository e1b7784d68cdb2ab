"""One warmup rule, the data's own training defaults, held-out records that
training never reads, the report on them, and the backend `ov2` runs on."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_ov2
from keras_ov2 import cli
from keras_ov2.cli.pretrain import parse_stages
from keras_ov2.data import RecordRange
from keras_ov2.data import SourceError
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import TrainingDefaults
from keras_ov2.data import build_array_record
from keras_ov2.data import open_source
from keras_ov2.data import split_held_out
from keras_ov2.data.synthetic_scenes import TRAINING_DEFAULTS
from keras_ov2.models.common.recipe_optimizer import default_warmup_steps
from keras_ov2.training import Stage
from keras_ov2.training import pretrain
from keras_ov2.training.pretrain import RunOptions
from keras_ov2.training.pretrain import HELD_OUT_SIZE
from keras_ov2.training.report import HeldOut
from keras_ov2.training.report import caption_report
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


# -- the data's training defaults ----------------------------------------------------


class Declaring:
    """A source of nothing that recommends a keep ratio."""

    training_defaults = TrainingDefaults("my data's default", keep_ratio=0.5)


def test_a_source_s_defaults_apply_where_no_option_is_given():
    options = RunOptions.resolve(Declaring())
    assert (options.keep_ratio, options.augment, options.caption_field) == (0.5, True, "caption")
    assert options.describe() == (
        "Captioner: openvision2_captioner_tiny_patch14_84 (keras_ov2's demo size).\n"
        "Data: keep ratio 0.5 (my data's default), augmentation on (the authors' default), "
        "captions 'caption' (the authors' default).")
    # The built-in scenes mask as the authors do and recommend their detailed
    # captions, without augmentation (it would falsify colours and positions),
    # and the demo captioner with their words for a vocabulary.
    scenes = RunOptions.resolve(SyntheticScenes(4, image_size=56))
    assert (scenes.keep_ratio, scenes.augment, scenes.caption_field) == (0.35, False, "caption")
    assert scenes.describe() == (
        "Captioner: openvision2_captioner_scenes_patch14_84 (the built-in scenes' default).\n"
        "Data: keep ratio 0.35 (the authors' default), augmentation off (the built-in "
        "scenes' default), captions 'caption' (the built-in scenes' default).")
    assert RunOptions.resolve(SyntheticScenes) == scenes  # what the CLI resolves before reading
    # A source that declares nothing gets the authors' recipe.
    assert RunOptions.resolve([]).origins == {
        **dict.fromkeys(("keep_ratio", "augment", "caption_field"), "the authors' default"),
        "preset": "keras_ov2's demo size"}


def test_an_option_given_wins_over_the_source_s_default():
    options = RunOptions.resolve(SyntheticScenes(4, image_size=56), "my_preset", keep_ratio=1.0,
                                 augment=True, caption_field="short_caption")
    assert (options.preset, options.keep_ratio, options.augment, options.caption_field) == (
        "my_preset", 1.0, True, "short_caption")
    assert set(options.origins.values()) == {"given"}
    # False and 0-like values are given too, not "no opinion".
    assert RunOptions.resolve(Declaring(), augment=False).augment is False


def test_a_closed_vocabulary_refuses_captions_it_cannot_spell():
    from keras_ov2 import OpenVision2Tokenizer
    from keras_ov2.data.synthetic_scenes import CAPTION_WORDS
    from keras_ov2.training.pretrain import check_vocabulary

    scene_words = OpenVision2Tokenizer.for_texts(CAPTION_WORDS)
    scenes = SyntheticScenes(20, image_size=56)
    check_vocabulary(scene_words, [scenes[i]["caption"] for i in range(20)], "scenes")
    photos = ["a dog asleep on a red sofa", "two cyclists on a mountain road"]
    check_vocabulary(OpenVision2Tokenizer(), photos, "bert")
    with pytest.raises(ValueError, match=r"\d+% of the captions' word-pieces are unknown .*"
                       r"'scenes' \(37 tokens\).*--preset openvision2_captioner_tiny"):
        check_vocabulary(scene_words, photos, "scenes")


def test_scenes_stored_as_shards_keep_their_defaults(tmp_path):
    """The chosen behaviour: the defaults belong to the records, not to the
    Python type that serves them. `build_array_record` records them in
    summary.json and the shards' reader declares them again, so the scenes
    train the same whether read directly or from shards."""
    scenes = SyntheticScenes(4, image_size=56)
    build_array_record(scenes, tmp_path / "scenes", verbose=0)
    shards = open_source(tmp_path / "scenes")
    assert type(shards).__name__ == "ArrayRecordSource"
    assert shards.training_defaults == TRAINING_DEFAULTS
    assert RunOptions.resolve(shards) == RunOptions.resolve(scenes)
    # A user's records recommend nothing, and neither do shards that summary
    # does not describe (here: a second build into the same folder).
    user = [{"image": scenes[i]["image"], "caption": "a scene"} for i in range(2)]
    build_array_record(user, tmp_path / "user", verbose=0)
    assert open_source(tmp_path / "user").training_defaults is None
    build_array_record(user, tmp_path / "scenes", name="more", verbose=0)
    assert open_source(tmp_path / "scenes").training_defaults is None


def test_a_bad_recorded_default_names_the_file_and_field(tmp_path):
    build_array_record(SyntheticScenes(2, image_size=56), tmp_path / "scenes", verbose=0)
    summary_path = tmp_path / "scenes" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["training_defaults"]["keep"] = 0.5
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(SourceError, match=r"summary\.json: training_defaults .*'keep'"):
        open_source(tmp_path / "scenes")


# -- held out ---------------------------------------------------------------------


class CountingSource:
    """Records of scenes, counting how often each index is read; it
    recommends a keep ratio and the short captions."""

    training_defaults = TrainingDefaults("this source's default", keep_ratio=0.5,
                                         caption_field="short_caption")

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
    scenes = SyntheticScenes(10, image_size=56)  # makes held-out scenes of its own
    train, held = split_held_out(scenes, 3)
    assert train is scenes and repr(held) == repr(scenes.held_out(3))


def test_held_out_records_are_never_trained_on(tmp_path):
    """The last HELD_OUT_SIZE records are read once (to measure the run),
    the others by training, several times over. The source's defaults apply
    where no option is given, and the header says where each came from."""
    source = CountingSource(2 * HELD_OUT_SIZE + 8)
    printed = []
    result = pretrain(tiny_preset(tmp_path / "tiny"), dataset=source,
                      stages=[Stage(56, 12, 8)], output_dir=tmp_path / "out",
                      print_fn=printed.append, sequence_length=16, augment=False)
    cut = len(source) - HELD_OUT_SIZE
    assert all(source.reads[i] == 1 for i in range(cut, len(source)))
    assert sum(source.reads[i] for i in range(cut)) >= 12 * 8
    assert f"Held out: the last {HELD_OUT_SIZE} of {len(source)} records, never trained on." \
        in printed
    assert "Data: keep ratio 0.5 (this source's default), augmentation off (given), captions " \
        "'short_caption' (this source's default)." in printed
    assert keras_ov2.OpenVision2Captioner.from_preset(str(tmp_path / "out")).keep_ratio == 0.5
    # The records carry the scenes' ground truth: measured per attribute, from
    # the training-time view (8 of 16 tokens) and from every token.
    assert result["view"] == "the training-time view (8 of 16 tokens, likeliest of 8 draws)"
    for key in ("attribute_accuracy", "attribute_accuracy_all_tokens"):
        assert set(result[key]) == {"count", "colour", "shape", "size"}
    assert (result["keep_ratio"], result["caption_field"]) == (0.5, "short_caption")
    assert set(result) == {"losses", "keep_ratio", "caption_field", "loss_before",
                           "loss_after", "output_dir", "samples",
                           "exact_match", "words_in_place", "attribute_accuracy", "view",
                           "attribute_accuracy_all_tokens", "seconds"}


def test_training_on_from_a_saved_preset_masks_as_the_run_says(tmp_path):
    """A preset records the keep ratio it trained with; training on from it
    takes the ratio of the new run (given, the source's, else the authors'),
    never silently the saved one."""
    scenes = SyntheticScenes(40, image_size=56)
    records = [scenes[i] for i in range(len(scenes))]  # a source that recommends nothing
    first, printed = tmp_path / "first", []
    result = pretrain(tiny_preset(tmp_path / "tiny"), dataset=records, stages=[Stage(56, 2, 4)],
                      keep_ratio=1.0, output_dir=first, print_fn=printed.append,
                      sequence_length=16, report=False)
    assert keras_ov2.OpenVision2Captioner.from_preset(str(first)).keep_ratio == 1.0
    # Without the report: trained and saved, nothing measured.
    assert set(result) == {"losses", "keep_ratio", "caption_field", "output_dir", "seconds"}
    assert not [line for line in printed if "Held-out" in line]
    printed = []
    pretrain(str(first), dataset=records, stages=[Stage(56, 2, 4)],
             output_dir=tmp_path / "second", print_fn=printed.append, sequence_length=16)
    assert printed[0] == f"Captioner: {first} (given)."
    assert printed[1].startswith("Data: keep ratio 0.35 (the authors' default)")
    assert keras_ov2.OpenVision2Captioner.from_preset(str(tmp_path / "second")).keep_ratio == 0.35


# -- the report -------------------------------------------------------------------


def objects(colours, shapes, sizes):
    return {"colour": np.array(colours), "shape": np.array(shapes), "size": np.array(sizes)}


def test_caption_report_scores_and_says_the_held_out_captions():
    truths = ["red circle", "blue square and green cross"]
    records = [{"objects": objects([0, -1], [0, -1], [1, -1])},
               {"objects": objects([2, 1], [1, 3], [0, 0])}]
    held_out = HeldOut(np.zeros((2, 4, 4, 3), np.uint8), truths, records)
    generated = ["red circle", "blue square and red cross"]
    scores, lines = caption_report(generated, held_out, "short_caption", num_samples=2)
    assert scores["samples"] == list(zip(generated, truths))
    assert scores["exact_match"] == 0.5
    assert scores["words_in_place"] == pytest.approx((1 + 4 / 5) / 2)
    assert scores["attribute_accuracy"] == pytest.approx(
        {"count": 1.0, "colour": 2 / 3, "shape": 1.0, "size": None})
    assert scores["view"] == "every token"
    assert lines == [
        "Held-out captions from every token (generated | true):",
        "  ok  red circle | red circle",
        "      blue square and red cross | blue square and green cross",
        "Exactly right: 50% of 2 held-out images; words in place: 90%.",
        "Right per object, left to right: count 100%, colour 67%, shape 100%.",
    ]
    # Records without the scenes' ground truth: no per-attribute accuracy.
    plain = HeldOut(held_out.images, truths, [{"key": "a"}, {"objects": ["a cat"]}])
    scores, lines = caption_report(generated, plain, "caption", num_samples=1)
    assert scores["attribute_accuracy"] is None and len(scores["samples"]) == 1
    assert not any(line.startswith("Right per object") for line in lines)


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
