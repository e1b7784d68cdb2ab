"""`setup_training`: one call for the distribution from a mesh description,
the captioner built inside its scope (Keras lays variables out when they are
created), and this host's share of the Grain pipeline."""

import contextlib
import dataclasses
import json
import os

import keras

from keras_ov2.data.pipeline import default_shard
from keras_ov2.data.pipeline import make_pretraining_dataset
from keras_ov2.distribution import data_shard
from keras_ov2.distribution import make_distribution
from keras_ov2.distribution import per_host_batch_size
from keras_ov2.models import presets
from keras_ov2.models.openvision2.openvision2_captioner import OpenVision2Captioner

# Set by the launcher of a multi-host job; then `keras.distribution.initialize()` reads them.
MULTI_HOST_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")


def load_captioner(preset, **kwargs):
    """A captioner preset (name, folder or hub handle), with its weights when
    the preset has some and with random weights when it holds configs only.
    `kwargs` override the captioner's config (e.g. `keep_ratio`)."""
    if presets.is_handle(preset):
        return OpenVision2Captioner.from_preset(preset, **kwargs)
    folder = presets.resolve(str(preset), load_weights=False)
    weights = presets.has_weights(folder)
    return OpenVision2Captioner.from_preset(folder, load_weights=weights, **kwargs)


def parse_mesh(mesh):
    """`"data=4,model=2"`, `'{"data": 4, "model": 2}'` or a dict -> a dict of
    positive axis sizes."""
    if isinstance(mesh, dict):
        sizes = dict(mesh)
    else:
        text = str(mesh).strip()
        try:
            if text.startswith("{"):
                sizes = json.loads(text)
            else:
                sizes = dict(part.split("=", 1) for part in text.split(","))
            sizes = {name.strip(): int(size) for name, size in sizes.items()}
        except (ValueError, AttributeError, TypeError):
            raise ValueError(f"Bad mesh {mesh!r}: expected e.g. 'data=4,model=2' or "
                             '\'{"data": 4, "model": 2}\'.') from None
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"Mesh axis {name!r} must have a positive integer size; got {size!r}.")
    return sizes


@dataclasses.dataclass
class TrainingSetup:
    """The captioner, its distribution (None: one device, nothing set) and
    the data shard of this host. Train inside `scope()`."""

    captioner: OpenVision2Captioner
    distribution: object = None  # a keras.distribution DataParallel or ModelParallel

    def scope(self):
        if self.distribution is None:
            return contextlib.nullcontext()
        return self.distribution.scope()

    def data_shard(self):
        """(shard index, shard count) of this host's data: per the
        distribution, else each JAX process reads its own shard."""
        if self.distribution is not None:
            return data_shard(self.distribution)
        return default_shard()

    def dataset(self, source, image_size, global_batch_size, caption_field, **kwargs):
        """`make_pretraining_dataset` for this host: its shard of the records
        and its rows of each global batch (all of them without a distribution)."""
        shard_index, shard_count = self.data_shard()
        if self.distribution is not None:
            batch_size = per_host_batch_size(global_batch_size, self.distribution)
        else:
            batch_size = global_batch_size
        return make_pretraining_dataset(source, image_size, batch_size, caption_field,
                                        shard_index=shard_index, shard_count=shard_count,
                                        **kwargs)


def setup_training(preset, mesh=None, layout=None, initialize=None, **captioner_kwargs):
    """Builds the captioner `preset` (see `load_captioner`) for training on
    a mesh.

    Args:
        mesh: `{"data": 4, "model": 2}`, `"data=4,model=2"` or its JSON; None
            with `layout` None: one device, no distribution.
        layout: "data", "fsdp" or "tensor" (see `keras_ov2.distribution`);
            default "data".
        initialize: call `keras.distribution.initialize()` first, for several
            hosts; by default when the launcher set KERAS_DISTRIBUTION_* .
        captioner_kwargs: config overrides (e.g. `keep_ratio`).
    """
    if mesh is None and layout is None:
        return TrainingSetup(load_captioner(preset, **captioner_kwargs))
    if initialize is None:
        initialize = any(name in os.environ for name in MULTI_HOST_VARIABLES)
    if initialize:
        keras.distribution.initialize()
    layout = layout or "data"
    sizes = None if mesh is None else parse_mesh(mesh)
    distribution = make_distribution(sizes, layout, model=None if layout == "data" else preset)
    with distribution.scope():
        captioner = load_captioner(preset, **captioner_kwargs)
    return TrainingSetup(captioner, distribution)
