"""A labelled image folder (one subfolder per class, ImageFolder-style) as an `EvalSet`."""

import collections
from pathlib import Path

import numpy as np

from keras_ov2.data.augment import resize
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import decode_image
from keras_ov2.evaluation.tasks import EvalSet
from keras_ov2.evaluation.tasks import Task

TEST_FRACTION = 0.25


class FolderError(ValueError):
    """The folder cannot be a labelled image set; the message says why."""


def class_files(root):
    """{class name: sorted image paths} of `root`'s subfolders (searched
    recursively, hidden files left out), or FolderError."""
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"{root} is not a folder.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        folder.name: sorted(
            p for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for folder in folders
    }
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise FolderError(f"{root}: class folder(s) {', '.join(empty)} hold no files.")
    if len(files) < 2:
        found = f"only {next(iter(files))!r}" if files else "none"
        raise FolderError(
            f"{root}: expected one subfolder of images per class, at least 2 classes; "
            f"found {found}."
        )
    return files


def stratified_order(files, seed):
    """(path, class index) pairs, each class shuffled and the classes
    interleaved in proportion, so that any prefix is a stratified sample."""
    rng = np.random.default_rng(seed)
    ranked = []
    for label, paths in enumerate(files.values()):
        for rank, index in enumerate(rng.permutation(len(paths))):
            ranked.append(((rank + 0.5) / len(paths), label, paths[index]))
    return [(path, label) for _, label, path in sorted(ranked)]


def _load(pairs, image_size, skipped):
    images, labels = [], []
    for path, label in pairs:
        try:
            image = decode_image(Path(path).read_bytes(), key=str(path))
        except BadRecord as error:
            skipped[error.reason] += 1
            continue
        images.append(resize(image, image_size))
        labels.append(label)
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    return (np.stack(images) if images else empty), np.asarray(labels, np.int32)


def folder_eval_set(root, image_size, num_train=None, num_test=None, seed=0, template="{}"):
    """The classes of `root` as one task "class": a stratified split of
    `num_test` images (default a quarter) and `num_train` others (default
    the rest), decoded with the library's decoder and resized to
    `image_size`. Unreadable images are skipped and counted by reason in
    `skipped` (the splits can come out that much smaller). Zero-shot prompts
    are `template.format(class name)`, underscores read as spaces."""
    files = class_files(root)
    pairs = stratified_order(files, seed)
    if num_test is None:
        num_test = max(1, round(TEST_FRACTION * len(pairs)))
    if num_train is None:
        num_train = len(pairs) - num_test
    if num_test < 1 or num_train < 1 or num_train + num_test > len(pairs):
        raise FolderError(
            f"{root}: cannot take {num_train} training and {num_test} test images "
            f"from {len(pairs)} files; both need at least 1."
        )
    skipped = collections.Counter()
    test_images, test_labels = _load(pairs[:num_test], image_size, skipped)
    train_images, train_labels = _load(pairs[num_test : num_test + num_train], image_size,
                                       skipped)
    if not len(test_images) or not len(train_images):
        raise FolderError(f"{root}: no readable image left in a split (skipped {dict(skipped)}).")
    classes = tuple(files)
    prompts = [[template.format(name.replace("_", " "))] for name in classes]
    task = Task("class", classes, train_labels, test_labels,
                test_prompts=[prompts] * len(test_labels))
    return EvalSet(f"{Path(root).name} ({len(classes)} classes)", train_images, test_images,
                   [task], dict(skipped))
