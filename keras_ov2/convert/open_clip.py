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

import ml_dtypes
import numpy as np
from keras import ops

from keras_ov2.convert import reading
from keras_ov2.convert.checkpoint import Checkpoint
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.convert.checkpoint import read_array
from keras_ov2.layers import sincos_2d_table
from keras_ov2.layers.image_normalization import IMAGENET_MEAN
from keras_ov2.layers.image_normalization import IMAGENET_STD
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone

# What each vision_cfg field of the authors' open_clip fork (and of upstream
# open_clip) may hold for the network to be the OpenVision encoder. Fields
# that size the network are read by `architecture`; a field not listed here
# is refused, as open_clip itself would refuse it.
SIZING = ("layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size")
REQUIRED = {"no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True}
ALLOWED_VALUES = {
    "in_channels": (3,),
    # A learnable-type table is accepted when it holds the fixed sin-cos one
    # (checked against the weights, `check_position_table`).
    "pos_embed_type": ("learnable", "sin_cos_2d"),
    "act_kwargs": (None, {}, {"approximate": "none"}),
}
MUST_BE_OFF = (
    "ls_init_value", "attentional_pool", "block_type", "qk_norm",
    "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn",
    "scale_fc", "timm_model_name",
)
# Training-only, output-format or unused-unless-enabled fields.
NO_EFFECT = (
    "patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",
    "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias",
    "timm_drop", "timm_drop_path",
)
KNOWN_FIELDS = {*SIZING, *REQUIRED, *ALLOWED_VALUES, *MUST_BE_OFF, *NO_EFFECT, "norm_kwargs"}
# The fork builds every vision LayerNorm with eps 1e-6 whatever the config
# says; upstream open_clip honours norm_kwargs. Absent: the fork's 1e-6.
FORK_LAYER_NORM_EPSILON = 1e-6
# Keys of a whole CLIP outside `visual.`: the text tower, which keras_ov2
# does not hold (it is a vision encoder library).
TEXT_TOWER_KEYS = ("text.", "token_embedding.", "positional_embedding", "transformer.",
                   "ln_final.", "text_projection", "logit_scale", "logit_bias")
# Position tables of the authors' float32 exports match ours to ~1e-6, and
# a half-precision copy to its rounding (values in [-1, 1]); a learned or
# differently laid-out table is off by O(1).
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


def check_vision_fields(vision, origin):
    """Refuses any vision_cfg field whose value makes another network."""
    for field, value in vision.items():
        if field in REQUIRED and value != REQUIRED[field]:
            raise CheckpointError(
                f"{origin}: vision_cfg.{field} is {value!r}; an OpenVision "
                f"encoder has {field}={REQUIRED[field]!r}."
            )
        if field in ALLOWED_VALUES and value not in ALLOWED_VALUES[field]:
            allowed = " or ".join(repr(v) for v in ALLOWED_VALUES[field])
            raise CheckpointError(
                f"{origin}: vision_cfg.{field}={value!r} is not part of the "
                f"OpenVision encoder (expected {allowed})."
            )
        if field in MUST_BE_OFF and value:
            raise CheckpointError(
                f"{origin}: vision_cfg.{field}={value!r} is not part of the "
                "OpenVision encoder."
            )
        if field not in KNOWN_FIELDS:
            raise CheckpointError(
                f"{origin}: unknown vision_cfg field {field!r} (open_clip would "
                "refuse it too); keras_ov2 cannot tell what network it describes."
            )
    for field, value in REQUIRED.items():
        if field not in vision:
            raise CheckpointError(
                f"{origin}: vision_cfg.{field} is missing; an OpenVision encoder "
                f"has {field}={value!r}."
            )


def layer_norm_epsilon(vision, origin):
    """norm_kwargs' eps when given, else the authors' fork's 1e-6."""
    norm_kwargs = vision.get("norm_kwargs") or {}
    if set(norm_kwargs) - {"eps"}:
        raise CheckpointError(
            f"{origin}: vision_cfg.norm_kwargs={norm_kwargs!r}; only eps can be "
            "set for the OpenVision encoder's LayerNorms."
        )
    return float(norm_kwargs.get("eps", FORK_LAYER_NORM_EPSILON))


def architecture(config, origin="open_clip config"):
    """OpenVision2Backbone keyword arguments from an open_clip configuration,
    or an error naming the field that makes it a different network."""
    model_cfg = model_config(config, origin)
    vision = model_cfg["vision_cfg"]
    if model_cfg.get("quick_gelu"):
        raise CheckpointError(f"{origin}: quick_gelu is set; OpenVision uses exact GELU.")
    check_vision_fields(vision, origin)
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
        layer_norm_epsilon=layer_norm_epsilon(vision, origin),
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
    return proj is not None and not is_identity(read_array(proj))


def check_position_table(checkpoint, key, grid, dim):
    height, width = grid
    stored = checkpoint.get(key, (height * width + 1, dim))
    tolerance = max(POSITION_TOLERANCE, 2 * float(ml_dtypes.finfo(stored.dtype).eps))
    table = ops.convert_to_numpy(sincos_2d_table(height, width, dim))
    expected = np.concatenate([np.zeros((1, dim), "float32"), table])
    error = float(np.max(np.abs(stored.astype("float32") - expected)))
    if error > tolerance:
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
        for j, dense in enumerate((attention.query, attention.key, attention.value)):
            rows = slice(j * dim, (j + 1) * dim)
            checkpoint.take(dense.kernel, b + "attn.in_proj_weight", (3 * dim, dim),
                            transform=lambda w, rows=rows: w[rows].T)
            checkpoint.take(dense.bias, b + "attn.in_proj_bias", (3 * dim,),
                            transform=lambda w, rows=rows: w[rows])
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
