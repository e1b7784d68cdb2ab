"""A task's dtype policy travels with its backbone: through `from_preset`
and through the task's config."""

from keras_hub.src.utils.preset_utils import CONFIG_FILE
from keras_hub.src.utils.preset_utils import load_json


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


def follow_backbone_dtype(config, layer):
    """A text tower's serialized `layer` in the policy of the task `config`'s
    backbone: `from_preset(dtype=...)` sets the backbone's policy only (the
    towers' float32 parts, e.g. the vocabulary head, stay float32)."""
    if not isinstance(config["backbone"], dict):
        return layer
    dtype = config["backbone"]["config"]["dtype"]
    return {**layer, "config": {**layer["config"], "dtype": dtype}}
