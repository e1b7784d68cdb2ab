"""Layout maps for `keras.distribution`: which mesh axis splits which
dimension of each large kernel and embedding of the encoder and decoder.

Modes (mesh axes are named "data" and "model"):

- `"data"`: every variable replicated; only the batch is split
  (`keras.distribution.DataParallel`).
- `"fsdp"`: each kernel and embedding is split over "data" on its largest
  dimension that the axis divides (the first of equal ones), so parameters,
  gradients and optimizer state are spread over the data-parallel devices
  and XLA gathers them for the compute (FSDP / ZeRO-3). A variable with no
  such dimension stays replicated, with a warning. On a mesh whose "model"
  axis is larger than 1, the tensor-parallel dimensions below are split over
  "model" first (2-D sharding).
- `"tensor"`: Megatron-style over "model": q/k/v and MLP-intermediate
  kernels on their output dimension, attention-output and MLP-output kernels
  on their input dimension (so a block needs one reduction per half), the
  decoder's token embedding and vocabulary head on the vocabulary. The patch
  embedding, visual projection and the v1 head are small and stay replicated.
  Dimensions and attention heads must divide the axis.

Biases, norms and the CLS token are always replicated. Shapes come from the
model's config, not from a built model: Keras lays a variable out when it
creates it, so the map must exist before the model does.
"""

import dataclasses
import re
import warnings

import keras

DATA = "data"
MODEL = "model"
MODES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class Shardable:
    """A variable that may be split. `path` as in `variable.path`, with `*`
    for a layer index; `None` in `shape` is a size the config does not give
    (never split); `tensor_dim` is split over "model"; `num_heads` are laid
    along `tensor_dim` and must divide the axis too."""

    path: str
    shape: tuple
    tensor_dim: int | None = None
    num_heads: int | None = None

    @property
    def pattern(self):
        return re.escape(self.path).replace(r"\*", r"\d+")


def transformer_variables(prefix, hidden_dim, intermediate_dim, num_heads):
    """The kernels of every `TransformerBlock` under `prefix`."""
    d, i, block = hidden_dim, intermediate_dim, f"{prefix}transformer_layer_*/"
    return [
        *(
            Shardable(f"{block}attention/{name}/kernel", (d, d), 1, num_heads)
            for name in ("query", "key", "value")
        ),
        Shardable(f"{block}attention/output/kernel", (d, d), 0, num_heads),
        Shardable(f"{block}mlp_intermediate/kernel", (d, i), 1),
        Shardable(f"{block}mlp_output/kernel", (i, d), 0),
    ]


def backbone_variables(config):
    """`config`: `OpenVision2Backbone.get_config()`. Its variable paths have
    no prefix, alone or inside a captioner."""
    d, patch = config["hidden_dim"], config["patch_size"]
    variables = [
        Shardable("patch_embedding/kernel", (patch, patch, 3, d)),
        *transformer_variables("", d, config["intermediate_dim"], config["num_heads"]),
    ]
    if config.get("projection_dim"):
        variables.append(Shardable("head/kernel", (d, config["projection_dim"])))
    return variables


def decoder_variables(config, visual_dim=None):
    """`config`: `OpenVision2TextDecoder.get_config()`; its paths start with
    the decoder's name. `visual_dim`: width of the visual tokens (the
    encoder's `hidden_dim`), which only a built decoder knows."""
    prefix, d = f"{config['name']}/", config["hidden_dim"]
    vocabulary = config["vocabulary_size"]
    return [
        Shardable(f"{prefix}token_embedding/embeddings", (vocabulary, d), 0),
        Shardable(f"{prefix}visual_projection/kernel", (visual_dim, d)),
        *transformer_variables(prefix, d, config["intermediate_dim"], config["num_heads"]),
        Shardable(f"{prefix}head/kernel", (d, vocabulary), 1),
    ]


def captioner_variables(config):
    """`config`: `OpenVision2Captioner.get_config()` (encoder and decoder
    serialized inside it, as in a preset's task.json)."""
    backbone = config["backbone"]["config"]
    decoder = config["decoder"]["config"]
    return backbone_variables(backbone) + decoder_variables(decoder, backbone["hidden_dim"])


def make_layout_map(device_mesh, mode, variables):
    """A `keras.distribution.LayoutMap` placing `variables` for `mode`.

    Raises a ValueError naming the variable, its shape, the dimension and
    the axis size when a dimension (or the heads) must be split over an axis
    that does not divide it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    needed = {"fsdp": DATA, "tensor": MODEL}.get(mode)
    if needed and needed not in sizes:
        raise ValueError(
            f"mode {mode!r} needs a {needed!r} axis in the device mesh; its "
            f"axes are {tuple(device_mesh.axis_names)}."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for variable in variables:
        layout_map[variable.pattern] = variable_axes(variable, mode, sizes)
    return layout_map


def variable_axes(variable, mode, sizes):
    """The mesh axis (or None) for each dimension of `variable`."""
    shape, axes = variable.shape, [None] * len(variable.shape)
    model = sizes.get(MODEL, 1)
    if mode != "data" and variable.tensor_dim is not None and model > 1:
        check_divides(variable, variable.tensor_dim, model)
        axes[variable.tensor_dim] = MODEL
    if mode == "fsdp":
        data = sizes[DATA]
        dims = [i for i, size in enumerate(shape)
                if axes[i] is None and size and size % data == 0]
        if dims:
            axes[max(dims, key=lambda i: shape[i])] = DATA
        else:
            warnings.warn(
                f"fsdp: {variable.path} of shape {shape} stays replicated: no "
                f"dimension is divisible by the {data}-way {DATA!r} axis.",
                stacklevel=3,
            )
    return tuple(axes)


def check_divides(variable, dim, axis_size):
    where = (
        f"Cannot split {variable.path} of shape {variable.shape} over the "
        f"{axis_size}-way {MODEL!r} mesh axis"
    )
    if variable.shape[dim] % axis_size:
        raise ValueError(
            f"{where}: dimension {dim} (size {variable.shape[dim]}) is not "
            f"divisible by {axis_size}."
        )
    if variable.num_heads and variable.num_heads % axis_size:
        raise ValueError(
            f"{where}: its num_heads={variable.num_heads} attention heads "
            f"(along dimension {dim}) are not divisible by {axis_size}."
        )
