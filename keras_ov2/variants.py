"""The sizes of every OpenVision model family, one table each. Everything
else (the preset folders, the converters' checks, FLOP counts, benchmarks)
reads them from here. Pure Python: importing it loads no Keras."""

from typing import NamedTuple


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
