"""OpenVision's training augmentations, in NumPy and PIL for Grain workers.

The authors' recipe (big_vision ops, see openvision-reference.md §3.4):
1. Inception crop: a random box of 40-100% of the area with aspect ratio in
   [3/4, 4/3] (TF's `sample_distorted_bounding_box`, 100 attempts, else the
   whole image), resized bilinear + antialiased to the training resolution.
2. SimCLR v2 colour jitter at strength 0.4: with p=0.8 brightness, contrast,
   saturation (each +-0.32, multiplicative) and hue (+-0.08 of a turn) in a
   random order, then grayscale with p=0.2. No flips.
Every function takes a `numpy.random.Generator`, so a Grain `random_map`
makes them deterministic per record and seed.
"""

import numpy as np
from PIL import Image

GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale


def resize(image, size):
    """uint8 (H, W, 3) -> uint8 (size, size, 3): squash, bilinear, antialiased (PIL)."""
    image = np.asarray(image)
    if image.shape[:2] == (size, size) and image.dtype == np.uint8:
        return image
    pil = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    return np.asarray(pil.resize((size, size), Image.BILINEAR))


def inception_crop_box(height, width, rng, area_range=(0.4, 1.0),
                       aspect_range=(3 / 4, 4 / 3), attempts=100):
    """(top, left, crop_height, crop_width) of a random box, or the whole image."""
    for _ in range(attempts):
        area = rng.uniform(*area_range) * height * width
        aspect = rng.uniform(*aspect_range)  # width / height
        crop_h = int(round(np.sqrt(area / aspect)))
        crop_w = int(round(np.sqrt(area * aspect)))
        if 0 < crop_h <= height and 0 < crop_w <= width:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def inception_crop(image, size, rng, area_range=(0.4, 1.0)):
    """A random Inception-style crop of `image`, resized to (size, size)."""
    top, left, h, w = inception_crop_box(image.shape[0], image.shape[1], rng, area_range)
    return resize(image[top : top + h, left : left + w], size)


def channel_max(x):
    """Max over the 3 channels; elementwise, far faster than .max(-1) on a size-3 axis."""
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def channel_min(x):
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


def rgb_to_hsv(rgb):
    """float RGB in [0, 1] (..., 3) -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    value = channel_max(rgb)
    delta = value - channel_min(rgb)
    safe = np.where(delta > 0, delta, 1.0)
    saturation = np.where(value > 0, delta / np.where(value > 0, value, 1.0), 0.0)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2.0 + (b - r) / safe,
                                                         4.0 + (r - g) / safe))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    return np.stack([hue, saturation, value], -1)


def hsv_to_rgb(hsv):
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = np.moveaxis(hsv, -1, 0)
    sector = (hue % 1.0) * 6.0
    channels = []
    for offset in (5.0, 3.0, 1.0):  # r, g, b
        k = (offset + sector) % 6.0
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(channels, -1)


def adjust_brightness(x, factor):
    return np.clip(x * factor, 0.0, 1.0)


def adjust_contrast(x, factor):
    mean = x.mean(axis=(0, 1), keepdims=True)  # per channel, as tf.image.adjust_contrast
    return np.clip((x - mean) * factor + mean, 0.0, 1.0)


def adjust_saturation(x, factor):
    """HSV saturation times `factor`, clipped to 1 (tf.image.adjust_saturation).
    Hue and value fixed means every channel keeps its place between the
    pixel's max and min, so the distance to the max scales by the saturation
    ratio: one pass, no HSV round trip."""
    value, low = channel_max(x)[..., None], channel_min(x)[..., None]
    spread = value - low
    ratio = np.minimum(factor, value / np.where(spread > 0, spread, 1.0))
    return value - (value - x) * ratio


def adjust_hue(x, delta):
    hsv = rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
    return hsv_to_rgb(hsv)


def to_grayscale(x):
    return np.repeat((x @ GRAY_WEIGHTS)[..., None], 3, axis=-1)


def simclr_jitter_gray(image, rng, strength=0.4, jitter_probability=0.8, gray_probability=0.2):
    """SimCLR v2 colour jitter + random grayscale on a uint8 (H, W, 3) image."""
    x = image.astype(np.float32) / 255.0
    if rng.uniform() < jitter_probability:
        b = c = s = 0.8 * strength
        h = 0.2 * strength
        ops = [
            lambda x: adjust_brightness(x, rng.uniform(max(0.0, 1 - b), 1 + b)),
            lambda x: adjust_contrast(x, rng.uniform(max(0.0, 1 - c), 1 + c)),
            lambda x: adjust_saturation(x, rng.uniform(max(0.0, 1 - s), 1 + s)),
            lambda x: adjust_hue(x, rng.uniform(-h, h)),
        ]
        for index in rng.permutation(len(ops)):
            x = ops[index](x)
    if rng.uniform() < gray_probability:
        x = to_grayscale(x)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
