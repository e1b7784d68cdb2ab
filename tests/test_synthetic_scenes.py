import pathlib
import pickle
import re

import grain
import numpy as np
import pytest

import keras_ov2
from keras_ov2.data import COLOURS
from keras_ov2.data import COUNTS
from keras_ov2.data import LABEL_CLASSES
from keras_ov2.data import RELATIONS
from keras_ov2.data import SHAPES
from keras_ov2.data import SIZES
from keras_ov2.data import SyntheticScenes
from keras_ov2.data.synthetic_scenes import _RGB
from keras_ov2.data.synthetic_scenes import CAPTION_WORDS
from keras_ov2.data.synthetic_scenes import object_count

RELATION_SENTENCE = re.compile(
    r"the (\w+) (\w+) is (left of|right of)(?: and (above|below))? the (\w+) (\w+)"
)


def objects(record):
    """The ground-truth objects of a record, left to right, padding dropped."""
    gt = record["objects"]
    return [
        (int(gt["colour"][i]), int(gt["shape"][i]), int(gt["size"][i]), gt["box"][i].tolist())
        for i in range(object_count(gt))
    ]


def name(colour, shape):
    return f"{COLOURS[colour]} {SHAPES[shape]}"


@pytest.fixture(scope="module")
def records():
    return [SyntheticScenes(60, image_size=84, seed=3)[i] for i in range(60)]


def test_same_seed_and_index_give_the_same_record_in_any_order():
    forward = SyntheticScenes(8, image_size=84, seed=5)
    backward = SyntheticScenes(8, image_size=84, seed=5)
    firsts = [forward[i] for i in range(8)]
    seconds = [backward[i] for i in reversed(range(8))][::-1]
    for a, b in zip(firsts, seconds):
        assert a["image"].tobytes() == b["image"].tobytes()
        assert a["caption"] == b["caption"]
        assert a["short_caption"] == b["short_caption"]
        np.testing.assert_array_equal(a["objects"]["box"], b["objects"]["box"])
    assert len({r["caption"] for r in firsts}) > 1
    assert firsts[0]["image"].tobytes() != firsts[1]["image"].tobytes()


def test_seed_and_split_change_the_scenes():
    source = SyntheticScenes(4, image_size=84, seed=0)
    other_seed = SyntheticScenes(4, image_size=84, seed=1)
    held_out = source.held_out(2)
    assert len(held_out) == 2 and held_out.split == "held_out"
    assert held_out.image_size == 84 and held_out.seed == 0
    for i in range(2):
        assert source[i]["image"].tobytes() != other_seed[i]["image"].tobytes()
        assert source[i]["image"].tobytes() != held_out[i]["image"].tobytes()
    assert held_out[1]["caption"] == source.held_out()[1]["caption"]


def test_length_and_indexing():
    source = SyntheticScenes(5, image_size=84)
    assert len(source) == 5
    assert source[-1]["caption"] == source[4]["caption"]
    assert source[np.int64(2)]["caption"] == source[2]["caption"]
    with pytest.raises(IndexError, match="Index 5 .* length 5"):
        source[5]
    with pytest.raises(IndexError, match="length 5"):
        source[-6]


