"""The authors' JAX parameter trees -> OpenVision2Backbone (+ OV2 decoder).

The tree is the documented Flax layout (reference §5.3): the encoder under
`img_encoder/` (OpenVision 2) or `img/` (v1), the OpenVision 2 caption
decoder under `txt_decoder/`. Keras variables were laid out after it, so
kernels map one to one; attention kernels may also come in the 3-D
DenseGeneral form (D, heads, head_dim), which is reshaped.

Files: a flat `.npz` (`np.savez(f, **flax.traverse_util.flatten_dict(params,
sep="/"))`). Orbax directories are not read: `orbax-checkpoint` is not a
dependency; `read_params` says how to turn one into an `.npz`.
"""

from pathlib import Path
from typing import NamedTuple

from keras_ov2 import variants
from keras_ov2.convert import reading
from keras_ov2.convert.checkpoint import Checkpoint
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.models.common.openvision_backbone import OpenVision2Backbone
from keras_ov2.models.openvision2.openvision2_text_decoder import OpenVision2TextDecoder

ENCODER_PREFIXES = ("img_encoder/", "img/")
DECODER_PREFIX = "txt_decoder/"
# Parts of a training state that hold no encoder or OV2 decoder weights.
NOT_LOADED = {
    "opt/": "optimizer state",
    "txt/": "OpenVision v1 text encoder",
    "t": "OpenVision v1 temperature",
}
VIT_HEADS = variants.heads_by_width(variants.ENCODERS)
DECODER_HEADS = variants.heads_by_width(variants.DECODERS)
ORBAX_HINT = (
    "It looks like an Orbax checkpoint directory; keras_ov2 reads JAX "
    "parameters from a flat .npz (orbax-checkpoint is not a dependency). In a "
    "JAX environment with orbax-checkpoint and flax, write one with:\n"
    "  params = orbax.checkpoint.PyTreeCheckpointer().restore(PATH)['params']\n"
    "  np.savez('params.npz', **flax.traverse_util.flatten_dict(params, sep='/'))"
)


class JaxConversion(NamedTuple):
    backbone: OpenVision2Backbone
    decoder: OpenVision2TextDecoder | None
    skipped: list  # "prefix (what)" for the parts deliberately not loaded


def flatten(tree, prefix=""):
    """Nested dicts -> {"a/b/kernel": array}; flat dicts pass through."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_params(path):
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not an .npz file. {ORBAX_HINT}")
    return reading.read_npz(path)


def required(params, key, origin):
    if key not in params:
        raise CheckpointError(f"{origin}: missing key {key!r}.")
    return params[key]


def count_blocks(params, prefix):
    count = 0
    while f"{prefix}Transformer/encoderblock_{count}/LayerNorm_0/scale" in params:
        count += 1
    return count


def infer_heads(params, block, width, table, what, origin):
    """Heads from a 3-D attention kernel, else from the authors' variants."""
    query = params.get(f"{block}MultiHeadDotProductAttention_0/query/kernel")
    if query is not None and query.ndim == 3:
        return int(query.shape[1])
    if width in table:
        return table[width]
    raise CheckpointError(
        f"{origin}: cannot tell the number of heads of a {what} of width "
        f"{width} (not one of the authors' sizes); pass num_heads."
    )


def encoder_prefix(params, origin):
    for prefix in ENCODER_PREFIXES:
        if prefix + "embedding/kernel" in params:
            return prefix
    raise CheckpointError(
        f"{origin}: no encoder found: expected 'img_encoder/embedding/kernel' "
        "(OpenVision 2) or 'img/embedding/kernel' (OpenVision)."
    )


def architecture(params, origin="parameters", num_heads=None):
    """OpenVision2Backbone keyword arguments read off the parameter shapes."""
    prefix = encoder_prefix(params, origin)
    kernel = params[prefix + "embedding/kernel"]
    if kernel.ndim != 4:
        raise CheckpointError(f"{origin}: {prefix}embedding/kernel has shape {kernel.shape}; "
                              "expected (patch, patch, 3, width).")
    patch, _, _, width = kernel.shape
    depth = count_blocks(params, prefix)
    block = f"{prefix}Transformer/encoderblock_0/"
    mlp = required(params, block + "MlpBlock_0/Dense_0/kernel", origin).shape[-1]
    head = params.get(prefix + "head/kernel")
    return dict(
        patch_size=int(patch),
        hidden_dim=int(width),
        num_layers=depth,
        num_heads=num_heads or infer_heads(params, block, width, VIT_HEADS, "ViT", origin),
        intermediate_dim=int(mlp),
        projection_dim=None if head is None else int(head.shape[-1]),
    )


def schedule_block(checkpoint, block, key, dim, mlp, heads):
    """One Flax `Encoder1DBlock` -> one Keras `TransformerBlock`."""
    hd = dim // heads
    for name, norm in (("LayerNorm_0", block.attention_norm), ("LayerNorm_1", block.mlp_norm)):
        checkpoint.take(norm.gamma, f"{key}{name}/scale", (dim,))
        checkpoint.take(norm.beta, f"{key}{name}/bias", (dim,))
    attention = block.attention
    a = f"{key}MultiHeadDotProductAttention_0/"
    for name in ("query", "key", "value"):
        dense = getattr(attention, name)
        checkpoint.take(dense.kernel, f"{a}{name}/kernel", (dim, dim), (dim, heads, hd),
                        transform=lambda w: w.reshape(dim, dim))
        checkpoint.take(dense.bias, f"{a}{name}/bias", (dim,), (heads, hd),
                        transform=lambda b: b.reshape(dim))
    checkpoint.take(attention.output_dense.kernel, f"{a}out/kernel", (dim, dim), (heads, hd, dim),
                    transform=lambda w: w.reshape(dim, dim))
    checkpoint.take(attention.output_dense.bias, f"{a}out/bias", (dim,))
    for name, dense, shape in (("Dense_0", block.mlp_intermediate, (dim, mlp)),
                               ("Dense_1", block.mlp_output, (mlp, dim))):
        checkpoint.take(dense.kernel, f"{key}MlpBlock_0/{name}/kernel", shape)
        checkpoint.take(dense.bias, f"{key}MlpBlock_0/{name}/bias", (shape[1],))


