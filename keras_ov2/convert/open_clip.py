"""open_clip checkpoints (the authors' PyTorch releases) -> OpenVision2Backbone.

open_clip's `VisionTransformer` with the OpenVision options (no pre-LN,
average pooling, LayerNorm after pooling, eps 1e-6, bias-free conv) is the
same network as the Keras backbone; this module reads its
`open_clip_config.json` for the architecture and maps its state dict:
conv OIHW -> HWIO, Linear weights transposed, the packed q/k/v
`in_proj_weight` split. The stored position table must be the fixed sin-cos
one, which the backbone recomputes itself.
"""

from pathlib import Path

import numpy as np
from keras import ops

from keras_ov2.convert import reading
from keras_ov2.convert.checkpoint import Checkpoint
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.layers import sincos_2d_table
from keras_ov2.layers.image_normalization import IMAGENET_MEAN
from keras_ov2.layers.image_normalization import IMAGENET_STD
from keras_ov2.models.openvision2_backbone import OpenVision2Backbone

# vision_cfg fields that must hold these values for the OpenVision network.
REQUIRED = {
    "no_ln_pre": True,
    "pool_type": "avg",
    "final_ln_after_pool": True,
}
# vision_cfg fields that must stay off (their open_clip defaults).
UNSUPPORTED = (
    "timm_model_name", "ls_init_value", "attentional_pool", "act_kwargs",
    "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
    "scale_attn", "scale_fc", "block_type",
)
# Keys of a whole CLIP outside `visual.`: the text tower, which keras_ov2
# does not hold (it is a vision encoder library).
TEXT_TOWER_KEYS = ("text.", "token_embedding.", "positional_embedding", "transformer.",
                   "ln_final.", "text_projection", "logit_scale", "logit_bias")
# Position tables of the authors' float32 exports match ours to ~1e-6; a
# learned or differently laid-out table is off by O(1).
POSITION_TOLERANCE = 1e-3


def model_config(config, origin):
    """The `model_cfg` part of an open_clip_config.json (or a bare model config)."""
    model_cfg = config.get("model_cfg", config)
    if "vision_cfg" not in model_cfg:
        raise CheckpointError(f"{origin}: no vision_cfg in this open_clip configuration.")
    return model_cfg


def image_size(config, origin):
    size = model_config(config, origin)["vision_cfg"].get("image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    return int(height), int(width)


def architecture(config, origin="open_clip config"):
    """OpenVision2Backbone keyword arguments from an open_clip configuration,
    or an error naming the field that makes it a different network."""
    model_cfg = model_config(config, origin)
    vision = model_cfg["vision_cfg"]
    if model_cfg.get("quick_gelu"):
        raise CheckpointError(f"{origin}: quick_gelu is set; OpenVision uses exact GELU.")
    for field, value in REQUIRED.items():
        if vision.get(field) != value:
            raise CheckpointError(
                f"{origin}: vision_cfg.{field} is {vision.get(field)!r}; an "
                f"OpenVision encoder has {field}={value!r}."
            )
    for field in UNSUPPORTED:
        if vision.get(field):
            raise CheckpointError(
                f"{origin}: vision_cfg.{field}={vision[field]!r} is not part of "
                "the OpenVision encoder."
            )
    if not isinstance(vision.get("layers"), int):
        raise CheckpointError(f"{origin}: vision_cfg.layers must be an int (a ViT).")
    preprocess = config.get("preprocess_cfg", {})
    for field, expected in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if field in preprocess and not np.allclose(preprocess[field], expected):
            raise CheckpointError(
                f"{origin}: preprocess_cfg.{field} is {preprocess[field]}; keras_ov2 "
                f"normalises images with the ImageNet {field} {list(expected)}."
            )
    width = vision.get("width", 768)
    head_width = vision.get("head_width", 64)
    if width % head_width:
        raise CheckpointError(
            f"{origin}: width {width} is not a multiple of head_width {head_width}."
        )
    return dict(
        patch_size=vision.get("patch_size", 16),
        hidden_dim=width,
        num_layers=vision["layers"],
        num_heads=width // head_width,
        intermediate_dim=int(width * vision.get("mlp_ratio", 4.0)),
        layer_norm_epsilon=(vision.get("norm_kwargs") or {}).get("eps", 1e-5),
    )


def vision_prefix(state_dict):
    """"visual." for a whole CLIP state dict, "" for a vision-only one."""
    return "visual." if any(k.startswith("visual.") for k in state_dict) else ""


def is_identity(matrix):
    return matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(len(matrix)))


def has_head(state_dict, projection):
    """Whether to load `proj` as the v1 head. `projection=None` keeps it
    unless it is the identity (what `export` writes for a headless encoder)."""
    if projection is not None:
        return projection
    proj = state_dict.get(vision_prefix(state_dict) + "proj")
    return proj is not None and not is_identity(proj)


def check_position_table(checkpoint, key, grid, dim):
    height, width = grid
    stored = checkpoint.get(key, (height * width + 1, dim))
    table = ops.convert_to_numpy(sincos_2d_table(height, width, dim))
    expected = np.concatenate([np.zeros((1, dim), "float32"), table])
    error = float(np.max(np.abs(stored - expected)))
    if error > POSITION_TOLERANCE:
        raise CheckpointError(
            f"{checkpoint.origin}: {key!r} is not the fixed 2-D sin-cos table "
            f"(zero CLS row) of a {height}x{width} grid (max difference {error:.3g}); "
            "OpenVision2Backbone computes that table itself and cannot hold a "
            "learned or differently laid-out position embedding."
        )


