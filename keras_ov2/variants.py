"""The sizes of every OpenVision model family, one table each, the
authors' token keep ratio and the caption tokenizer's special tokens.
Everything else (the preset folders, the converters' checks, FLOP counts,
benchmarks, the models' and the recipe's defaults) reads them from here. Pure Python: importing it loads no Keras."""

from typing import NamedTuple

# OpenVision 2's token masking: the fraction of the encoder's patch tokens the
# caption decoder sees in training (the paper's 35%).
KEEP_RATIO = 0.35

# The caption tokenizer's special tokens, in the order a closed vocabulary
# (`OpenVision2Tokenizer.for_texts`, the scenes' preset) begins with them.
SPECIAL_TOKENS = ("[PAD]", "[bos]", "[eos]", "[UNK]", "[CLS]")


class Size(NamedTuple):
    """A transformer's width, depth (blocks), MLP width and attention heads."""

    width: int
    depth: int
    mlp: int
    heads: int


# The ViT encoder (both versions), by the authors' variant names.
ENCODERS = {
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "B": Size(768, 12, 3072, 12),
    "L": Size(1024, 24, 4096, 16),
    "So400m": Size(1152, 27, 4304, 16),
    "H": Size(1280, 32, 5120, 16),
    "g": Size(1408, 40, 6144, 16),
}

# OpenVision 2's caption decoder (the authors' `text_decoder_v2`).
DECODERS = {
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "M": Size(512, 12, 2048, 8),
    "B": Size(512, 12, 2048, 8),
    "L": Size(768, 12, 3072, 12),
    "H": Size(1024, 24, 4096, 16),
    "G": Size(1664, 48, 8192, 16),
}

# OpenVision v1's text towers: its text encoder and its caption decoder take
# the same sizes (`text_transformer.decode_variant`, `text_decoder.decode_variant`).
TEXT = {
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "B": Size(512, 12, 2048, 8),
    "L": Size(768, 12, 3072, 12),
    "So400m": Size(1152, 27, 4304, 16),
    "H": Size(1024, 24, 4096, 16),
    "g": Size(1024, 24, 4096, 16),
}


def lookup(table, variant, kind):
    """`table[variant]`, or an error that lists the `kind` variants there are."""
    if variant not in table:
        raise ValueError(
            f"Unknown {kind} variant {variant!r}; expected one of {sorted(table)}."
        )
    return table[variant]


def heads_by_width(table):
    """Width -> heads of a table's variants: a checkpoint's shapes give its
    width but not how the width splits into heads."""
    return {size.width: size.heads for size in table.values()}
