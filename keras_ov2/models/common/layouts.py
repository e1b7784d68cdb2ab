"""Layout maps for `keras.distribution`, KerasHub-style: regexes over
variable paths, each mapped to the mesh axes of its variable's dimensions.

Which dimension an axis splits follows the variable's role, not its size:

- column-parallel Dense kernels `(in, out)` (q/k/v, MLP intermediate, the
  heads: the decoders' vocabulary heads and the v1 projection heads) split
  `out` over the model axis and `in` over the data axis;
- row-parallel Dense kernels (attention output, MLP output) split `in` over
  the model axis and `out` over the data axis, so a block needs one
  reduction per half (Megatron);
- token embeddings `(vocabulary, width)` split the vocabulary over the model
  axis and the width over the data axis (KerasHub's Gemma convention);
- input projections (the patch embedding, the decoders' visual, image and
  text projections) split only their output width, over the data axis.

Biases, norms, position tables, the CLS token and learned queries are
replicated (they match no pattern).

Modes:

- `"data"`: every variable replicated; only the batch is split.
- `"fsdp"`: the data-axis dimensions above are split, so parameters,
  gradients and optimizer state are spread over the data-parallel devices
  and XLA gathers them for the compute (FSDP / ZeRO-3); when the mesh has
  the model axis too, its dimensions are split as well (2-D sharding).
- `"tensor"`: only the model-axis dimensions are split (Megatron-style).

A split dimension must divide its mesh axis; the map cannot check that (it
knows no shapes), so `keras_ov2.distribution.CheckedModelParallel` does, as
Keras creates each variable.
"""

import keras

DATA = "data"
MODEL = "model"
MODES = ("data", "fsdp", "tensor")

# A role: what each dimension of the variable is split over, if anything.
COLUMN = (DATA, MODEL)
ROW = (MODEL, DATA)
EMBEDDING = (MODEL, DATA)
INPUT_PROJECTION = (None, DATA)
PATCH_EMBEDDING = (None, None, None, DATA)

ANY_PREFIX = r"(?:.+/)?"  # a nested layer's path starts with its name
BLOCK = ANY_PREFIX + r"transformer_layer_\d+/"
TRANSFORMER = {
    BLOCK + "attention/(?:query|key|value)/kernel": COLUMN,
    BLOCK + "attention/output/kernel": ROW,
    BLOCK + "mlp_intermediate/kernel": COLUMN,
    BLOCK + "mlp_output/kernel": ROW,
}
HEAD = {ANY_PREFIX + "head/kernel": COLUMN}
TOKEN_EMBEDDING = {ANY_PREFIX + "token_embedding/embeddings": EMBEDDING}

# The patterns of each model. They can be merged: a key shared by two
# models (the blocks, the head) gives the same role in both.
BACKBONE = {
    ANY_PREFIX + "patch_embedding/kernel": PATCH_EMBEDDING,
    **TRANSFORMER,
    **HEAD,
}
TEXT_DECODER = {
    **TOKEN_EMBEDDING,
    ANY_PREFIX + "visual_projection/kernel": INPUT_PROJECTION,
    **TRANSFORMER,
    **HEAD,
}
CAPTIONER = {**BACKBONE, **TEXT_DECODER}
V1_TEXT_ENCODER = {**TOKEN_EMBEDDING, **TRANSFORMER, **HEAD}
V1_CAPTION_DECODER = {
    ANY_PREFIX + "(?:image|text)_projection/kernel": INPUT_PROJECTION,
    **TRANSFORMER,
    **HEAD,
}
CLIPS = {**BACKBONE, **V1_TEXT_ENCODER, **V1_CAPTION_DECODER}


def layout_map_method(roles):
    """The `get_layout_map` staticmethod of a model whose variables
    `roles` (one of the dicts above) lays out."""

    def get_layout_map(
        device_mesh,
        model_parallel_dim_name="model",
        data_parallel_dim_name="batch",
        mode="fsdp",
    ):
        """A `keras.distribution.LayoutMap` of this model's kernels and
        embeddings, KerasHub's way: regexes over variable paths, no config.

        Use it with `keras.distribution.ModelParallel(layout_map=...,
        batch_dim_name=data_parallel_dim_name)` (or
        `keras_ov2.distribution.CheckedModelParallel`, which names a
        variable whose split dimension does not divide its mesh axis) and
        build the model inside the distribution's scope.

        Args:
            device_mesh: a `keras.distribution.DeviceMesh`.
            model_parallel_dim_name: the mesh axis of tensor parallelism;
                "fsdp" uses it when the mesh has it.
            data_parallel_dim_name: the mesh axis of the batch, which
                "fsdp" also splits the weights over.
            mode: "fsdp" (default), "tensor" or "data"; see
                `keras_ov2.models.common.layouts`.
        """
        return make_layout_map(
            roles, device_mesh, model_parallel_dim_name, data_parallel_dim_name, mode
        )

    return staticmethod(get_layout_map)


def make_layout_map(
    roles, device_mesh, model_parallel_dim_name, data_parallel_dim_name, mode
):
    """A `keras.distribution.LayoutMap` giving each pattern of `roles` the
    axes its role and `mode` split (see the module docstring). The model
    axis may be absent from the mesh in "fsdp" (1-D FSDP), the data axis in
    "tensor"."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    names = tuple(device_mesh.axis_names)
    needed = {"fsdp": data_parallel_dim_name, "tensor": model_parallel_dim_name}.get(mode)
    if needed is not None and needed not in names:
        raise ValueError(
            f"mode {mode!r} needs a {needed!r} axis in the device mesh; its "
            f"axes are {names}."
        )
    axes = {
        MODEL: model_parallel_dim_name if mode != "data" and model_parallel_dim_name in names
        else None,
        DATA: data_parallel_dim_name if mode == "fsdp" else None,
    }
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, role in roles.items():
        layout_map[pattern] = tuple(axes.get(kind) for kind in role)
    return layout_map
