"""Per-attribute accuracy of captions of the built-in scenes (pure Python)."""

import pytest

from keras_ov2.data import COLOURS
from keras_ov2.data import SHAPES
from keras_ov2.data import SyntheticScenes
from keras_ov2.data.synthetic_scenes import object_count
from keras_ov2.evaluation import named_objects
from keras_ov2.evaluation import scene_caption_accuracy


@pytest.fixture(scope="module")
def records():
    return [SyntheticScenes(40, image_size=84, seed=1, min_objects=2)[i] for i in range(40)]


def test_true_captions_are_all_right(records):
    short = scene_caption_accuracy([r["short_caption"] for r in records], records)
    assert short == {"count": 1.0, "colour": 1.0, "shape": 1.0, "size": None}
    detailed = scene_caption_accuracy([r["caption"] for r in records], records, sizes=True)
    assert detailed == {"count": 1.0, "colour": 1.0, "shape": 1.0, "size": 1.0}


def test_reads_the_listing_not_the_relation_sentences():
    caption = ("two shapes: a small red circle and a large blue cross from left to right. "
               "the red circle is left of the blue cross.")
    red, blue = COLOURS.index("red"), COLOURS.index("blue")
    assert named_objects(caption) == [(red, SHAPES.index("circle"), 0),
                                      (blue, SHAPES.index("cross"), 1)]
    assert named_objects("green square and red circle") == [
        (COLOURS.index("green"), SHAPES.index("square"), None),
        (red, SHAPES.index("circle"), None)]
    assert named_objects("a photo of nothing") == []


def test_one_wrong_shape_costs_only_the_shape(records):
    record = records[0]
    first = record["short_caption"].split(" and ")[0].split(", ")[0]
    colour, shape = first.split()
    wrong = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
    caption = record["short_caption"].replace(first, f"{colour} {wrong}", 1)
    accuracy = scene_caption_accuracy([caption], [record])
    objects = object_count(record["objects"])
    assert accuracy["count"] == 1.0 and accuracy["colour"] == 1.0
    assert accuracy["shape"] == pytest.approx((objects - 1) / objects)


def test_missing_objects_count_as_wrong(records):
    record = records[0]
    objects = object_count(record["objects"])
    first = record["short_caption"].split(" and ")[0].split(", ")[0]
    accuracy = scene_caption_accuracy([first], [record])
    assert accuracy["count"] == 0.0
    assert accuracy["colour"] == pytest.approx(1 / objects)
    assert scene_caption_accuracy(["nothing here"], [record])["colour"] == 0.0
    with pytest.raises(ValueError, match="2 captions for 1 records"):
        scene_caption_accuracy(["a", "b"], [record])
