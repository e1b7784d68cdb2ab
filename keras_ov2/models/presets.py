"""The preset folders shipped with keras_ov2: listing, lookup, clear errors."""

import difflib
import json
from collections.abc import Mapping
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


def shipped_folder(preset):
    """The package's folder of a preset name, else the folder `preset` names."""
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
    return folder


def release_of(folder):
    """The released checkpoint (hf://...) a preset folder stands for, or None."""
    metadata = Path(folder) / "metadata.json"
    return metadata.exists() and json.loads(metadata.read_text()).get("source") or None


def resolve(preset, load_weights=True):
    """Turns a preset name or folder into a path KerasHub can load.

    An `hf://` handle of an open_clip release is converted (and cached) by
    `keras_ov2.convert`; other hub handles pass through to KerasHub. A
    released preset stands for its cached conversion; when there is none and
    weights are asked for, the release is downloaded and converted now (or,
    offline, the error says how to do it by hand). With `load_weights=False`
    a released name never touches the network: its architecture ships here.
    `preset` may be a `str` or a `pathlib.Path`.
    """
    preset = str(preset)
    if preset.startswith("hf://"):
        from keras_ov2.convert.to_preset import resolve_handle

        return resolve_handle(preset)
    if "://" in preset:
        return preset
    folder = shipped_folder(preset)
    source = release_of(folder)
    if source and not has_weights(folder):
        from keras_ov2.convert.hub import converted_folder

        if has_weights(converted_folder(source)):
            return str(converted_folder(source))
        if load_weights:
            from keras_ov2.convert.to_preset import convert_to_preset

            return str(convert_to_preset(source))
    if load_weights and not has_weights(folder):
        raise FileNotFoundError(
            f"Preset {preset!r} has no weights in {folder} (no "
            f"{' or '.join(WEIGHT_FILES)}). It is a configuration to pretrain "
            "from (see `ov2 pretrain`): pass load_weights=False to build this "
            "architecture with random weights."
        )
    return str(folder)


class KerasHubEntry(Mapping):
    """A preset as KerasHub's registry holds it. KerasHub reads
    `["kaggle_handle"]` each time it opens a built-in name's files, so
    computing it then makes `keras_hub.models.Backbone.from_preset(name)`
    load the converted weights (converting them first when needed)."""

    def __init__(self, name, metadata):
        self.name = name
        self.metadata = metadata

    def __getitem__(self, key):
        if key == "metadata":
            return self.metadata
        if key == "kaggle_handle":
            released = bool(self.metadata.get("source"))
            return resolve(self.name, load_weights=released)
        raise KeyError(key)

    def __iter__(self):
        return iter(("metadata", "kaggle_handle"))

    def __len__(self):
        return 2

    def __repr__(self):
        return f"KerasHubEntry({self.name!r})"


def register(backbone_cls):
    """Makes the shipped presets visible as `backbone_cls.presets` and to
    `keras_hub.models.Backbone.from_preset(name)`."""
    register_presets(
        {
            name: KerasHubEntry(name, metadata)
            for name, metadata in list_presets().items()
        },
        backbone_cls,
    )
