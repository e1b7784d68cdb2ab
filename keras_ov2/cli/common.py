"""What several `ov2` commands share: the input error, preset lookups, images."""

import argparse
from pathlib import Path


class CliError(Exception):
    """A problem with the user's input: reported in one line, exit status 1."""


def is_positive(text):
    return text.isdigit() and int(text) > 0


def positive_int(text):
    if not is_positive(text):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_random_weights(parser):
    parser.add_argument("--random-weights", action="store_true",
                        help="use the preset's architecture with random weights (no download)")


def read_image(path):
    """An image file -> uint8 (H, W, 3) RGB array, or a CliError naming the file."""
    import numpy as np
    from PIL import Image
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise CliError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"cannot read {path} as an image ({error})") from None


def check_preset(preset):
    """The architecture of a preset (no download for a name), or a one-line
    failure for a name or folder that does not exist."""
    from keras_ov2.models import presets

    try:
        return presets.resolve(preset, load_weights=False)
    except ValueError as error:
        raise CliError(str(error)) from None


def resolve(preset, random_weights=False):
    """A preset name, folder or hub handle -> (what `from_preset` loads,
    load_weights). A released name is downloaded and converted on the fly,
    or refused offline with the fix; a preset without weights is refused.
    Random weights only with `--random-weights`, and then said on stdout."""
    from keras_ov2.models import presets

    try:
        folder = presets.resolve(preset, load_weights=not random_weights)
    except ValueError as error:  # unknown name, a release that does not convert
        raise CliError(str(error)) from None
    except OSError as error:  # no weights, no hub, a broken download
        raise CliError(
            f"{error} To run on random weights anyway, pass --random-weights."
        ) from None
    if random_weights:
        print(f"Using random weights (--random-weights): {preset} is not trained.", flush=True)
    return folder, not random_weights


def preset_file(preset, name):
    """A preset's JSON file (local folder or hub handle), or None."""
    from keras_hub.src.utils.preset_utils import check_file_exists
    from keras_hub.src.utils.preset_utils import load_json

    return load_json(preset, name) if check_file_exists(preset, name) else None


def preset_image_size(preset):
    """The image size a preset was trained at: its image converter, else its metadata."""
    converter = preset_file(preset, "image_converter.json")
    if converter and converter["config"].get("image_size"):
        return int(converter["config"]["image_size"][0])
    metadata = preset_file(preset, "metadata.json")
    return metadata and metadata.get("image_size")


def is_captioner(preset):
    return preset_file(preset, "task.json") is not None
