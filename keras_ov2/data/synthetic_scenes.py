"""A built-in captioned dataset: deterministic synthetic scenes of coloured shapes.

Pretraining needs image-caption pairs that cost nothing to obtain and whose
content is known exactly, so that a small model can be trained, its captions
read, and its encoder probed. Each scene holds one to four flat shapes, each
with a colour, a shape and a size, placed in distinct, non-overlapping columns
so that "left of" and "right of" are always unambiguous. Their corners lie on a
coarse grid (see `SyntheticScenes`), which is what lets a small ViT learn the
shapes in minutes.

Every record carries the two caption fields OpenVision v1 trains on: a short,
alt-text-like `"short_caption"` and a long, detailed `"caption"` made of
sentences (v1's contrastive branch samples one sentence of it). It also carries
probe `"labels"` (indices into the class lists below) and the ground truth
`"objects"` they were derived from.

The words used all exist in the BERT uncased WordPiece vocabulary as whole words:
the colours, the shapes, the sizes, the number words, "shape(s)", "a", "the",
"is", "of", "and", "from", "to", "left", "right", "above", "below".
"""

import operator

import numpy as np
from PIL import Image
from PIL import ImageDraw

from keras_ov2.data.source_base import TrainingDefaults

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
COUNTS = ("one", "two", "three", "four")
RELATIONS = ("left of", "right of")
# Every word and mark the captions use: a tokenizer holding only their
# word-pieces (`OpenVision2Tokenizer.for_texts`) encodes every caption.
CAPTION_WORDS = (*COLOURS, *SHAPES, *SIZES, *COUNTS, "shape", "shapes", "a", "the", "is", "of",
                 "and", "from", "to", "left", "right", "above", "below", ":", ",", ".")
SPLITS = ("train", "held_out")

# What each entry of a record's "labels" is an index into (or, for the
# multi-hot labels, which class each position stands for). Relation labels are
# -1 where a scene has a single object. The "pair" is the scene's first two
# objects in canonical order (colour, then shape, as listed above): a fixed
# rule that a probe can learn, independent of where the objects lie.
LABEL_CLASSES = {
    "count": COUNTS,
    "colours": COLOURS,
    "shapes": SHAPES,
    "left_colour": COLOURS,
    "left_shape": SHAPES,
    "left_size": SIZES,
    "pair_relation": RELATIONS,
}

# Saturated colours that stay distinct from each other and from the mid-grey
# background after resizing to 84 px.
_RGB = (
    (220, 30, 30),
    (20, 170, 50),
    (30, 70, 235),
    (245, 215, 0),
    (150, 40, 200),
    (255, 135, 0),
)
_BACKGROUND_GREYS = (95, 160)  # A plain background, its grey level drawn per scene.
_GAP = 0.03  # Smallest gap between objects (half of it to the borders), as a fraction of the side.
_LARGE = 0.28  # Side of a large object, as a fraction of the image side (when it fits).
_SMALL = 0.55  # Side of a small object, as a fraction of a large one.
_MIN_SIDE = 8  # Pixels: below this a small triangle and a small circle look alike.
# Objects' corners lie on a grid of twelfths of the side: half a patch of a
# patch-14 encoder at 84 px, one patch at 168 px.
POSITION_GRID = 12

# How to pretrain on these scenes: the authors' token masking (keep ratio
# left to the recipe) on the detailed captions, as OpenVision 2 trains, but no
# crops or colour jitter, which would make the captions' colours and
# positions false; the demo captioner with a vocabulary of CAPTION_WORDS
# (2.5x the steps of its 32,000-row twin in the same minutes).
TRAINING_DEFAULTS = TrainingDefaults("the built-in scenes' default", augment=False,
                                     caption_field="caption",
                                     preset="openvision2_captioner_scenes_patch14_84")


def _gap(image_size):
    return max(1, round(_GAP * image_size))


