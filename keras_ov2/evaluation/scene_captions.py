"""How right generated captions of the built-in scenes are, attribute by attribute.

Exact match is too coarse to see what a captioner has learned (a caption with
one wrong shape counts as wrong as gibberish), and "words in place" mixes
filler words with content. This reads the objects a caption names, left to
right, and compares them with the scene's ground truth: the count, then the
colour, shape and size of each object in its place.
"""

import re

import numpy as np

from keras_ov2.data.synthetic_scenes import COLOURS
from keras_ov2.data.synthetic_scenes import SHAPES
from keras_ov2.data.synthetic_scenes import SIZES
from keras_ov2.data.synthetic_scenes import object_count

ATTRIBUTES = ("colour", "shape", "size")

_OBJECT = re.compile(
    rf"\b(?:({'|'.join(SIZES)}) )?({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b"
)


def named_objects(caption):
    """The objects a caption lists, left to right: [(colour, shape, size)] as
    class indices, size None where the caption does not say it.

    Reads a short caption ("red circle and blue square") whole, and of a
    detailed one only its first sentence, which lists the objects in order
    (the relation sentences after it name them again)."""
    listing = caption.split(".")[0]
    return [
        (COLOURS.index(colour), SHAPES.index(shape), SIZES.index(size) if size else None)
        for size, colour, shape in _OBJECT.findall(listing)
    ]


def _true_objects(record):
    truth = record["objects"]
    return [(int(truth["colour"][i]), int(truth["shape"][i]), int(truth["size"][i]))
            for i in range(object_count(truth))]


def scene_caption_accuracy(captions, records, sizes=False):
    """Fractions right over the `records` (SyntheticScenes records) that
    `captions` describe.

    "count": the caption names as many objects as the scene holds.
    "colour", "shape": per true object, the caption's object in the same place
    (left to right) has its colour / shape; missing objects count as wrong.
    "size": the same, when `sizes` (captions of the detailed "caption" field
    state them; short captions do not), else None.
    """
    if len(captions) != len(records):
        raise ValueError(f"Got {len(captions)} captions for {len(records)} records.")
    count_right, right, total = [], {a: 0 for a in ATTRIBUTES}, {a: 0 for a in ATTRIBUTES}
    for caption, record in zip(captions, records):
        named, truth = named_objects(caption), _true_objects(record)
        count_right.append(len(named) == len(truth))
        for place, true in enumerate(truth):
            made = named[place] if place < len(named) else (None, None, None)
            for index, attribute in enumerate(ATTRIBUTES):
                if attribute == "size" and not sizes:
                    continue
                total[attribute] += 1
                right[attribute] += made[index] == true[index]
    accuracy = {"count": float(np.mean(count_right))}
    for attribute in ATTRIBUTES:
        accuracy[attribute] = right[attribute] / total[attribute] if total[attribute] else None
    return accuracy


def describe_accuracy(accuracy):
    """One line: "count 97%, colour 95%, shape 81%" (size when measured)."""
    return ", ".join(f"{name} {value:.0%}" for name, value in accuracy.items() if value is not None)
