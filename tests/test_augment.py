"""The augmentations match TensorFlow's image ops (what big_vision calls)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_ov2.data import augment


@pytest.fixture
def image():
    return np.random.default_rng(0).uniform(0, 1, (12, 17, 3)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.68, 1.0, 1.32])
def test_saturation_and_contrast_match_tf(image, factor):
    np.testing.assert_allclose(augment.adjust_saturation(image, factor),
                               tf.image.adjust_saturation(image, factor).numpy(), atol=1e-5)
    expected = np.clip(tf.image.adjust_contrast(image, factor).numpy(), 0, 1)
    np.testing.assert_allclose(augment.adjust_contrast(image, factor), expected, atol=1e-5)


@pytest.mark.parametrize("delta", [-0.08, 0.03, 0.08, 0.5])
def test_hue_matches_tf(image, delta):
    np.testing.assert_allclose(augment.adjust_hue(image, delta),
                               tf.image.adjust_hue(image, delta).numpy(), atol=1e-5)


def test_hsv_round_trip_and_grayscale(image):
    np.testing.assert_allclose(augment.hsv_to_rgb(augment.rgb_to_hsv(image)), image, atol=1e-6)
    np.testing.assert_allclose(augment.rgb_to_hsv(image), tf.image.rgb_to_hsv(image).numpy(),
                               atol=1e-5)
    gray = augment.to_grayscale(image)
    np.testing.assert_allclose(gray[..., :1], tf.image.rgb_to_grayscale(image).numpy(), atol=1e-6)
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_inception_crop_boxes_stay_inside_with_the_right_area_and_aspect():
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(500):
        top, left, h, w = augment.inception_crop_box(300, 400, rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        areas.append(h * w / (300 * 400))
        aspects.append(w / h)
    assert 0.39 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.6
    assert 0.74 <= min(aspects) and max(aspects) <= 1.34
    # A box that can never fit (the image is a thin strip) falls back to the whole image.
    assert augment.inception_crop_box(10, 400, rng, area_range=(0.9, 1.0)) == (0, 0, 10, 400)


def test_jitter_probabilities_and_output():
    image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    outputs = [augment.simclr_jitter_gray(image, np.random.default_rng(s)) for s in range(200)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outputs)
    gray = np.mean([np.array_equal(o[..., 0], o[..., 1]) for o in outputs])
    unchanged = np.mean([np.array_equal(o, image) for o in outputs])
    assert 0.12 < gray < 0.28  # p = 0.2
    assert 0.1 < unchanged < 0.3  # no jitter (p = 0.2) and no grayscale (p = 0.8): 0.16
    assert augment.simclr_jitter_gray(image, np.random.default_rng(0), strength=0.0,
                                      gray_probability=0.0).tobytes() == image.tobytes()