def schedule(backbone, checkpoint, prefix, grid):
    """Checks every vision key and schedules its variable."""
    dim, patch = backbone.hidden_dim, backbone.patch_size
    mlp = backbone.intermediate_dim
    p = prefix

    def linear(w):
        return w.T

    checkpoint.take(backbone.patch_embedding.kernel, p + "conv1.weight",
                    (dim, 3, patch, patch), transform=lambda w: w.transpose(2, 3, 1, 0))
    checkpoint.take(backbone.class_token.token, p + "class_embedding", (dim,),
                    transform=lambda w: w.reshape(1, 1, dim))
    check_position_table(checkpoint, p + "positional_embedding", grid, dim)
    for i, block in enumerate(backbone.transformer_layers):
        b = f"{p}transformer.resblocks.{i}."
        attention = block.attention
        qkv = checkpoint.get(b + "attn.in_proj_weight", (3 * dim, dim))
        qkv_bias = checkpoint.get(b + "attn.in_proj_bias", (3 * dim,))
        for j, dense in enumerate((attention.query, attention.key, attention.value)):
            rows = slice(j * dim, (j + 1) * dim)
            checkpoint.put(dense.kernel, qkv[rows].T, b + "attn.in_proj_weight")
            checkpoint.put(dense.bias, qkv_bias[rows], b + "attn.in_proj_bias")
        layers = (
            ("ln_1", block.attention_norm, None),
            ("attn.out_proj", attention.output_dense, (dim, dim)),
            ("ln_2", block.mlp_norm, None),
            ("mlp.c_fc", block.mlp_intermediate, (mlp, dim)),
            ("mlp.c_proj", block.mlp_output, (dim, mlp)),
        )
        for name, layer, shape in layers:
            if shape is None:  # LayerNorm
                checkpoint.take(layer.gamma, f"{b}{name}.weight", (dim,))
                checkpoint.take(layer.beta, f"{b}{name}.bias", (dim,))
            else:
                checkpoint.take(layer.kernel, f"{b}{name}.weight", shape, transform=linear)
                checkpoint.take(layer.bias, f"{b}{name}.bias", (shape[0],))
    checkpoint.take(backbone.encoder_norm.gamma, p + "ln_post.weight", (dim,))
    checkpoint.take(backbone.encoder_norm.beta, p + "ln_post.bias", (dim,))
    if backbone.head is not None:
        checkpoint.take(backbone.head.kernel, p + "proj", (dim, backbone.projection_dim))
    elif p + "proj" in checkpoint:
        checkpoint.skip(p + "proj")


def skip_text_tower(checkpoint, prefix):
    """A whole CLIP's text tower is not loaded; any other key outside
    `visual.` stays unused, hence refused."""
    if prefix:
        for key in checkpoint.unused():
            if not key.startswith(prefix) and key.startswith(TEXT_TOWER_KEYS):
                checkpoint.skip(key)


def load_into(backbone, state_dict, config, origin):
    """Checks the state dict against `backbone` and assigns it, all or nothing."""
    checkpoint = Checkpoint(state_dict, origin)
    prefix = vision_prefix(state_dict)
    height, width = image_size(config, origin)
    grid = (height // backbone.patch_size, width // backbone.patch_size)
    schedule(backbone, checkpoint, prefix, grid)
    skip_text_tower(checkpoint, prefix)
    checkpoint.assign_all([backbone])


def backbone_from_open_clip(state_dict, config, projection=None, origin="state dict", **kwargs):
    """Builds and loads an `OpenVision2Backbone` from an open_clip state dict
    (`{key: numpy array}`) and its parsed open_clip_config.json.

    `projection`: keep `visual.proj` as the v1 head (`True`), drop it
    (`False`), or `None`: keep it unless it is the identity. Other keyword
    arguments go to `OpenVision2Backbone` (e.g. `dtype`).
    """
    arch = architecture(config, origin)
    if has_head(state_dict, projection):
        proj = state_dict.get(vision_prefix(state_dict) + "proj")
        if proj is None:
            raise CheckpointError(f"{origin}: projection=True, but there is no 'proj' key.")
        arch["projection_dim"] = int(proj.shape[-1])
    backbone = OpenVision2Backbone(**arch, **kwargs)
    load_into(backbone, state_dict, config, origin)
    return backbone


def load_open_clip(path, config=None, projection=None, **kwargs):
    """An open_clip release -> `OpenVision2Backbone`.

    `path`: a folder holding open_clip_config.json and
    open_clip_model.safetensors or open_clip_pytorch_model.bin, or a weights
    file (then `config` is the JSON path, default: the file's sibling
    open_clip_config.json).
    """
    path = Path(path)
    if path.is_dir():
        config_path, weights = reading.find_open_clip_files(path)
    else:
        weights = path
        config_path = Path(config) if config else path.with_name(reading.OPEN_CLIP_CONFIG)
    parsed = reading.read_json(config_path)
    state_dict = reading.read_state_dict(weights)
    return backbone_from_open_clip(
        state_dict, parsed, projection, origin=str(weights), **kwargs
    )
