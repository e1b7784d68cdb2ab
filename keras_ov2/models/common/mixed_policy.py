"""A task's dtype policy travels with its backbone through the task's config
(and through `from_preset`: see `keras_ov2.models.presets`)."""


def follow_backbone_dtype(config, layer):
    """A text tower's serialized `layer` in the policy of the task `config`'s
    backbone: `from_preset(dtype=...)` sets the backbone's policy only (the
    towers' float32 parts, e.g. the vocabulary head, stay float32)."""
    if not isinstance(config["backbone"], dict):
        return layer
    dtype = config["backbone"]["config"]["dtype"]
    return {**layer, "config": {**layer["config"], "dtype": dtype}}
