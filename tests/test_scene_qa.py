"""keras_ov2.data.scene_qa: questions whose answers the scene holds."""

import collections

import numpy as np

from keras_ov2.data import COLOURS
from keras_ov2.data import QUESTION_TYPES
from keras_ov2.data import SHAPES
from keras_ov2.data import SyntheticScenes
from keras_ov2.data import question_records
from keras_ov2.data import scene_questions
from keras_ov2.data.synthetic_scenes import object_count


def test_answers_are_what_the_scene_shows():
    scenes = SyntheticScenes(200, image_size=84, max_objects=3, seed=1)
    rng = np.random.default_rng(0)
    for index in range(len(scenes)):
        record = scenes[index]
        objects, labels = record["objects"], record["labels"]
        count = object_count(objects)
        names = [f"{COLOURS[c]} {SHAPES[s]}"
                 for c, s in zip(objects["colour"][:count], objects["shape"][:count])]
        asked = {q["type"]: q for q in scene_questions(record, rng)}
        assert set(asked) == set(QUESTION_TYPES) - ({"relation"} if count == 1 else set())
        assert asked["count"]["answer"] == QUESTION_TYPES["count"][labels["count"]]
        if "leftmost" in asked["colour"]["question"] or count == 1:
            assert asked["colour"]["answer"] == COLOURS[labels["left_colour"]]
        for q in asked.values():
            assert q["answer"] in QUESTION_TYPES[q["type"]], q
        presence = asked["presence"]["question"].removeprefix("is there a ").rstrip("?")
        assert (presence in names) == (asked["presence"]["answer"] == "yes")
        if count > 1:
            first, second = asked["relation"]["question"][7:-1].split(" left of the ")
            left_to_right = names.index(first) < names.index(second)
            assert left_to_right == (asked["relation"]["answer"] == "yes")


def test_yes_no_questions_are_balanced_and_reproducible():
    scenes = SyntheticScenes(300, image_size=84, max_objects=2, seed=2)
    records = question_records(scenes, seed=5)
    again = question_records(scenes, seed=5)
    assert [r["question"] for r in records] == [r["question"] for r in again]
    np.testing.assert_array_equal(records[-1]["image"], scenes[299]["image"])
    answers = collections.defaultdict(list)
    for q in records:
        answers[q["type"]].append(q["answer"])
    for kind in ("presence", "relation"):
        share = np.mean(np.array(answers[kind]) == "yes")
        assert 0.4 < share < 0.6, (kind, share)
    assert len(answers["count"]) == 300
    assert set(answers["count"]) == {"one", "two"}
