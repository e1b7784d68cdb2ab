"""Frozen encoder features of uint8 images, for linear probes.

Two kinds, extracted in one pass:
- "pooled": the encoder's `pooled_output` (LayerNorm of the mean patch
  token), the global feature users of the encoder get.
- "grid": the patch tokens averaged over a `grid` x `grid` layout of cells,
  flattened. Mean pooling forgets where things are; the grid keeps coarse
  positions, which spatial tasks (left/right of) need.

Probes use both, concatenated (`FEATURES["both"]`), unless told otherwise.
"""

import numpy as np

from keras_ov2.data.augment import resize
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.common.openvision_image_converter import OpenVision2ImageConverter

FEATURES = {"pooled": ("pooled",), "grid": ("grid",), "both": ("pooled", "grid")}


def as_backbone(model):
    """An `OpenVision2Backbone`, or the backbone of a captioner."""
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, OpenVision2Backbone):
        raise TypeError(
            "Expected an OpenVision2Backbone or a model with one as `.backbone` "
            f"(e.g. OpenVision2Captioner); got {type(model).__name__}."
        )
    return backbone


def grid_pool(tokens, grid_shape, grid):
    """(B, h*w, D) patch tokens -> (B, g*g*D): the mean token of each cell of
    a g x g split of the h x w patch grid (g capped at h and w)."""
    h, w = grid_shape
    tokens = tokens.reshape(len(tokens), h, w, -1)
    cells = [
        cell.mean(axis=(1, 2))
        for rows in np.array_split(tokens, min(grid, h), axis=1)
        for cell in np.array_split(rows, min(grid, w), axis=2)
    ]
    return np.concatenate(cells, axis=-1)


def extract_features(model, images, image_size=None, batch_size=32, grid=2):
    """uint8 images (an (N, H, W, 3) array or a list of differently sized
    ones) -> {"pooled": (N, D), "grid": (N, g*g*D)} float32 NumPy arrays.

    `image_size`: side every image is resized to (squash, bilinear, as the
    data pipeline does); None keeps the images as they are (same size).
    Batches run through the compiled predict function; the last one is padded
    to `batch_size`, so one compiled shape serves every batch.
    """
    backbone = as_backbone(model)
    normalize = OpenVision2ImageConverter()
    pooled, cells = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if image_size is not None:
            batch = [resize(image, image_size) for image in batch]
        batch = np.stack(batch)
        count = len(batch)
        if count < batch_size and len(images) > batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, 0)])
        out = backbone.predict_on_batch(normalize(batch))
        patch = backbone.patch_size
        grid_shape = (batch.shape[1] // patch, batch.shape[2] // patch)
        tokens = np.asarray(out["sequence_output"][:count], dtype=np.float32)
        pooled.append(np.asarray(out["pooled_output"][:count], dtype=np.float32))
        cells.append(grid_pool(tokens, grid_shape, grid))
    return {"pooled": np.concatenate(pooled), "grid": np.concatenate(cells)}


def select_features(features, kind="both"):
    """The probe's input: the features named by `kind` (see `FEATURES`), concatenated."""
    if kind not in FEATURES:
        raise ValueError(f"Unknown feature kind {kind!r}; expected one of {sorted(FEATURES)}.")
    return np.concatenate([features[name] for name in FEATURES[kind]], axis=-1)
