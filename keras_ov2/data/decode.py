"""Robust decoding of raw image-caption records.

Web-scale shards always hold some bad records. Every check here either
returns clean data (uint8 RGB image, non-empty str caption) or raises
`BadRecord` with one of `REASONS`, so that a pipeline can skip the record and
count it under its reason instead of crashing or training on garbage.

A raw record is a dict with "image" (encoded file bytes, or an already
decoded uint8 array as the built-in synthetic scenes give), caption fields
(str, UTF-8 bytes, or a list of them: one is sampled per use), and optionally
"key" (names the record in messages) and "error" (a reason set by a source
that could not parse the record at all).
"""

import io
import warnings

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

REASONS = (
    "unreadable_record",  # a source could not parse the record (bad JSON, bad framing)
    "missing_image",  # no image field
    "empty_image",  # zero bytes
    "unreadable_image",  # not an image, truncated, or corrupt
    "image_too_small",  # a side below `min_side`
    "image_too_large",  # more than `max_pixels` pixels (or a decompression bomb)
    "bad_aspect_ratio",  # long side / short side above `max_aspect_ratio`
    "missing_caption",  # no such caption field, or None
    "empty_caption",  # only whitespace
    "caption_not_utf8",  # bytes that are not UTF-8 (or lone surrogates)
)

MIN_SIDE = 8
MAX_PIXELS = 64 * 2**20  # 67 megapixels: larger is a decompression bomb, not a photo
MAX_ASPECT_RATIO = 20.0


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason, detail="", key=None):
        if reason not in REASONS:
            raise ValueError(f"Unknown bad-record reason {reason!r}; expected one of {REASONS}.")
        self.reason, self.detail, self.key = reason, detail, key
        where = f"record {key!r}: " if key is not None else ""
        super().__init__(f"{where}{reason}" + (f" ({detail})" if detail else ""))


def decode_image(data, key=None, min_side=MIN_SIDE, max_pixels=MAX_PIXELS,
                 max_aspect_ratio=MAX_ASPECT_RATIO):
    """Encoded bytes (JPEG, PNG, WebP, ... anything Pillow reads) or an array
    -> uint8 (H, W, 3) RGB. Palette, grayscale, 16-bit, CMYK images become
    RGB; transparent pixels are composited over white."""
    if data is None:
        raise BadRecord("missing_image", key=key)
    if isinstance(data, np.ndarray):
        return _check_array(data, key, min_side, max_pixels, max_aspect_ratio)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadRecord("unreadable_image", f"expected bytes, got {type(data).__name__}", key)
    if len(data) == 0:
        raise BadRecord("empty_image", "zero bytes", key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.width, image.height, key, min_side, max_pixels, max_aspect_ratio)
            image.load()
            return np.asarray(to_rgb(image), dtype=np.uint8)
    except BadRecord:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadRecord("image_too_large", str(error), key) from None
    except UnidentifiedImageError:
        raise BadRecord("unreadable_image", "not a format Pillow reads", key) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise BadRecord("unreadable_image", str(error) or type(error).__name__, key) from None


def to_rgb(image):
    """A loaded PIL image of any mode -> an RGB PIL image."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: keep the top 8 bits of 16 (convert("L") clips).
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa") or (image.mode != "RGBA" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def _check_size(width, height, key, min_side, max_pixels, max_aspect_ratio):
    if min(width, height) < min_side:
        raise BadRecord("image_too_small", f"{width}x{height}, expected sides >= {min_side}", key)
    if width * height > max_pixels:
        raise BadRecord("image_too_large", f"{width}x{height}, expected <= {max_pixels} pixels", key)
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise BadRecord("bad_aspect_ratio", f"{width}x{height}, expected <= {max_aspect_ratio}:1", key)


def _check_array(array, key, min_side, max_pixels, max_aspect_ratio):
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise BadRecord("unreadable_image", f"array {array.shape} {array.dtype}, expected "
                        "uint8 (H, W, 3)", key)
    _check_size(array.shape[1], array.shape[0], key, min_side, max_pixels, max_aspect_ratio)
    return array


def decode_caption(value, key=None, field="caption", rng=None):
    """A caption field's value -> a stripped, non-empty str. A list (several
    captions for one image) gives one of them, drawn with `rng` (a NumPy
    Generator; the first one when None)."""
    if isinstance(value, (list, tuple)):
        value = [v for v in value if v is not None]
        if not value:
            raise BadRecord("missing_caption", f"field {field!r} is an empty list", key)
        value = value[0 if rng is None else int(rng.integers(len(value)))]
    if value is None:
        raise BadRecord("missing_caption", f"field {field!r} is null", key)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise BadRecord("caption_not_utf8", f"field {field!r}: {error}", key) from None
    if not isinstance(value, str):
        raise BadRecord("missing_caption", f"field {field!r} is a {type(value).__name__}, "
                        "expected text", key)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates, e.g. from JSON "\udc80"
        raise BadRecord("caption_not_utf8", f"field {field!r}: {error}", key) from None
    value = value.strip()
    if not value:
        raise BadRecord("empty_caption", f"field {field!r}", key)
    return value


def record_caption(record, field, rng=None):
    """The caption of `record` in `field` (see `decode_caption`), or
    BadRecord("missing_caption") naming the fields the record has."""
    key = record.get("key")
    if field not in record:
        fields = sorted(k for k in record if k not in ("image", "key"))
        raise BadRecord("missing_caption", f"no field {field!r}; it has {fields}", key)
    return decode_caption(record[field], key, field, rng)


def check_record(record, caption_field, rng=None, **image_limits):
    """A raw record -> (uint8 RGB image, caption str), or BadRecord."""
    key = record.get("key")
    if record.get("error"):
        raise BadRecord(record["error"], record.get("detail", ""), key)
    caption = record_caption(record, caption_field, rng)
    if "image" not in record:
        raise BadRecord("missing_image", key=key)
    return decode_image(record["image"], key, **image_limits), caption
