"""Released OpenVision / OpenVision 2 checkpoints <-> keras_ov2.

- `load_open_clip` / `backbone_from_open_clip`: the authors' PyTorch
  open_clip releases -> `OpenVision2Backbone`.
- `load_jax_params` / `from_jax_params`: the authors' JAX parameter trees
  (`.npz`) -> backbone and, when present, the OpenVision 2 caption decoder.
- `to_open_clip` / `save_open_clip`: a Keras backbone -> open_clip files.
- `convert_to_preset`: any of these sources -> a preset folder
  (`ov2 convert`); `source_for_preset` / `preset_for_source` map released
  preset names to checkpoint ids.
"""

from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.convert.export import save_open_clip
from keras_ov2.convert.export import to_open_clip
from keras_ov2.convert.hub import HubUnavailableError
from keras_ov2.convert.jax_params import from_jax_params
from keras_ov2.convert.jax_params import load_jax_params
from keras_ov2.convert.open_clip import backbone_from_open_clip
from keras_ov2.convert.open_clip import load_open_clip
from keras_ov2.convert.to_preset import convert_to_preset
from keras_ov2.convert.to_preset import preset_for_source
from keras_ov2.convert.to_preset import source_for_preset
