"""The preset folders shipped with keras_ov2: listing, lookup, clear errors."""

import difflib
import json
from pathlib import Path

from keras_hub.src.utils.preset_utils import register_presets

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
WEIGHT_FILES = ("model.weights.h5", "model.weights.json")


def list_presets():
    """Maps every shipped preset name to its metadata (sorted by name)."""
    found = {}
    for config in sorted(PRESETS_DIR.glob("*/config.json")):
        folder = config.parent
        found[folder.name] = json.loads((folder / "metadata.json").read_text())
    return found


def has_weights(folder):
    return any((Path(folder) / name).exists() for name in WEIGHT_FILES)


def resolve(preset, load_weights=True):
    """Turns a preset name or folder into a path KerasHub can load.

    An `hf://` handle of an open_clip release is converted (and cached) by
    `keras_ov2.convert`; other hub handles pass through unchanged. A released
    preset without weights stands for its cached conversion if there is one;
    else, when weights are asked for, it raises an error that says how to
    get them. `preset` may be a `str` or a `pathlib.Path`.
    """
    preset = str(preset)
    if preset.startswith("hf://"):
        from keras_ov2.convert.to_preset import resolve_handle

        return resolve_handle(preset)
    if "://" in preset:
        return preset
    folder = PRESETS_DIR / preset
    if not (folder / "config.json").exists():
        folder = Path(preset)
    if not (folder / "config.json").exists():
        names = list(list_presets())
        close = difflib.get_close_matches(preset, names, n=5, cutoff=0.6)
        hint = (
            f" Close matches: {', '.join(close)}."
            if close
            else " See keras_ov2.list_presets() for the names."
        )
        raise ValueError(
            f"Unknown preset {preset!r}: it is neither a keras_ov2 preset "
            f"name nor a folder holding a config.json.{hint}"
        )
    metadata = folder / "metadata.json"
    source = metadata.exists() and json.loads(metadata.read_text()).get("source")
    if source and not has_weights(folder):
        from keras_ov2.convert.hub import converted_folder

        if has_weights(converted_folder(source)):
            return str(converted_folder(source))
    if load_weights and not has_weights(folder):
        origin = (
            f" Its weights are the released checkpoint {source}: load that "
            "handle to convert it on the fly, or download its files and run "
            f"`ov2 convert FOLDER --preset {folder.name}`,"
            if source
            else " It is a configuration to pretrain from (see `ov2 pretrain`):"
        )
        raise FileNotFoundError(
            f"Preset {preset!r} has no weights in {folder} (no "
            f"{' or '.join(WEIGHT_FILES)}).{origin} or pass "
            "load_weights=False to build this architecture with random "
            "weights."
        )
    return str(folder)


def register(backbone_cls):
    """Makes the shipped presets visible as `backbone_cls.presets` and to
    `keras_hub.models.Backbone.from_preset(name)`."""
    register_presets(
        {
            name: {"metadata": metadata, "kaggle_handle": str(PRESETS_DIR / name)}
            for name, metadata in list_presets().items()
        },
        backbone_cls,
    )
