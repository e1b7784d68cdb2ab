"""OpenVision2Backbone -> open_clip state dict + open_clip_config.json.

Gives Keras-trained encoders back to PyTorch users in the authors' format:
the `visual.*` keys of an open_clip `VisionTransformer` built with the
OpenVision options, the fixed sin-cos table written into
`visual.positional_embedding` (as the authors' exports do), and a config that
open_clip's `_build_vision_tower` (or the authors'
`create_vision_encoder_and_transforms`) reads. An encoder without a v1 head
gets the identity as `visual.proj`, so open_clip's projected output is the
pooled feature and converting back gives no head again.
"""

import json
from pathlib import Path

import numpy as np
from keras import ops

from keras_ov2.convert.reading import OPEN_CLIP_CONFIG
from keras_ov2.convert.reading import OPEN_CLIP_WEIGHTS
from keras_ov2.layers import sincos_2d_table
from keras_ov2.layers.image_normalization import IMAGENET_MEAN
from keras_ov2.layers.image_normalization import IMAGENET_STD


def mlp_ratio(width, intermediate):
    """A ratio r with int(width * r) == intermediate, as open_clip computes it
    (4304 / 1152 alone can round down to 4303)."""
    ratio = intermediate / width
    while int(width * ratio) < intermediate:
        ratio = np.nextafter(ratio, np.inf)
    return float(ratio)


def open_clip_config(backbone, image_size):
    width = backbone.hidden_dim
    return {
        "model_cfg": {
            "embed_dim": backbone.projection_dim or width,
            "vision_cfg": {
                "image_size": image_size,
                "layers": backbone.num_layers,
                "width": width,
                "patch_size": backbone.patch_size,
                "head_width": width // backbone.num_heads,
                "mlp_ratio": mlp_ratio(width, backbone.intermediate_dim),
                "no_ln_pre": True,
                "pool_type": "avg",
                "final_ln_after_pool": True,
                "norm_kwargs": {"eps": backbone.layer_norm_epsilon},
            },
        },
        "preprocess_cfg": {
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "interpolation": "bilinear",
            "resize_mode": "squash",
        },
    }


def numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable.value), dtype="float32")


def position_table(grid, dim):
    table = ops.convert_to_numpy(sincos_2d_table(grid, grid, dim))
    return np.concatenate([np.zeros((1, dim), "float32"), table]).astype("float32")


def to_open_clip(backbone, image_size=224):
    """(state dict `{"visual.…": float32 array}`, open_clip config dict)."""
    dim = backbone.hidden_dim
    state = {
        "conv1.weight": numpy(backbone.patch_embedding.kernel).transpose(3, 2, 0, 1),
        "class_embedding": numpy(backbone.class_token.token).reshape(dim),
        "positional_embedding": position_table(image_size // backbone.patch_size, dim),
    }
    for i, block in enumerate(backbone.transformer_layers):
        b = f"transformer.resblocks.{i}."
        attention = block.attention
        dense = (attention.query, attention.key, attention.value)
        state[b + "attn.in_proj_weight"] = np.concatenate([numpy(d.kernel).T for d in dense])
        state[b + "attn.in_proj_bias"] = np.concatenate([numpy(d.bias) for d in dense])
        for name, layer in (("ln_1", block.attention_norm), ("ln_2", block.mlp_norm)):
            state[f"{b}{name}.weight"] = numpy(layer.gamma)
            state[f"{b}{name}.bias"] = numpy(layer.beta)
        for name, layer in (("attn.out_proj", attention.output_dense),
                            ("mlp.c_fc", block.mlp_intermediate),
                            ("mlp.c_proj", block.mlp_output)):
            state[f"{b}{name}.weight"] = numpy(layer.kernel).T
            state[f"{b}{name}.bias"] = numpy(layer.bias)
    state["ln_post.weight"] = numpy(backbone.encoder_norm.gamma)
    state["ln_post.bias"] = numpy(backbone.encoder_norm.beta)
    head = backbone.head
    state["proj"] = np.eye(dim, dtype="float32") if head is None else numpy(head.kernel)
    state = {f"visual.{k}": np.ascontiguousarray(v) for k, v in state.items()}
    return state, open_clip_config(backbone, image_size)


def save_open_clip(backbone, folder, image_size=224, safetensors=False):
    """Writes open_clip_config.json and open_clip_pytorch_model.bin (or, with
    `safetensors=True`, open_clip_model.safetensors) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, config = to_open_clip(backbone, image_size)
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2))
    if safetensors:
        from safetensors.numpy import save_file

        path = folder / OPEN_CLIP_WEIGHTS[0]
        save_file(state, str(path))
    else:
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"Writing {OPEN_CLIP_WEIGHTS[1]} needs PyTorch (pip install torch); "
                f"safetensors=True (ov2 convert --to open_clip --safetensors) writes "
                f"{OPEN_CLIP_WEIGHTS[0]} without it, which open_clip loads too."
            ) from None
        path = folder / OPEN_CLIP_WEIGHTS[1]
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path
