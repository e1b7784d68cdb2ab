"""keras_ov2.evaluation and `ov2 eval`: probes, zero-shot, task sets, CLI."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

import keras_ov2
from keras_ov2 import cli
from keras_ov2.data import LABEL_CLASSES
from keras_ov2.data import SyntheticScenes
from keras_ov2.data.augment import resize
from keras_ov2.evaluation import FolderError
from keras_ov2.evaluation import class_scores
from keras_ov2.evaluation import extract_features
from keras_ov2.evaluation import fit_linear_probe
from keras_ov2.evaluation import folder_eval_set
from keras_ov2.evaluation import probe_accuracy
from keras_ov2.evaluation import probe_results
from keras_ov2.evaluation import synthetic_eval_set
from keras_ov2.evaluation import zero_shot_predict
from keras_ov2.evaluation.linear_probe import L2_GRID
from keras_ov2.evaluation.linear_probe import _objective
from keras_ov2.evaluation.linear_probe import _fit

IMAGE_SIZE = 56  # 4 x 4 patches of 14 px; room for 3 objects per scene
BATCH = 8  # one batch size for every captioner call: eager JAX compiles each shape
COLOURS = {"red": (220, 30, 30), "green": (20, 170, 50), "blue": (30, 70, 235)}


def tiny_backbone():
    return keras_ov2.OpenVision2Backbone(
        patch_size=14, hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64
    )


@pytest.fixture(scope="module")
def captioner():
    preprocessor = keras_ov2.OpenVision2CaptionerPreprocessor(
        keras_ov2.OpenVision2Tokenizer(),
        keras_ov2.OpenVision2ImageConverter(image_size=(IMAGE_SIZE, IMAGE_SIZE)),
        sequence_length=16,
    )
    return keras_ov2.OpenVision2Captioner(
        tiny_backbone(), keras_ov2.OpenVision2TextDecoder(30522, 32, 1, 2, 64),
        preprocessor=preprocessor,
    )


@pytest.fixture(scope="module")
def captioner_preset(captioner, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_captioner")
    captioner.save_to_preset(str(folder))
    return folder


def blobs(rng, num, num_classes=5, dim=16, separation=3.0):
    labels = rng.integers(0, num_classes, num)
    centres = rng.normal(size=(num_classes, dim)) * separation
    return centres[labels] + rng.normal(size=(num, dim)), labels


def test_probe_learns_what_features_carry_and_nothing_from_shuffled_labels():
    rng = np.random.default_rng(0)
    x, y = blobs(rng, 600)
    result = probe_accuracy(x[:400], y[:400], x[400:], y[400:])
    assert result["accuracy"] > 0.95
    assert 0.15 < result["chance"] < 0.3
    shuffled = probe_accuracy(x[:400], rng.permutation(y[:400]), x[400:], y[400:])
    assert abs(shuffled["accuracy"] - shuffled["chance"]) < 0.1
    # A penalty given is the one used, with no search.
    assert probe_accuracy(x[:400], y[:400], x[400:], y[400:], l2=0.5)["l2"] == 0.5
    assert result["l2"] in L2_GRID


def test_probe_is_deterministic_and_standardizes():
    rng = np.random.default_rng(1)
    x, y = blobs(rng, 200)
    x[:, 0] *= 1e4  # a feature on another scale
    first, second = fit_linear_probe(x, y), fit_linear_probe(x, y)
    np.testing.assert_array_equal(first.weights, second.weights)
    assert first.l2 == second.l2
    np.testing.assert_allclose(first.mean, x.mean(axis=0))
    assert np.mean(first.predict(x) == y) > 0.95


def test_probe_reaches_the_minimum_of_a_regularised_logistic_regression():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 8))
    targets = np.eye(3)[rng.integers(0, 3, 100)]
    w = _fit(x, targets, 1e-2, multi_label=False)
    fun = _objective(x, targets, 1e-2, multi_label=False)
    loss, grad = fun(w.ravel())
    assert np.max(np.abs(grad)) < 1e-5
    for _ in range(5):  # no nearby point is lower
        assert fun(w.ravel() + 1e-3 * rng.normal(size=w.size))[0] > loss


def test_probe_fits_on_one_blas_thread(monkeypatch):
    """Hundreds of small products per fit: waking several BLAS threads for
    each cost 20x the arithmetic (benchmarks/linear_probe.py)."""
    from threadpoolctl import threadpool_info

    from keras_ov2.evaluation import linear_probe

    seen = []

    def recording(*args):
        fun = _objective(*args)

        def fun_and_threads(flat):
            seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
            return fun(flat)
        return fun_and_threads

    monkeypatch.setattr(linear_probe, "_objective", recording)
    rng = np.random.default_rng(3)
    _fit(rng.normal(size=(50, 4)), np.eye(2)[rng.integers(0, 2, 50)], 1e-2, multi_label=False)
    assert seen and set(seen) == {1}


@pytest.mark.parametrize("l2", [1e-1, 1e-3])
def test_probe_is_scikit_learns_logistic_regression(l2):
    """The same multinomial, L2-penalised (bias free), fitted to convergence."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    x, y = blobs(rng, 300, num_classes=3)
    x = (x - x.mean(0)) / x.std(0)
    params = _fit(x, np.eye(3)[y], l2, multi_label=False)
    reference = linear_model.LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000)
    reference.fit(x, y)
    # A softmax's logits are defined up to a constant per example: compare
    # them centred over the classes.
    ours = x @ params[:-1] + params[-1]
    theirs = reference.decision_function(x)
    np.testing.assert_allclose(ours - ours.mean(1, keepdims=True),
                               theirs - theirs.mean(1, keepdims=True), atol=5e-3)
    objective = _objective(x, np.eye(3)[y], l2, multi_label=False)
    theirs_params = np.vstack([reference.coef_.T, reference.intercept_])
    assert objective(params.ravel())[0] == pytest.approx(objective(theirs_params.ravel())[0],
                                                         rel=1e-6)


