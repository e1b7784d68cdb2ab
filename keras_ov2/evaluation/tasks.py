"""Labelled image sets to evaluate encoders on, and the built-in one.

An `EvalSet` is a training and a test split of uint8 images with any number
of `Task`s (labels over those same images), so that features are extracted
once for all tasks. The built-in set comes from `SyntheticScenes`: its
attribute and relation labels (colour, shape, size, count, left/right of)
are exact, so any accuracy gap is the encoder's.
"""

import dataclasses

import numpy as np

from keras_ov2.data.synthetic_scenes import LABEL_CLASSES
from keras_ov2.data.synthetic_scenes import SyntheticScenes
from keras_ov2.data.synthetic_scenes import _canonical_order
from keras_ov2.data.synthetic_scenes import _caption
from keras_ov2.data.synthetic_scenes import _short_caption
from keras_ov2.data.synthetic_scenes import object_count

CAPTION_FIELDS = ("short_caption", "caption")
# Tasks whose classes differ in the captions of a caption field: zero-shot
# can only tell classes apart through the words the captioner was trained on.
ZERO_SHOT_TASKS = {
    "short_caption": ("left_colour", "left_shape", "pair_relation"),
    "caption": ("left_colour", "left_shape", "left_size", "pair_relation"),
}


@dataclasses.dataclass
class Task:
    """Labels over an `EvalSet`'s images. Single-label tasks hold class
    indices, -1 where the task does not apply (the row is left out);
    multi-label ones hold multi-hot rows. `test_prompts[i][k]`: the prompts
    of class k for test image i, for zero-shot (None: probe only)."""

    name: str
    classes: tuple
    train_labels: np.ndarray
    test_labels: np.ndarray
    multi_label: bool = False
    test_prompts: list | None = None

    def rows(self, labels):
        """Indices of the rows the task applies to."""
        if self.multi_label:
            return np.arange(len(labels))
        return np.flatnonzero(np.asarray(labels) >= 0)


@dataclasses.dataclass
class EvalSet:
    """uint8 (N, H, W, 3) image splits, their tasks, and the images skipped
    as unreadable ({reason: count})."""

    name: str
    train_images: np.ndarray
    test_images: np.ndarray
    tasks: list
    skipped: dict = dataclasses.field(default_factory=dict)


def _scene_caption(caption_field, colours, shapes, sizes, boxes):
    if caption_field == "short_caption":
        return _short_caption(colours, shapes)
    return _caption(colours, shapes, sizes, boxes)


def _swapped(objects, i, j):
    """The scene with objects i and j trading horizontal places: (colours,
    shapes, sizes, boxes) left to right, each object keeping its own height."""
    count = object_count(objects)
    order = list(range(count))
    order[i], order[j] = j, i
    boxes = objects["box"][:count]
    moved = boxes[order].copy()  # slot p holds object order[p], with its own box...
    width = moved[:, 2] - moved[:, 0]
    moved[:, 0] = boxes[:, 0]  # ...moved to the left edge of slot p
    moved[:, 2] = boxes[:, 0] + width
    return tuple(objects[k][:count][order] for k in ("colour", "shape", "size")) + (moved,)


def scene_prompts(objects, caption_field):
    """Zero-shot prompts of one scene: {task: [class][prompt]}, each class
    one caption of this very scene (in the style of `caption_field`) with
    only the task's attribute changed: the captioner has to prefer the true
    caption over its near copies."""
    count = object_count(objects)
    parts = [objects[k][:count] for k in ("colour", "shape", "size", "box")]
    prompts = {}
    for task, index in (("left_colour", 0), ("left_shape", 1), ("left_size", 2)):
        captions = []
        for value in range(len(LABEL_CLASSES[task])):
            changed = [p.copy() for p in parts]
            changed[index][0] = value
            captions.append([_scene_caption(caption_field, *changed)])
        prompts[task] = captions
    if count > 1:
        i, j = _canonical_order(parts[0], parts[1])[:2]
        actual = [_scene_caption(caption_field, *parts)]
        swapped = [_scene_caption(caption_field, *_swapped(objects, i, j))]
        left = objects["box"][i][0] < objects["box"][j][0]
        prompts["pair_relation"] = [actual, swapped] if left else [swapped, actual]
    return prompts


def _stack(records, field):
    return np.stack([record["labels"][field] for record in records])


def synthetic_eval_set(num_train=1000, num_test=500, image_size=84, seed=0,
                       caption_field="short_caption", max_objects=3, scenes=None):
    """The built-in tasks on `SyntheticScenes` (1 to `max_objects` objects):
    training scenes of `seed`, test scenes from its held-out stream. Or,
    given `scenes` (a `SyntheticScenes`), the first `num_train` of them and
    `num_test` of their held-out stream, at their size.

    Tasks (see `LABEL_CLASSES`): count; colours and shapes present
    (multi-label); colour, shape and size of the leftmost object; and
    pair_relation (is the first object of the canonical pair left or right
    of the second; scenes of two objects or more). `caption_field` is what
    the captioner to zero-shot was trained on: it sets the prompt style and
    which tasks get prompts (`ZERO_SHOT_TASKS`).
    """
    if caption_field not in CAPTION_FIELDS:
        raise ValueError(f"caption_field must be one of {CAPTION_FIELDS}; got {caption_field!r}.")
    if scenes is None:
        scenes = SyntheticScenes(num_train, image_size=image_size, seed=seed,
                                 max_objects=max_objects)
    image_size = scenes.image_size
    train = [scenes[i] for i in range(num_train)]
    held_out = scenes.held_out(num_test)
    test = [held_out[i] for i in range(num_test)]
    prompts = [scene_prompts(record["objects"], caption_field) for record in test]
    tasks = []
    for name, classes in LABEL_CLASSES.items():
        multi_label = name in ("colours", "shapes")
        test_prompts = None
        if name in ZERO_SHOT_TASKS[caption_field]:
            test_prompts = [p.get(name) for p in prompts]  # None where the label is -1
        tasks.append(Task(name, tuple(classes), _stack(train, name), _stack(test, name),
                          multi_label, test_prompts))
    return EvalSet(
        name=f"synthetic scenes ({num_train} train, {num_test} test, {image_size} px)",
        train_images=np.stack([record["image"] for record in train]),
        test_images=np.stack([record["image"] for record in test]),
        tasks=tasks,
    )
