"""Runs the methods over an `EvalSet`'s tasks: one result row per task and method."""

from keras_ov2.evaluation.features import extract_features
from keras_ov2.evaluation.features import select_features
from keras_ov2.evaluation.linear_probe import accuracy
from keras_ov2.evaluation.linear_probe import chance_accuracy
from keras_ov2.evaluation.linear_probe import probe_accuracy
from keras_ov2.evaluation.zero_shot import zero_shot_predict


def _row(task, method, encoder, accuracy, chance, num_train, num_test):
    return {"task": task.name, "method": method, "encoder": encoder,
            "accuracy": accuracy, "chance": chance,
            "num_train": int(num_train), "num_test": int(num_test)}


def probe_results(eval_set, model, encoder="preset", features="both", grid=2, batch_size=32,
                  seed=0, l2=None):
    """A linear probe per task on the frozen features of `model` (an
    `OpenVision2Backbone` or a captioner); `encoder` names it in the rows.
    The images are used at their size in `eval_set`. `l2`: the probes'
    penalty, None to choose it per task (see `fit_linear_probe`). A task
    with no example in a split (left/right on scenes of one object) has no
    row."""
    def encode(images):
        return select_features(extract_features(model, images, None, batch_size, grid), features)

    train, test = encode(eval_set.train_images), encode(eval_set.test_images)
    rows = []
    for task in eval_set.tasks:
        fit, held = task.rows(task.train_labels), task.rows(task.test_labels)
        if not len(fit) or not len(held):  # e.g. left/right on scenes of one object
            continue
        result = probe_accuracy(train[fit], task.train_labels[fit], test[held],
                                task.test_labels[held], len(task.classes), task.multi_label,
                                seed, l2)
        rows.append(_row(task, "probe", encoder, result["accuracy"], result["chance"],
                         len(fit), len(held)))
    return rows


def zero_shot_results(eval_set, scorer, encoder="preset", batch_size=32):
    """Zero-shot accuracy of `scorer` (a captioner) on every task with prompts;
    no training, the training labels only give the chance level."""
    rows = []
    for task in eval_set.tasks:
        if task.test_prompts is None:
            continue
        held = task.rows(task.test_labels)
        prompts = [task.test_prompts[i] for i in held]
        predicted = zero_shot_predict(scorer, eval_set.test_images[held], prompts, batch_size)
        labels = task.test_labels[held]
        fit = task.rows(task.train_labels)
        chance = chance_accuracy(task.train_labels[fit], labels)
        rows.append(_row(task, "zero-shot", encoder, accuracy(predicted, labels), chance, 0,
                         len(held)))
    return rows