def test_multi_label_probe_predicts_label_sets():
    rng = np.random.default_rng(3)
    labels = (rng.random((500, 4)) < 0.4).astype(np.int32)
    x = labels @ rng.normal(size=(4, 12)) * 2 + rng.normal(size=(500, 12))
    probe = fit_linear_probe(x[:350], labels[:350], multi_label=True)
    predicted = probe.predict(x[350:])
    assert predicted.shape == (150, 4) and set(np.unique(predicted)) <= {0, 1}
    result = probe_accuracy(x[:350], labels[:350], x[350:], labels[350:], multi_label=True)
    assert result["accuracy"] > 0.85 > 0.3 > result["chance"]


class ColourScorer:
    """Scores a text 0 when it names the image's colour, -10 otherwise."""

    def __init__(self):
        self.calls = []

    def score(self, images, texts, batch_size=32):
        self.calls.append(len(texts))
        names = list(COLOURS)
        truth = [names[int(np.argmax(image[0, 0]))] if image[0, 0, 1] < 100 else "green"
                 for image in images]
        return np.array([0.0 if name in text else -10.0 for name, text in zip(truth, texts)])


def plain_images(names, size=IMAGE_SIZE):
    return np.stack([np.full((size, size, 3), COLOURS[n], np.uint8) for n in names])


def test_zero_shot_picks_the_best_scored_class_and_sums_prompt_likelihoods():
    names = ["red", "green", "blue"] * 5 + ["red"]
    images = plain_images(names)
    prompts = [[["a red shape", "red"], ["a green shape"], ["a blue shape"]]] * len(images)
    scorer = ColourScorer()
    predicted = zero_shot_predict(scorer, images, prompts, batch_size=3)
    np.testing.assert_array_equal(predicted, [0, 1, 2] * 5 + [0])
    # 8 batches of 3 texts per call at most (6 images of 4 prompts), the last
    # call padded from 16 texts to full batches.
    assert scorer.calls == [24, 24, 18]
    scores = class_scores(ColourScorer(), images[:1], prompts[:1])
    np.testing.assert_allclose(scores[0], [np.log(2.0), -10.0, -10.0])
    with pytest.raises(ValueError, match="at least one prompt for each of 3 classes"):
        zero_shot_predict(scorer, images[:1], [[["red"], [], ["blue"]]])


def test_zero_shot_scores_are_the_captioners_own(captioner):
    images = plain_images(["red", "blue"])
    prompts = [[["red circle"], ["blue circle", "blue square"]]] * 2
    scores = class_scores(captioner, images, prompts, batch_size=BATCH)
    texts = ["red circle", "blue circle"] + ["blue square"] * (BATCH - 2)  # one full batch
    direct = captioner.score(images[[0] * BATCH], texts, batch_size=BATCH)
    np.testing.assert_allclose(scores[0], [direct[0], np.logaddexp(direct[1], direct[2])],
                               rtol=1e-5)