def _cells(side, image_size, grid):
    """Grid cells an object of `side` pixels (an int or an array) takes, with
    the gap after it."""
    return -(-(side + _gap(image_size)) * grid // image_size)


def _object_sides(image_size, max_objects, grid):
    """Pixel sides of (small, large) objects: `max_objects` large ones must fit in a row."""
    room = image_size * (grid // max_objects) // grid - _gap(image_size)
    large = min(int(_LARGE * image_size), room)
    return int(_SMALL * large), large


def _smallest_image_size(max_objects, grid):
    size = grid
    while _object_sides(size, max_objects, grid)[0] < _MIN_SIDE:
        size += 1
    return size


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        expected = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {expected}, got {value}.")
    return int(value)


class SyntheticScenes:
    """A Grain random-access source of `num_records` captioned synthetic scenes.

    Record `i` is a pure function of `(seed, split, i)`: the same in any order,
    any process and any run, so Grain can shuffle, shard and resume freely.
    Construction does no work; each record is rendered when it is read.

    Args:
        num_records: number of scenes.
        image_size: side of the square RGB images, in pixels. Scenes are drawn
            at this size directly (no resizing).
        seed: which scenes; different seeds give independent datasets.
        min_objects, max_objects: the number of objects per scene is drawn
            uniformly from this range (1 to 4).
        split: `"train"` or `"held_out"`. The held-out scenes of a seed are
            drawn from a separate random stream, so they are never training
            scenes of that seed; see `held_out()`.
        position_grid: objects' top-left corners lie on a grid of this many
            cells per side, `image_size / position_grid` pixels apart (plus
            a fixed margin). The default, 12, is half a patch of a patch-14
            encoder at 84 px: each shape then falls on a few offsets within
            the patches, and the tiny demo captioner learns shapes in
            minutes, where free placement leaves them at chance (see the
            README). `position_grid=image_size` places objects at any pixel.

    A record is a dict:
        "image": uint8 array (image_size, image_size, 3).
        "short_caption": str, alt-text-like: the objects left to right,
            e.g. "red circle and blue square".
        "caption": str, detailed: each object's size, colour and shape left to
            right, then one sentence per pair of objects (in canonical order)
            giving "left of"/"right of", plus "above"/"below" when their
            vertical extents do not overlap.
        "labels": dict of int32 probe labels, see `LABEL_CLASSES`.
        "objects": ground truth, left to right, padded to `max_objects` with -1:
            "colour", "shape", "size" (int32, (max_objects,)) and "box" (int32,
            (max_objects, 4): x0, y0, x1, y1 in pixels, end-exclusive).
    """

    training_defaults = TRAINING_DEFAULTS

    def __init__(
        self,
        num_records,
        image_size=224,
        seed=0,
        min_objects=1,
        max_objects=3,
        split="train",
        position_grid=POSITION_GRID,
    ):
        self.num_records = _check_int("num_records", num_records, 1)
        self.max_objects = _check_int("max_objects", max_objects, 1, len(COUNTS))
        self.min_objects = _check_int("min_objects", min_objects, 1, self.max_objects)
        self.image_size = _check_int("image_size", image_size, 1)
        self.seed = _check_int("seed", seed, 0)
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
        self.split = split
        # At least one cell per object in a row, at most one cell per pixel.
        self.position_grid = _check_int(
            "position_grid", position_grid, self.max_objects, self.image_size
        )
        self._small, self._large = _object_sides(
            self.image_size, self.max_objects, self.position_grid
        )
        if self._small < _MIN_SIDE:
            raise ValueError(
                f"`image_size`={image_size} is too small to draw {self.max_objects} "
                f"distinguishable objects side by side; it must be at least "
                f"{_smallest_image_size(self.max_objects, self.position_grid)} for "
                f"max_objects={self.max_objects} and position_grid={self.position_grid}."
            )

    def __len__(self):
        return self.num_records

    def __repr__(self):
        # Grain's DataLoader checkpoints identify a source by its repr.
        return (
            f"SyntheticScenes(num_records={self.num_records}, "
            f"image_size={self.image_size}, seed={self.seed}, "
            f"min_objects={self.min_objects}, max_objects={self.max_objects}, "
            f"split={self.split!r}, position_grid={self.position_grid})"
        )

    def held_out(self, num_records=None):
        """Scenes of the same kind that this dataset never contains.

        For showing sample captions and measuring a trained model on unseen
        images. `num_records` defaults to this dataset's length.
        """
        return SyntheticScenes(
            self.num_records if num_records is None else num_records,
            image_size=self.image_size,
            seed=self.seed,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            split="held_out",
            position_grid=self.position_grid,
        )

    def __getitem__(self, index):
        index = operator.index(index)
        if index < 0:
            index += self.num_records
        if not 0 <= index < self.num_records:
            raise IndexError(
                f"Index {index} is out of range for SyntheticScenes of length "
                f"{self.num_records}."
            )
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        colours, shapes, sizes, boxes = self._layout(rng)
        background = int(rng.integers(*_BACKGROUND_GREYS))
        return {
            "image": self._render(colours, shapes, boxes, background),
            "short_caption": _short_caption(colours, shapes),
            "caption": _caption(colours, shapes, sizes, boxes),
            "labels": _labels(colours, shapes, sizes, boxes),
            "objects": self._padded(colours, shapes, sizes, boxes),
        }

    def _layout(self, rng):
        """Draws the objects, left to right: distinct (colour, shape) pairs, so
        "the red circle" names one object, in non-overlapping columns of grid
        cells, each object at a grid corner plus a margin of half a gap."""
        count = int(rng.integers(self.min_objects, self.max_objects + 1))
        kinds = rng.choice(len(COLOURS) * len(SHAPES), size=count, replace=False)
        colours, shapes = np.divmod(kinds, len(SHAPES))
        sizes = rng.integers(0, len(SIZES), size=count)
        sides = np.where(sizes == 1, self._large, self._small)
        grid = self.position_grid
        cells = _cells(sides, self.image_size, grid)
        # Spread the free cells uniformly over the count + 1 spaces between objects.
        spaces = rng.multinomial(grid - cells.sum(), rng.dirichlet(np.ones(count + 1)))
        columns = spaces[0] + np.concatenate([[0], np.cumsum(cells + spaces[1:])[:-1]])
        margin = _gap(self.image_size) // 2
        rows = [int(rng.integers(0, self._rows(side) + 1)) for side in sides]
        x0 = columns * self.image_size // grid + margin
        y0 = np.array(rows) * self.image_size // grid + margin
        boxes = np.stack([x0, y0, x0 + sides, y0 + sides], axis=1)
        return colours, shapes, sizes, boxes

    def _rows(self, side):
        """The last grid row an object of `side` pixels can start on."""
        free = self.image_size - side - _gap(self.image_size)
        return free * self.position_grid // self.image_size

    def _render(self, colours, shapes, boxes, background):
        image = Image.new("RGB", (self.image_size, self.image_size), (background,) * 3)
        draw = ImageDraw.Draw(image)
        for colour, shape, (x0, y0, x1, y1) in zip(colours, shapes, boxes.tolist()):
            fill = _RGB[colour]
            # Pillow's rectangle and ellipse boxes include their end pixel.
            if SHAPES[shape] == "circle":
                draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
            elif SHAPES[shape] == "square":
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
            elif SHAPES[shape] == "triangle":
                draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
            else:  # cross: a plus sign with arms a third of the side thick.
                arm = round((x1 - x0) / 3)
                draw.rectangle((x0, y0 + arm, x1 - 1, y1 - 1 - arm), fill=fill)
                draw.rectangle((x0 + arm, y0, x1 - 1 - arm, y1 - 1), fill=fill)
        return np.asarray(image)

    def _padded(self, colours, shapes, sizes, boxes):
        def pad(values, shape):
            out = np.full(shape, -1, dtype=np.int32)
            out[: len(values)] = values
            return out

        n = self.max_objects
        return {
            "colour": pad(colours, (n,)),
            "shape": pad(shapes, (n,)),
            "size": pad(sizes, (n,)),
            "box": pad(boxes, (n, 4)),
        }


def object_count(objects):
    """How many objects a record's "objects" hold (the rest is -1 padding)."""
    return int(np.sum(objects["colour"] >= 0))


def _name(colour, shape):
    return f"{COLOURS[colour]} {SHAPES[shape]}"


def _join(phrases):
    """"a", "a and b", "a, b and c"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _short_caption(colours, shapes):
    return _join([_name(c, s) for c, s in zip(colours, shapes)])


def _canonical_order(colours, shapes):
    """Object indices sorted by (colour, shape): the order relations are stated in."""
    return sorted(range(len(colours)), key=lambda i: (colours[i], shapes[i]))


def _relation(boxes, i, j):
    """How object i lies relative to object j: ("left of" | "right of", vertical words)."""
    horizontal = RELATIONS[0] if boxes[i][0] < boxes[j][0] else RELATIONS[1]
    if boxes[i][3] <= boxes[j][1]:
        return horizontal, "above"
    if boxes[j][3] <= boxes[i][1]:
        return horizontal, "below"
    return horizontal, None


def _caption(colours, shapes, sizes, boxes):
    count = len(colours)
    objects = _join([f"a {SIZES[z]} {_name(c, s)}" for c, s, z in zip(colours, shapes, sizes)])
    noun = "shape" if count == 1 else "shapes"
    sentences = [f"{COUNTS[count - 1]} {noun}: {objects}"]
    if count > 1:
        sentences[0] += " from left to right"
    order = _canonical_order(colours, shapes)
    for a, i in enumerate(order):
        for j in order[a + 1 :]:
            horizontal, vertical = _relation(boxes, i, j)
            where = horizontal if vertical is None else f"{horizontal} and {vertical}"
            sentences.append(
                f"the {_name(colours[i], shapes[i])} is {where} "
                f"the {_name(colours[j], shapes[j])}"
            )
    return ". ".join(sentences) + "."


def _labels(colours, shapes, sizes, boxes):
    """Probe labels; objects are left to right, so object 0 is the leftmost."""
    order = _canonical_order(colours, shapes)
    pair_relation = -1
    if len(order) > 1:
        pair_relation = RELATIONS.index(_relation(boxes, order[0], order[1])[0])
    return {
        "count": np.int32(len(colours) - 1),
        "colours": np.isin(np.arange(len(COLOURS)), colours).astype(np.int32),
        "shapes": np.isin(np.arange(len(SHAPES)), shapes).astype(np.int32),
        "left_colour": np.int32(colours[0]),
        "left_shape": np.int32(shapes[0]),
        "left_size": np.int32(sizes[0]),
        "pair_relation": np.int32(pair_relation),
    }
