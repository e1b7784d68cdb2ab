"""Questions about the built-in scenes, with one-word answers: instruction
data for a LLaVA-style model at demo scale, in the spirit of the benchmarks
the OpenVision 2 paper judges its encoders by (counting, attributes, spatial
relations, and POPE's yes/no "is there a ...?" object probes).

Every question is answered from a record's "objects" (left to right), so
answers are exact. Yes/no questions are balanced: half of them true.
"""

import numpy as np

from keras_ov2.data.synthetic_scenes import COLOURS
from keras_ov2.data.synthetic_scenes import COUNTS
from keras_ov2.data.synthetic_scenes import SHAPES
from keras_ov2.data.synthetic_scenes import SIZES
from keras_ov2.data.synthetic_scenes import object_count

# Question type -> the answers it can have.
QUESTION_TYPES = {
    "count": COUNTS,
    "colour": COLOURS,
    "shape": SHAPES,
    "size": SIZES,
    "presence": ("yes", "no"),
    "relation": ("yes", "no"),
}


def scene_questions(record, rng):
    """A list of {"type", "question", "answer"} about one scene record: one
    question of each type the scene can pose ("relation" needs two objects).
    `rng`: a `numpy.random.Generator` that picks which object and which
    yes/no side is asked about."""
    objects = record["objects"]
    count = object_count(objects)
    colours, shapes = objects["colour"][:count], objects["shape"][:count]
    sizes = objects["size"][:count]
    names = [f"{COLOURS[c]} {SHAPES[s]}" for c, s in zip(colours, shapes)]
    which = int(rng.integers(count))
    place = _place(which, count)
    questions = [
        ("count", "how many shapes are there?", COUNTS[count - 1]),
        ("colour", f"what colour is the {place} shape?", COLOURS[colours[which]]),
        ("shape", f"what shape is the {place} object?", SHAPES[shapes[which]]),
        ("size", f"is the {place} shape small or large?", SIZES[sizes[which]]),
        _presence(names, rng),
    ]
    if count > 1:
        questions.append(_relation(names, rng))
    return [dict(type=t, question=q, answer=a) for t, q, a in questions]


def _place(index, count):
    """How a question points at object `index` of `count`, left to right."""
    if count == 1:
        return "only"
    return {0: "leftmost", count - 1: "rightmost"}.get(index, "middle")


def _presence(names, rng):
    """POPE-style: an object in the scene, or a (colour, shape) that is not."""
    if rng.random() < 0.5:
        return "presence", f"is there a {names[int(rng.integers(len(names)))]}?", "yes"
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in names]
    return "presence", f"is there a {absent[int(rng.integers(len(absent)))]}?", "no"


def _relation(names, rng):
    """Is object i left of object j? Objects are listed left to right."""
    i, j = rng.choice(len(names), size=2, replace=False)
    return "relation", f"is the {names[i]} left of the {names[j]}?", "yes" if i < j else "no"


def question_records(scenes, seed=0):
    """Every question of every record of `scenes` (a `SyntheticScenes`), one
    {"image", "type", "question", "answer"} dict each, drawn reproducibly
    from `seed`."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(len(scenes)):
        record = scenes[index]
        rows += [dict(image=record["image"], **q) for q in scene_questions(record, rng)]
    return rows