def schedule_encoder(checkpoint, backbone, prefix):
    dim, patch = backbone.hidden_dim, backbone.patch_size
    checkpoint.take(backbone.patch_embedding.kernel, prefix + "embedding/kernel",
                    (patch, patch, 3, dim))
    checkpoint.take(backbone.class_token.token, prefix + "cls", (1, 1, dim))
    for i, block in enumerate(backbone.transformer_layers):
        schedule_block(checkpoint, block, f"{prefix}Transformer/encoderblock_{i}/", dim,
                       backbone.intermediate_dim, backbone.num_heads)
    checkpoint.take(backbone.encoder_norm.gamma, prefix + "encoder_norm/scale", (dim,))
    checkpoint.take(backbone.encoder_norm.beta, prefix + "encoder_norm/bias", (dim,))
    if backbone.head is not None:
        checkpoint.take(backbone.head.kernel, prefix + "head/kernel",
                        (dim, backbone.projection_dim))


def is_ov2_decoder(params):
    return DECODER_PREFIX + "Embed_0/embedding" in params


def build_decoder(params, visual_dim, origin, num_heads=None, attention_mask="causal"):
    vocabulary, width = params[DECODER_PREFIX + "Embed_0/embedding"].shape
    depth = count_blocks(params, DECODER_PREFIX)
    block = f"{DECODER_PREFIX}Transformer/encoderblock_0/"
    mlp = required(params, block + "MlpBlock_0/Dense_0/kernel", origin).shape[-1]
    heads = num_heads or infer_heads(params, block, width, DECODER_HEADS, "decoder", origin)
    decoder = OpenVision2TextDecoder(
        int(vocabulary), int(width), depth, heads, int(mlp), attention_mask=attention_mask
    )
    decoder.build((None, None, visual_dim))
    return decoder


def schedule_decoder(checkpoint, decoder, visual_dim):
    p, width = DECODER_PREFIX, decoder.hidden_dim
    checkpoint.take(decoder.token_embedding.embeddings, p + "Embed_0/embedding",
                    (decoder.vocabulary_size, width))
    checkpoint.take(decoder.visual_projection.kernel, p + "image_projection_layer/kernel",
                    (visual_dim, width))
    for i, block in enumerate(decoder.transformer_layers):
        schedule_block(checkpoint, block, f"{p}Transformer/encoderblock_{i}/", width,
                       decoder.intermediate_dim, decoder.num_heads)
    checkpoint.take(decoder.decoder_norm.gamma, p + "decoder_norm/scale", (width,))
    checkpoint.take(decoder.decoder_norm.beta, p + "decoder_norm/bias", (width,))
    checkpoint.take(decoder.head.kernel, p + "head/kernel", (width, decoder.vocabulary_size))


def skip_not_loaded(checkpoint, params):
    """Marks the parts of a training state that are not converted."""
    skipped = []
    parts = dict(NOT_LOADED)
    if not is_ov2_decoder(params):
        parts[DECODER_PREFIX] = "OpenVision v1 caption decoder"
    for prefix, what in parts.items():
        keys = [k for k in params if k == prefix or (prefix.endswith("/") and k.startswith(prefix))]
        for key in keys:
            checkpoint.skip(key)
        if keys:
            skipped.append(f"{prefix} ({what})")
    return skipped


def from_jax_params(params, origin="parameters", num_heads=None, decoder_num_heads=None,
                    attention_mask="causal", architecture_kwargs=None):
    """A JAX parameter tree (nested or flat "a/b" dict of arrays) -> a
    `JaxConversion`: the backbone, the OV2 decoder when the tree has one
    (else None), and what was deliberately not loaded.

    `architecture_kwargs` replaces the architecture read off the shapes (a
    preset's config); every shape is still checked against it.
    """
    params = flatten(params)
    params = {k.removeprefix("params/"): v for k, v in params.items()}
    checkpoint = Checkpoint(params, origin)
    arch = architecture_kwargs or architecture(params, origin, num_heads)
    backbone = OpenVision2Backbone(**arch)
    schedule_encoder(checkpoint, backbone, encoder_prefix(params, origin))
    decoder = None
    if is_ov2_decoder(params):
        decoder = build_decoder(params, backbone.hidden_dim, origin, decoder_num_heads,
                                attention_mask)
        schedule_decoder(checkpoint, decoder, backbone.hidden_dim)
    skipped = skip_not_loaded(checkpoint, params)
    checkpoint.assign_all([backbone] + ([decoder] if decoder else []))
    return JaxConversion(backbone, decoder, skipped)


def load_jax_params(path, **kwargs):
    """A `.npz` of the authors' JAX parameters -> `JaxConversion`."""
    return from_jax_params(read_params(path), origin=str(path), **kwargs)
