"""`make_pretraining_dataset`: raw image-caption records -> Grain batches for `fit`.

Order of the stages, and why:
  source -> global shuffle (seeded) -> per-host shard -> repeat (reshuffled
  every epoch) -> decode + augment + caption (`random_map`, in worker
  processes when `num_workers` > 0, read ahead by threads) -> skip bad
  records, counting them (in the main process, so the counts are visible
  there) -> batch.
Shuffling before sharding with the same seed on every host makes the hosts'
shards disjoint; every stage is a deterministic function of (seed, index), so
an iterator's `get_state()` / `set_state()` resumes at the next unseen batch.
"""

import collections
import logging

import grain
import numpy as np

from keras_ov2.data import augment
from keras_ov2.data.decode import REASONS
from keras_ov2.data.decode import BadRecord
from keras_ov2.data.decode import check_record
from keras_ov2.data.decode import record_caption

logger = logging.getLogger(__name__)


class Skipped:
    """Stands for a bad record between the transform and the counter."""

    def __init__(self, error):
        self.reason, self.key, self.detail = error.reason, error.key, error.detail


class PretrainingTransform:
    """Raw record -> (uint8 image (size, size, 3), caption str), or `Skipped`.
    With a tuple of caption fields the caption is a tuple of str, one per field.
    A Grain `RandomMapTransform`-style callable: picklable, no Keras."""

    def __init__(self, image_size, caption_field="caption", augment_images=True,
                 crop_area_range=(0.4, 1.0), jitter_strength=0.4, image_limits=None):
        self.image_size = int(image_size)
        self.caption_field = caption_field
        self.augment_images = augment_images
        self.crop_area_range = tuple(crop_area_range)
        self.jitter_strength = jitter_strength
        self.image_limits = dict(image_limits or {})

    def __call__(self, record, rng):
        try:
            fields = self.caption_field
            fields = (fields,) if isinstance(fields, str) else fields
            image, caption = check_record(record, fields[0], rng, **self.image_limits)
            if len(fields) > 1:
                caption = (caption, *(record_caption(record, f, rng) for f in fields[1:]))
        except BadRecord as error:
            return Skipped(error)
        if not self.augment_images:
            return augment.resize(image, self.image_size), caption
        image = augment.inception_crop(image, self.image_size, rng, self.crop_area_range)
        if self.jitter_strength:
            image = augment.simclr_jitter_gray(image, rng, self.jitter_strength)
        return image, caption


class SkippedRecords:
    """Counts the records a pipeline skipped, by reason (see `decode.REASONS`).
    Used as the pipeline's filter; the first `log_first` skips and then every
    power of ten are logged with the record's key, so skipping is never silent."""

    def __init__(self, log_first=10):
        self.counts = collections.Counter()
        self.log_first = log_first

    def __call__(self, element):
        if not isinstance(element, Skipped):
            return True
        self.counts[element.reason] += 1
        total = self.total
        if total <= self.log_first or str(total).rstrip("0") == "1":
            logger.warning("Skipped record %r: %s%s (%d skipped so far)", element.key,
                           element.reason, f" ({element.detail})" if element.detail else "", total)
        return False

    @property
    def total(self):
        return sum(self.counts.values())

    def summary(self):
        """One line: "3 skipped: 2 unreadable_image, 1 empty_caption"."""
        if not self.total:
            return "0 skipped"
        parts = [f"{self.counts[r]} {r}" for r in REASONS if self.counts[r]]
        return f"{self.total} skipped: " + ", ".join(parts)


def default_shard():
    """(process index, process count) of this JAX process; (0, 1) elsewhere."""
    try:
        import jax

        return jax.process_index(), jax.process_count()
    except Exception:  # no JAX runtime: one host
        return 0, 1


def allow_grain_workers():
    """Grain 0.2.18's worker processes read absl flags, which fail unless
    parsed (grain issue #1355, fixed after 0.2.18): mark them parsed, with
    their defaults, when the program did not parse them itself."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def stack_batch(elements):
    """[(image, caption), ...] -> (uint8 (B, H, W, 3), str array (B,)); a
    tuple of captions per image gives a tuple of str arrays, one per field."""
    images, captions = zip(*elements)
    if isinstance(captions[0], tuple):
        return np.stack(images), tuple(np.array(c, dtype=object) for c in zip(*captions))
    return np.stack(images), np.array(captions, dtype=object)


def make_pretraining_dataset(
    source,
    image_size,
    batch_size,
    caption_field="caption",
    seed=0,
    augment_images=True,
    num_epochs=None,
    shard_index=None,
    shard_count=None,
    num_workers=0,
    read_threads=4,
    preprocessor=None,
    skipped=None,
    transform=None,
):
    """A Grain dataset of pretraining batches that `OpenVision2Captioner.fit`
    takes directly.

    Args:
        source: a random-access source of raw records (`keras_ov2.data`
            sources, `SyntheticScenes`, or any sequence of dicts).
        image_size: training resolution (square).
        batch_size: images per batch on this host (global batch / hosts).
        caption_field: the record field to caption; a list value gives one
            caption drawn per use. A tuple of fields (e.g. `("short_caption",
            "caption")` for `OpenVision1Preprocessor`) gives batches
            `(images, (captions of field 1, captions of field 2, ...))`.
        augment_images: Inception crop + SimCLR jitter/grayscale (the
            authors' recipe) when True; a plain resize when False.
        num_epochs: None repeats forever (pass `steps_per_epoch` to `fit`).
        shard_index, shard_count: this host's shard; default
            `jax.process_index()` of `jax.process_count()`. Shards are equal
            in size (up to `shard_count - 1` records per epoch are dropped).
        num_workers: processes for decoding and augmentation (0: in-process).
        read_threads: threads that read and transform records ahead of the
            batcher, in each worker (Pillow's decoders release the GIL).
        preprocessor: when given (e.g. `captioner.preprocessor`), it is mapped
            over the batches, which then are `(x, y, sample_weight)` for a
            model without a preprocessor or a custom loop; by default batches
            are `(uint8 images, captions)` for the captioner's own.
        skipped: a `SkippedRecords` to count into; by default a new one.
        transform: replaces `PretrainingTransform(image_size, caption_field,
            augment_images)`.

    Returns a `grain.IterDataset` of batches, with the counter of skipped
    records as its `skipped` attribute.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if shard_index is None or shard_count is None:
        shard_index, shard_count = default_shard()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}.")
    if len(source) < shard_count:
        raise ValueError(f"The source has {len(source)} records, fewer than the "
                         f"{shard_count} shards.")
    transform = transform or PretrainingTransform(image_size, caption_field, augment_images)
    skipped = skipped if skipped is not None else SkippedRecords()

    records = grain.MapDataset.source(source).seed(seed).shuffle()
    per_shard = len(source) // shard_count
    records = records[: per_shard * shard_count][shard_index::shard_count]
    records = records.repeat(num_epochs).random_map(transform)
    buffer = max(read_threads, 2 * batch_size)
    dataset = records.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=buffer))
    if num_workers:
        allow_grain_workers()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    dataset = dataset.filter(skipped).batch(batch_size, drop_remainder=True, batch_fn=stack_batch)
    if preprocessor is not None:
        dataset = dataset.map(lambda batch: preprocessor(*batch))
    dataset.skipped = skipped
    return dataset