def test_record_types_and_shapes(records):
    for record in records:
        assert record["image"].shape == (84, 84, 3)
        assert record["image"].dtype == np.uint8
        assert isinstance(record["caption"], str) and isinstance(record["short_caption"], str)
        assert record["caption"] == record["caption"].lower()
        assert record["objects"]["box"].shape == (3, 4)
        assert record["objects"]["colour"].shape == (3,)
    counts = {len(objects(r)) for r in records}
    assert counts == {1, 2, 3}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 84},
        {"image_size": 84, "position_grid": 84},
        {"image_size": 224, "min_objects": 3, "max_objects": 4},
        {"image_size": 100, "min_objects": 3, "max_objects": 3, "position_grid": 7},
    ],
)
def test_objects_are_drawn_where_the_ground_truth_says(kwargs):
    size = kwargs["image_size"]
    for record in (SyntheticScenes(40, seed=3, **kwargs)[i] for i in range(40)):
        image = record["image"]
        boxes = [box for _, _, _, box in objects(record)]
        for (colour, _, _, (x0, y0, x1, y1)), right in zip(objects(record), boxes[1:] + [None]):
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert x1 - x0 == y1 - y0
            # Every shape covers its box centre.
            centre = image[(y0 + y1) // 2, (x0 + x1) // 2]
            np.testing.assert_array_equal(centre, _RGB[colour])
            if right is not None:  # Left to right, with a gap between columns.
                assert x1 < right[0]
        # Nothing is drawn outside the boxes: the rest is the plain background.
        outside = np.ones(image.shape[:2], bool)
        for x0, y0, x1, y1 in boxes:
            outside[y0:y1, x0:x1] = False
        assert len(np.unique(image[outside], axis=0)) == 1


def corners(source):
    return np.array([box[:2] for i in range(len(source)) for *_, box in objects(source[i])])


def test_objects_sit_on_the_position_grid():
    # 84 px / 12 cells: corners 7 px apart, plus the 1 px margin; the grid is
    # covered in both directions.
    on_grid = corners(SyntheticScenes(80, image_size=84, seed=4))
    np.testing.assert_array_equal(on_grid % 7, 1)
    assert len(np.unique(on_grid[:, 0])) >= 8 and len(np.unique(on_grid[:, 1])) >= 8
    # One cell per pixel: free placement, every offset within a 7 px cell.
    free = corners(SyntheticScenes(80, image_size=84, seed=4, position_grid=84))
    assert set(np.unique(free % 7)) == set(range(7))
    assert "position_grid=84" in repr(SyntheticScenes(1, image_size=84, position_grid=84))
    assert SyntheticScenes(1, image_size=84, position_grid=6).held_out().position_grid == 6


def test_sizes_are_distinct_and_consistent():
    source = SyntheticScenes(40, image_size=224)
    sides = {}
    for i in range(40):
        for _, _, size, (x0, _, x1, _) in objects(source[i]):
            sides.setdefault(size, set()).add(x1 - x0)
    assert len(sides[0]) == len(sides[1]) == 1
    assert min(sides[1]) > 1.5 * min(sides[0])


def test_captions_state_every_object_and_true_relations(records):
    for record in records:
        objs = objects(record)
        names = [name(c, s) for c, s, _, _ in objs]
        assert record["short_caption"] == (
            names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        )
        first, *relations = record["caption"].rstrip(".").split(". ")
        assert first.startswith(COUNTS[len(objs) - 1] + " shape")
        positions = [first.index(f"a {SIZES[z]} {n}") for (_, _, z, _), n in zip(objs, names)]
        assert positions == sorted(positions)  # Listed left to right.
        assert len(relations) == len(objs) * (len(objs) - 1) // 2
        by_name = dict(zip(names, objs))
        stated_pairs = set()
        for sentence in relations:
            match = RELATION_SENTENCE.fullmatch(sentence)
            assert match, sentence
            c1, s1, horizontal, vertical, c2, s2 = match.groups()
            box_a, box_b = by_name[f"{c1} {s1}"][3], by_name[f"{c2} {s2}"][3]
            a_is_left = (box_a[0] + box_a[2]) < (box_b[0] + box_b[2])
            assert horizontal == ("left of" if a_is_left else "right of")
            if vertical == "above":
                assert box_a[3] <= box_b[1]
            elif vertical == "below":
                assert box_b[3] <= box_a[1]
            else:
                assert box_a[3] > box_b[1] and box_b[3] > box_a[1]
            stated_pairs.add(frozenset((f"{c1} {s1}", f"{c2} {s2}")))
        assert len(stated_pairs) == len(relations)
    all_relations = " ".join(r["caption"] for r in records)
    for word in ("left of", "right of", "above", "below"):
        assert word in all_relations


def test_labels_agree_with_objects_and_captions(records):
    assert set(LABEL_CLASSES) == set(records[0]["labels"])
    seen_relations = set()
    for record in records:
        labels, objs = record["labels"], objects(record)
        colours = sorted({c for c, _, _, _ in objs})
        shapes = sorted({s for _, s, _, _ in objs})
        assert COUNTS[labels["count"]] == record["caption"].split()[0]
        assert np.flatnonzero(labels["colours"]).tolist() == colours
        assert np.flatnonzero(labels["shapes"]).tolist() == shapes
        leftmost = f"{SIZES[labels['left_size']]} {COLOURS[labels['left_colour']]} "
        leftmost += SHAPES[labels["left_shape"]]
        assert record["caption"].split(": a ")[1].startswith(leftmost)
        if len(objs) == 1:
            assert labels["pair_relation"] == -1
            continue
        # The pair: the first two objects by (colour, shape) index; their
        # sentence comes first in the caption.
        a, b = sorted(objs, key=lambda o: (o[0], o[1]))[:2]
        relation = RELATIONS[labels["pair_relation"]]
        assert record["caption"].split(". ")[1].startswith(
            f"the {name(a[0], a[1])} is {relation}"
        )
        assert (relation == "left of") == (a[3][0] < b[3][0])
        seen_relations.add(relation)
    assert seen_relations == set(RELATIONS)


def test_caption_words_are_whole_words_of_the_vocabulary(records):
    vocabulary = pathlib.Path(keras_ov2.__file__).parent / "assets" / "vocabulary.txt"
    words = set(vocabulary.read_text().split("\n"))
    for record in records:
        for text in (record["caption"], record["short_caption"]):
            for word in re.findall(r"\w+|[^\w\s]", text):
                assert word in words, word


def test_caption_words_are_exactly_the_words_and_marks_captions_use():
    scenes = SyntheticScenes(300, image_size=84, seed=5, max_objects=4)
    used = {word for i in range(len(scenes)) for field in ("caption", "short_caption")
            for word in re.findall(r"\w+|[^\w\s]", scenes[i][field])}
    assert used == set(CAPTION_WORDS)


def test_grain_shuffle_and_batch():
    source = SyntheticScenes(10, image_size=84, seed=2)
    dataset = grain.MapDataset.source(source).shuffle(seed=1).batch(4)
    batches = list(dataset)
    assert [len(b["caption"]) for b in batches] == [4, 4, 2]
    batch = batches[0]
    assert batch["image"].shape == (4, 84, 84, 3) and batch["image"].dtype == np.uint8
    assert batch["labels"]["colours"].shape == (4, len(COLOURS))
    assert batch["labels"]["count"].shape == (4,)
    assert batch["objects"]["box"].shape == (4, 3, 4)
    captions = sorted(c for b in batches for c in b["caption"].tolist())
    assert captions == sorted(source[i]["caption"] for i in range(10))


def test_pickle_round_trip_gives_the_same_records():
    source = SyntheticScenes(6, image_size=84, seed=7, min_objects=2, max_objects=4)
    copy = pickle.loads(pickle.dumps(source))
    assert repr(copy) == repr(source)
    for i in (0, 5):
        assert copy[i]["image"].tobytes() == source[i]["image"].tobytes()
        assert copy[i]["caption"] == source[i]["caption"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_records": 0}, ValueError, "num_records"),
        ({"num_records": 2.5}, TypeError, "num_records"),
        ({"num_records": 4, "image_size": 40}, ValueError, "at least 54"),
        ({"num_records": 4, "image_size": 60, "max_objects": 4}, ValueError, "at least 68"),
        ({"num_records": 4, "image_size": 84, "position_grid": 0}, ValueError, "position_grid"),
        ({"num_records": 4, "image_size": 84, "position_grid": 85}, ValueError, "position_grid"),
        ({"num_records": 4, "max_objects": 3, "position_grid": 2}, ValueError, "position_grid"),
        ({"num_records": 4, "max_objects": 5}, ValueError, "max_objects"),
        ({"num_records": 4, "min_objects": 3, "max_objects": 2}, ValueError, "min_objects"),
        ({"num_records": 4, "seed": -1}, ValueError, "seed"),
        ({"num_records": 4, "split": "test"}, ValueError, "split"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        SyntheticScenes(**kwargs)