@pytest.mark.parametrize("caption_field", ["short_caption", "caption"])
def test_synthetic_tasks_labels_and_prompts(caption_field):
    eval_set = synthetic_eval_set(30, 20, IMAGE_SIZE, seed=4, caption_field=caption_field)
    assert eval_set.train_images.shape == (30, IMAGE_SIZE, IMAGE_SIZE, 3)
    tasks = {task.name: task for task in eval_set.tasks}
    assert list(tasks) == list(LABEL_CLASSES)
    assert tasks["colours"].multi_label and tasks["colours"].test_labels.shape == (20, 6)
    held_out = SyntheticScenes(30, IMAGE_SIZE, seed=4).held_out(20)
    relation = tasks["pair_relation"]
    assert set(relation.test_labels) == {-1, 0, 1}
    assert list(relation.rows(relation.test_labels)) == list(np.flatnonzero(
        relation.test_labels >= 0))
    expected = {"short_caption": {"left_colour", "left_shape", "pair_relation"},
                "caption": {"left_colour", "left_shape", "left_size", "pair_relation"}}
    assert {n for n, t in tasks.items() if t.test_prompts} == expected[caption_field]
    for name in expected[caption_field]:
        task = tasks[name]
        for i in task.rows(task.test_labels):
            prompts = [p[0] for p in task.test_prompts[i]]
            # The true caption is the labelled class's prompt, and only that one.
            assert prompts[task.test_labels[i]] == held_out[int(i)][caption_field]
            assert len(set(prompts)) == len(prompts)


def test_synthetic_tasks_on_given_scenes():
    """The probe set of a run: its own scenes (size, objects), the first ones
    to fit on, its held-out stream to test on."""
    scenes = SyntheticScenes(100, image_size=IMAGE_SIZE + 14, seed=2, max_objects=2)
    eval_set = synthetic_eval_set(10, 6, scenes=scenes)
    assert eval_set.train_images.shape == (10, IMAGE_SIZE + 14, IMAGE_SIZE + 14, 3)
    np.testing.assert_array_equal(eval_set.train_images[3], scenes[3]["image"])
    np.testing.assert_array_equal(eval_set.test_images[5], scenes.held_out(6)[5]["image"])
    count = {task.name: task for task in eval_set.tasks}["count"]
    assert set(count.train_labels) <= {0, 1}  # one or two objects


def test_probes_leave_out_tasks_the_scenes_cannot_pose(captioner):
    """Scenes of one object have no left/right pair: no row, not an error."""
    single = SyntheticScenes(40, image_size=IMAGE_SIZE, seed=1, max_objects=1)
    rows = probe_results(synthetic_eval_set(20, 10, scenes=single), captioner, l2=1e-2)
    assert [row["task"] for row in rows] == [t for t in LABEL_CLASSES if t != "pair_relation"]


def test_extract_features_pooled_and_grid(captioner):
    backbone = captioner.backbone
    images = [SyntheticScenes(5, 70, seed=1)[i]["image"] for i in range(5)]
    features = extract_features(captioner, images, image_size=IMAGE_SIZE, batch_size=2)
    assert features["pooled"].shape == (5, 32) and features["grid"].shape == (5, 4 * 32)
    # The images are resized as the data pipeline does (PIL), then normalised.
    x = keras_ov2.OpenVision2ImageConverter()(np.stack([resize(i, IMAGE_SIZE) for i in images]))
    out = backbone.predict(x, verbose=0)
    np.testing.assert_allclose(features["pooled"], out["pooled_output"], atol=1e-4)
    tokens = out["sequence_output"].reshape(5, 4, 4, 32)
    top_right = tokens[:, :2, 2:].mean(axis=(1, 2))
    np.testing.assert_allclose(features["grid"][:, 32:64], top_right, atol=1e-4)
    with pytest.raises(TypeError, match="Expected an OpenVision2Backbone"):
        extract_features(object(), images)


def write_folder(root, counts, corrupt=0):
    """Class folders of plain-colour PNGs of varied sizes, plus `corrupt` bad files."""
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            size = 40 + 7 * i
            Image.new("RGB", (size, size + 3), COLOURS[name]).save(root / name / f"{i}.png")
    for i in range(corrupt):
        (root / "red" / f"broken_{i}.png").write_text("not an image")
    return root


