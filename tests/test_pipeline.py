"""make_pretraining_dataset: bad records, epochs, host shards, resume, fit."""

import io
import logging

import keras
import numpy as np
import pytest
from PIL import Image

from keras_ov2.data import SyntheticScenes
from keras_ov2.data.pipeline import PretrainingTransform
from keras_ov2.data.pipeline import SkippedRecords
from keras_ov2.data.pipeline import make_pretraining_dataset
from tests.test_captioner import tiny_captioner

SIZE = 32


def encoded(array, fmt):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def good_record(i):
    """A distinct image (its colour encodes i) with a caption naming i."""
    image = np.full((40, 48, 3), (i * 7 % 256, i * 13 % 256, 100), np.uint8)
    fmt = ("PNG", "JPEG", "WEBP")[i % 3]
    return {"key": f"good-{i}", "image": encoded(image, fmt), "caption": f"picture number {i}"}


def bad_records():
    """One record per reason, with the reason it must be counted under."""
    jpeg = encoded(np.zeros((64, 64, 3), np.uint8), "JPEG")
    ok = encoded(np.zeros((32, 32, 3), np.uint8), "PNG")
    return [
        ({"key": "truncated", "image": jpeg[: len(jpeg) // 3], "caption": "a"}, "unreadable_image"),
        ({"key": "garbage", "image": b"not an image at all", "caption": "a"}, "unreadable_image"),
        ({"key": "zero-bytes", "image": b"", "caption": "a"}, "empty_image"),
        ({"key": "no-image", "caption": "a"}, "missing_image"),
        ({"key": "no-caption", "image": ok}, "missing_caption"),
        ({"key": "null-caption", "image": ok, "caption": None}, "missing_caption"),
        ({"key": "blank", "image": ok, "caption": "  \n"}, "empty_caption"),
        ({"key": "latin-1", "image": ok, "caption": "caf\xe9".encode("latin-1")}, "caption_not_utf8"),
        ({"key": "tiny", "image": encoded(np.zeros((4, 4, 3), np.uint8), "PNG"), "caption": "a"},
         "image_too_small"),
        ({"key": "bomb", "image": encoded(np.zeros((9000, 8000), np.uint8), "PNG"), "caption": "a"},
         "image_too_large"),
        ({"key": "strip", "image": encoded(np.zeros((10, 400, 3), np.uint8), "PNG"), "caption": "a"},
         "bad_aspect_ratio"),
        ({"key": "bad-json", "error": "unreadable_record", "detail": "line 3"}, "unreadable_record"),
    ]


def mixed_corpus(num_good=24, seed=0):
    bad = bad_records()
    records = [good_record(i) for i in range(num_good)] + [r for r, _ in bad]
    order = np.random.default_rng(seed).permutation(len(records))
    expected = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    return [records[i] for i in order], num_good, expected


def captions_of(batches):
    return [str(c) for _, captions in batches for c in captions]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_records_are_skipped_and_counted_good_ones_pass_once_per_epoch(num_workers, caplog):
    corpus, num_good, expected = mixed_corpus()
    ds = make_pretraining_dataset(corpus, SIZE, batch_size=4, num_epochs=2, shard_index=0,
                                  shard_count=1, num_workers=num_workers)
    with caplog.at_level(logging.WARNING, logger="keras_ov2.data.pipeline"):
        batches = list(ds)
    assert len(batches) == 2 * num_good // 4
    images, _ = batches[0]
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    good = sorted(f"picture number {i}" for i in range(num_good))
    per_epoch = num_good // 4
    assert sorted(captions_of(batches[:per_epoch])) == good
    assert sorted(captions_of(batches[per_epoch:])) == good
    assert captions_of(batches[:per_epoch]) != captions_of(batches[per_epoch:])  # reshuffled
    assert dict(ds.skipped.counts) == {r: 2 * n for r, n in expected.items()}
    assert ds.skipped.summary().startswith(f"{2 * sum(expected.values())} skipped: ")
    keys = {r["key"] for r, _ in bad_records()}
    logged = [m for m in caplog.messages if m.startswith("Skipped record")]
    assert len(logged) >= 10 and all(any(repr(k) in m for k in keys) for m in logged)


def test_restored_iterator_yields_the_batches_an_uninterrupted_one_would():
    corpus, _, _ = mixed_corpus()

    def pipeline():
        return make_pretraining_dataset(corpus, SIZE, batch_size=3, seed=5, shard_index=0,
                                        shard_count=1)  # augmented, endless

    uninterrupted = iter(pipeline())
    reference = [next(uninterrupted) for _ in range(12)]
    stopped = iter(pipeline())
    for _ in range(5):
        next(stopped)
    state = stopped.get_state()
    resumed = iter(pipeline())
    resumed.set_state(state)
    for expected_images, expected_captions in reference[5:]:
        images, captions = next(resumed)
        np.testing.assert_array_equal(images, expected_images)
        assert list(captions) == list(expected_captions)


def test_two_hosts_see_disjoint_halves():
    source = SyntheticScenes(30, image_size=64, seed=0)
    names = [source[i]["short_caption"] + str(i) for i in range(len(source))]

    class Named:
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            return dict(source[i], key=str(i), caption=names[i])

    seen = []
    for host in (0, 1):
        ds = make_pretraining_dataset(Named(), SIZE, batch_size=5, num_epochs=1,
                                      shard_index=host, shard_count=2, augment_images=False)
        seen.append(captions_of(list(ds)))
    assert len(seen[0]) == len(seen[1]) == 15
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(names)
    with pytest.raises(ValueError, match="shard_index"):
        make_pretraining_dataset(Named(), SIZE, 5, shard_index=2, shard_count=2)


def test_several_captions_per_record_are_sampled():
    image = encoded(np.zeros((32, 32, 3), np.uint8), "PNG")
    corpus = [{"image": image, "re_caption": ["first", "second", "third"]}] * 30
    ds = make_pretraining_dataset(corpus, SIZE, batch_size=30, caption_field="re_caption",
                                  num_epochs=1, shard_index=0, shard_count=1)
    (_, captions), = list(ds)
    assert set(captions) == {"first", "second", "third"}


def test_augmentation_is_deterministic_per_seed_and_varies_per_record():
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    transform = PretrainingTransform(SIZE, augment_images=True)
    record = {"image": image, "caption": "x"}
    a = transform(record, np.random.default_rng(1))[0]
    b = transform(record, np.random.default_rng(1))[0]
    c = transform(record, np.random.default_rng(2))[0]
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_skipped_records_summary_names_each_reason():
    counter = SkippedRecords(log_first=0)
    assert counter.summary() == "0 skipped"
    transform = PretrainingTransform(SIZE)
    for record, _ in bad_records()[:3]:
        assert counter(transform(record, np.random.default_rng(0))) is False
    assert counter.summary() == "3 skipped: 1 empty_image, 2 unreadable_image"


def test_fit_takes_the_dataset_directly_and_preprocessor_option():
    keras.utils.set_random_seed(0)
    captioner = tiny_captioner()  # image size 64
    source = SyntheticScenes(16, image_size=64, seed=0)
    ds = make_pretraining_dataset(source, 64, batch_size=4, caption_field="short_caption",
                                  augment_images=False, shard_index=0, shard_count=1)
    captioner.compile(learning_rate=1e-3, total_steps=3)
    history = captioner.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])

    tokenized = make_pretraining_dataset(source, 64, batch_size=4, caption_field="short_caption",
                                         shard_index=0, shard_count=1,
                                         preprocessor=captioner.preprocessor)
    x, y, sample_weight = next(iter(tokenized))
    assert x["images"].shape == (4, 64, 64, 3) and x["token_ids"].shape == y.shape
    assert sample_weight.shape == y.shape
