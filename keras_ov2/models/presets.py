"""Preset loading, in one place: the shipped preset folders, the cache of
converted releases, the task configs, and the `from_preset` every keras_ov2
model shares.

Converting a released checkpoint is a plug-in: the package registers
`keras_ov2.convert` under the entry-point group `keras_ov2.converters`, and
this module calls it only when a released preset has no cached conversion.
The models never import the converters.
"""

import difflib
import json
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE
from keras_hub.src.utils.preset_utils import check_file_exists
from keras_hub.src.utils.preset_utils import load_json
from keras_hub.src.utils.preset_utils import register_presets

from keras_ov2.preset_table import PRESETS_DIR

WEIGHT_FILES = ("model.weights.h5", "model.weights.json")
HUB_SCHEME = "hf://"
CONVERTERS = "keras_ov2.converters"  # entry-point group: source -> folder, or None


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


def is_handle(preset):
    """Whether `preset` is a hub handle (hf://, kaggle://, ...), not a name or folder."""
    return "://" in str(preset)


def repo_id(handle):
    """"hf://owner/name" (or "owner/name") -> "owner/name"."""
    return handle.removeprefix(HUB_SCHEME).strip("/")


def cache_root():
    """$KERAS_OV2_CACHE, else ~/.cache/keras_ov2 (or under $XDG_CACHE_HOME)."""
    if os.environ.get("KERAS_OV2_CACHE"):
        return Path(os.environ["KERAS_OV2_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keras_ov2"


def converted_folder(source):
    """The preset folder a conversion of `source` (hf id) is cached in."""
    return cache_root() / "converted" / repo_id(source).replace("/", "--")


def convert_release(source):
    """Runs the installed converter on `source` (a released preset name or an
    hf:// handle): the converted preset folder, or None for a handle that is
    no open_clip release."""
    found = list(entry_points(group=CONVERTERS))
    if not found:
        raise RuntimeError(
            f"Cannot convert {source}: no converter is installed (entry-point group "
            f"{CONVERTERS!r}). keras_ov2 registers one when installed with pip; "
            "reinstall it (`pip install keras_ov2`, or `pip install -e .` in a checkout)."
        )
    return found[0].load()(source)


def resolve(preset, load_weights=True):
    """Turns a preset name or folder into a path KerasHub can load.

    An `hf://` handle of an open_clip release is converted (and cached);
    other hub handles pass through to KerasHub. A released preset stands for
    its cached conversion; when there is none and weights are asked for, the
    release is downloaded and converted now (or, offline, the error says how
    to do it by hand). With `load_weights=False` a released name never
    touches the network: its architecture ships here. `preset` may be a
    `str` or a `pathlib.Path`.
    """
    preset = str(preset)
    if preset.startswith(HUB_SCHEME):
        return convert_release(preset) or preset
    if is_handle(preset):
        return preset
    folder = shipped_folder(preset)
    source = release_of(folder)
    if source and not has_weights(folder):
        if has_weights(converted_folder(source)):
            return str(converted_folder(source))
        if load_weights:
            return str(convert_release(source))
    if load_weights and not has_weights(folder):
        raise FileNotFoundError(
            f"Preset {preset!r} has no weights in {folder} (no "
            f"{' or '.join(WEIGHT_FILES)}). It is a configuration to pretrain "
            "from (see `ov2 pretrain`): pass load_weights=False to build this "
            "architecture with random weights."
        )
    return str(folder)


def task_config(preset):
    """The serialized model a preset holds: its task (task.json) when it has
    one, else its backbone. Lays out a model before it exists (see
    `keras_ov2.distribution.make_distribution`)."""
    preset = resolve(preset, load_weights=False)
    if check_file_exists(preset, TASK_CONFIG_FILE):
        return load_json(preset, TASK_CONFIG_FILE)
    return load_json(preset, CONFIG_FILE)


def with_saved_mixed_policy(preset, kwargs):
    """`from_preset` kwargs that reload a preset saved in mixed precision in
    its own policy: KerasHub would load the global policy (a backbone) or
    fail on "mixed_bfloat16" (a task). An explicit `dtype` wins."""
    if kwargs.get("dtype") is not None:
        return kwargs
    saved = load_json(preset, CONFIG_FILE)["config"].get("dtype")
    name = saved.get("config", {}).get("name", "") if isinstance(saved, dict) else ""
    if name.startswith("mixed_"):
        return {**kwargs, "dtype": name}
    return kwargs


class PresetLoading:
    """Mixed into keras_ov2's backbone and tasks, before KerasHub's class."""

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads a preset by name (see `keras_ov2.list_presets()`), by folder
        path, or by hub handle. A released preset ships its architecture;
        its weights come from converting the released checkpoint (cached),
        and offline `load_weights=True` raises an error that says how. A
        preset saved in mixed precision reloads in its own policy.
        """
        preset = resolve(preset, load_weights)
        kwargs = with_saved_mixed_policy(preset, kwargs)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)


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