def test_folder_eval_set_splits_by_class_and_counts_bad_images(tmp_path):
    root = write_folder(tmp_path / "data", {"red": 8, "blue": 8}, corrupt=1)
    (root / "blue" / ".hidden").write_text("ignored")
    eval_set = folder_eval_set(root, IMAGE_SIZE, seed=0)
    (task,) = eval_set.tasks
    assert task.classes == ("blue", "red")
    assert eval_set.skipped == {"unreadable_image": 1}
    assert len(task.test_labels) + len(task.train_labels) == 16
    assert sorted(set(task.test_labels)) == [0, 1]  # stratified: both classes tested
    assert eval_set.test_images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert task.test_prompts[0] == [["blue"], ["red"]]
    small = folder_eval_set(root, IMAGE_SIZE, num_train=3, num_test=2, template="a {} photo")
    assert len(small.train_images) <= 3 and len(small.test_images) == 2
    assert small.tasks[0].test_prompts[0] == [["a blue photo"], ["a red photo"]]


def test_folder_errors(tmp_path):
    with pytest.raises(FolderError, match="is not a folder"):
        folder_eval_set(tmp_path / "missing", IMAGE_SIZE)
    one = write_folder(tmp_path / "one", {"red": 3})
    with pytest.raises(FolderError, match="at least 2 classes; found only 'red'"):
        folder_eval_set(one, IMAGE_SIZE)
    empty = write_folder(tmp_path / "empty", {"red": 3})
    (empty / "blue").mkdir()
    with pytest.raises(FolderError, match="blue hold no files"):
        folder_eval_set(empty, IMAGE_SIZE)
    with pytest.raises(FolderError, match="cannot take 10 training and 2 test images"):
        folder_eval_set(write_folder(tmp_path / "two", {"red": 2, "blue": 2}), IMAGE_SIZE,
                        num_train=10, num_test=2)


def run_cli(argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    return printed.getvalue()


def table_rows(printed):
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("task "))
    return [line.split() for line in lines[start + 1:] if not line.startswith("Wrote")]


def test_eval_cli_on_synthetic_scenes(captioner_preset, tmp_path):
    out = tmp_path / "results.json"
    printed = run_cli(["eval", str(captioner_preset), "--train", "40", "--test", "10",
                       "--random-baseline", "--out", str(out), "--batch-size", str(BATCH)])
    results = json.loads(out.read_text())
    assert results["image_size"] == IMAGE_SIZE and results["features"] == "both"
    methods = {(r["task"], r["method"], r["encoder"]) for r in results["results"]}
    for task in LABEL_CLASSES:
        assert (task, "probe", "preset") in methods and (task, "probe", "random") in methods
    zero_shot = {task for task, method, _ in methods if method == "zero-shot"}
    # The detailed captions' prompts by default (ov2 pretrain's captions): sizes too.
    assert zero_shot == {"left_colour", "left_shape", "left_size", "pair_relation"}
    rows = table_rows(printed)
    assert len(rows) == len(results["results"]) == 2 * 7 + 4
    for row, result in zip(rows, results["results"]):
        assert row[:3] == [result["task"], result["method"], result["encoder"]]
        assert row[3] == f"{result['accuracy']:.3f}" and row[4] == f"{result['chance']:.3f}"
        assert 0 <= result["accuracy"] <= 1 and 0 < result["chance"] <= 1
    assert next(r for r in results["results"] if r["task"] == "count")["num_train"] == 40


def test_eval_cli_on_a_folder_probes_colour_perfectly(captioner_preset, tmp_path):
    root = write_folder(tmp_path / "data", {"red": 6, "blue": 6, "green": 6}, corrupt=2)
    printed = run_cli(["eval", str(captioner_preset), "--data", str(root), "--probe",
                       "--features", "pooled"])
    assert "Skipped unreadable images: {'unreadable_image': 2}" in printed
    ((task, method, encoder, accuracy, chance, train, test),) = table_rows(printed)
    assert (task, method, encoder, accuracy) == ("class", "probe", "preset", "1.000")
    assert int(train) + int(test) == 18 and float(chance) < 0.5


def test_eval_cli_errors(captioner_preset, tmp_path, capsys):
    def fails(argv):
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 1
        return capsys.readouterr().err

    backbone = tiny_backbone()
    encoder_preset = tmp_path / "encoder"
    backbone.save_to_preset(str(encoder_preset))
    err = fails(["eval", str(encoder_preset), "--zero-shot", "--image-size", "56"])
    assert "holds an encoder only" in err
    assert "does not say its image size" in fails(["eval", str(encoder_preset)])
    err = fails(["eval", str(captioner_preset), "--data", str(tmp_path / "nowhere")])
    assert "is not a folder" in err
    assert "Unknown preset" in fails(["eval", "openvision2_nope"])
