"""What every shipped preset is, one row each. The folders in
keras_ov2/presets are generated from these rows (`keras_ov2.preset_generation`,
run by presets/generate.py); names, sources and descriptions are derived
from a row's fields, so a preset is described once.

A module of its own, pure Python like `keras_ov2.variants` (whose sizes it
reads): generating or checking the folders needs no Keras backend, and the
loading code in `keras_ov2.models.presets` keeps reading the folders only.
"""

from pathlib import Path
from typing import NamedTuple

from keras_ov2.flops import num_patches
from keras_ov2.variants import DECODERS
from keras_ov2.variants import ENCODERS
from keras_ov2.variants import KEEP_RATIO
from keras_ov2.variants import TEXT
from keras_ov2.variants import Size

PRESETS_DIR = Path(__file__).resolve().parent / "presets"  # the generated folders

HUB = "UCSC-VLAA"
# A variant's name in the authors' hub ids, and so in the preset names.
LONG_NAMES = {
    "Ti": "tiny",
    "S": "small",
    "B": "base",
    "L": "large",
    "So400m": "so400m",
    "H": "huge",
    "g": "giant",
}
# The demo sizes (not the authors'): pretrain on a laptop CPU in minutes.
TINY_ENCODER = Size(128, 4, 512, 4)
TINY_TEXT = Size(128, 2, 512, 4)
# The pretraining setups' first stage (the authors': 84 px, captions of 128
# tokens, v1 web captions of 80).
STAGE_IMAGE_SIZE = 84
CAPTION_LENGTH = 128
WEB_CAPTION_LENGTH = 80
UNCONFIRMED_HUB_ID = "Hub id inferred from the project page; not confirmed in the released listing."
OUR_DECODER_PAIRING = (
    "Decoder pairing is keras_ov2's choice: the authors' decoder for this encoder is "
    "not published (their script lists S, B, L, H, g decoders); decoder L as for L/14."
)


class Preset(NamedTuple):
    """One preset folder. `family` says which files it holds: "openvision"
    and "openvision2" an encoder (a release), "openvision2_captioner" and
    "openvision_clips" a pretraining task."""

    family: str
    model: str  # the name's middle: "vit_large", or "tiny" for the demo sizes
    encoder: Size
    patch_size: int
    image_size: int
    description: str
    projection_dim: int | None = None  # OpenVision v1's contrastive head
    decoder: Size | None = None  # OV2 caption decoder, or v1's caption decoder
    text_encoder: Size | None = None  # OpenVision v1 only
    sequence_length: int | None = None  # captions (OV2), web captions (v1)
    caption_length: int | None = None  # v1 caption decoder's queries
    source: str | None = None  # hf:// handle of a release
    note: str | None = None
    # The tokenizer's rows: "bert" the authors' 32,000 (BERT uncased), or
    # "scenes" only the word-pieces of the built-in scenes' captions.
    vocabulary: str = "bert"

    @property
    def name(self):
        return f"{self.family}_{self.model}_patch{self.patch_size}_{self.image_size}"


def vit(variant, patch_size):
    """"ViT-So400m/14": the authors' short variant name."""
    return f"ViT-{variant}/{patch_size}"


def release(version, variant, patch_size, image_size, note=None):
    """A released encoder. v1's contrastive head has the width of the text
    tower of the same variant (its released heads: Ti 192 ... H 1024)."""
    family = "openvision2" if version == 2 else "openvision"
    model = f"vit_{LONG_NAMES[variant]}"
    repo = f"{family}-{model.replace('_', '-')}-patch{patch_size}-{image_size}"
    tokens = f"{image_size} px ({num_patches(image_size, patch_size)} tokens)"
    if version == 2:
        repo += "-vision-only"
        projection_dim = None
        description = (
            f"OpenVision 2 {vit(variant, patch_size)} encoder at {tokens}; pretrained by "
            "captioning only on ReCap-DataComp-1B v2 (84 px, then high resolution)."
        )
    else:
        projection_dim = TEXT[variant].width
        description = (
            f"OpenVision {vit(variant, patch_size)} encoder at {tokens} with its "
            f"{projection_dim}-d contrastive head; pretrained with OpenVision's "
            "contrastive + caption losses on ReCap-DataComp-1B."
        )
    return Preset(
        family, model, ENCODERS[variant], patch_size, image_size, description,
        projection_dim=projection_dim, source=f"hf://{HUB}/{repo}", note=note,
    )


def captioner(variant, patch_size, decoder, paper_pairing=False, note=None):
    """An OpenVision 2 pretraining setup: encoder + caption decoder."""
    long_name = LONG_NAMES[variant]
    pairing = " (the paper's pairing)" if paper_pairing else ""
    description = (
        f"OpenVision 2 captioning pretraining setup: ViT-{long_name}/{patch_size} encoder "
        f"+ decoder {decoder}{pairing}, {STAGE_IMAGE_SIZE} px stage, keep ratio "
        f"{KEEP_RATIO}, caption length {CAPTION_LENGTH}; configs only, for pretraining "
        "from scratch."
    )
    return Preset(
        "openvision2_captioner", f"vit_{long_name}", ENCODERS[variant], patch_size,
        STAGE_IMAGE_SIZE, description, decoder=DECODERS[decoder],
        sequence_length=CAPTION_LENGTH, note=note,
    )


def clips(variant, patch_size):
    """An OpenVision v1 pretraining setup: encoder with its head, text
    encoder and caption decoder of the same variant."""
    long_name, text = LONG_NAMES[variant], TEXT[variant]
    description = (
        f"OpenVision v1 pretraining setup: ViT-{long_name}/{patch_size} encoder with its "
        f"{text.width}-wide head, text encoder {variant}, caption decoder {variant} "
        f"({CAPTION_LENGTH} learned queries), {STAGE_IMAGE_SIZE} px stage, web-caption "
        f"length {WEB_CAPTION_LENGTH}, caption length {CAPTION_LENGTH}; configs only, "
        "for pretraining from scratch."
    )
    return Preset(
        "openvision_clips", f"vit_{long_name}", ENCODERS[variant], patch_size,
        STAGE_IMAGE_SIZE, description, projection_dim=text.width, decoder=text,
        text_encoder=text, sequence_length=WEB_CAPTION_LENGTH,
        caption_length=CAPTION_LENGTH,
    )


def tiny_captioner(patch_size=14, sequence_length=64):
    e, d = TINY_ENCODER, TINY_TEXT
    return Preset(
        "openvision2_captioner", "tiny", e, patch_size, STAGE_IMAGE_SIZE,
        f"Demo-size OpenVision 2 captioner (encoder {e.width} wide x {e.depth} blocks, "
        f"patch {patch_size}; decoder {d.width} x {d.depth}) at {STAGE_IMAGE_SIZE} px, "
        f"sequence length {sequence_length}: pretrains on the built-in synthetic dataset "
        "on a laptop CPU in minutes.",
        decoder=d, sequence_length=sequence_length,
    )


def scenes_captioner(patch_size=14, sequence_length=64):
    """The demo captioner with a vocabulary of the built-in scenes' words:
    at the demo's width the 32,000-row output layer is about 70% of the
    step, and the scenes' captions use under 40 of its rows."""
    e, d = TINY_ENCODER, TINY_TEXT
    return Preset(
        "openvision2_captioner", "scenes", e, patch_size, STAGE_IMAGE_SIZE,
        f"Demo-size OpenVision 2 captioner for the built-in synthetic scenes: the sizes of "
        f"openvision2_captioner_tiny_patch{patch_size}_{STAGE_IMAGE_SIZE}, with a vocabulary "
        "of only the word-pieces the scenes' captions use (instead of 32,000 rows, most of a "
        "tiny captioner's step); `ov2 pretrain`'s default on those scenes.",
        decoder=d, sequence_length=sequence_length, vocabulary="scenes",
    )


def tiny_clips(patch_size=14, sequence_length=32, caption_length=64):
    e, t = TINY_ENCODER, TINY_TEXT
    return Preset(
        "openvision_clips", "tiny", e, patch_size, STAGE_IMAGE_SIZE,
        f"Demo-size OpenVision v1 (CLIPS-style) setup: the demo encoder ({e.width} wide x "
        f"{e.depth} blocks, patch {patch_size}) with a {e.width}-wide head, text encoder "
        f"{t.width} x {t.depth}, learned-query decoder {t.width} x {t.depth}, at "
        f"{STAGE_IMAGE_SIZE} px; texts of {sequence_length} ids, captions of "
        f"{caption_length}: pretrains on the built-in synthetic dataset on a laptop CPU.",
        projection_dim=e.width, decoder=t, text_encoder=t,
        sequence_length=sequence_length, caption_length=caption_length,
    )


# The authors' releases: variant -> (patch sizes, image sizes).
OPENVISION_RELEASES = {
    "Ti": ((16, 8), (160, 224, 384)),
    "S": ((16, 8), (160, 224, 384)),
    "B": ((16, 8), (160, 224, 384)),
    "L": ((14,), (84, 224, 336)),
    "So400m": ((14,), (84, 224, 384)),
    "H": ((14,), (84, 224)),
}

PRESETS = [
    *(
        release(1, variant, patch_size, image_size)
        for variant, (patch_sizes, image_sizes) in OPENVISION_RELEASES.items()
        for patch_size in patch_sizes
        for image_size in image_sizes
    ),
    release(2, "L", 14, 224),
    release(2, "L", 14, 336),
    release(2, "So400m", 14, 384),
    release(2, "H", 14, 224),
    release(2, "H", 14, 336),
    release(2, "H", 14, 448, note=UNCONFIRMED_HUB_ID),
    release(2, "g", 14, 224),
    captioner("Ti", 16, "Ti"),
    captioner("S", 16, "S"),
    captioner("B", 16, "B"),
    captioner("L", 14, "L", paper_pairing=True),
    captioner("So400m", 14, "L", note=OUR_DECODER_PAIRING),
    captioner("H", 14, "L", note=OUR_DECODER_PAIRING),
    captioner("g", 14, "L", note=OUR_DECODER_PAIRING),
    tiny_captioner(),
    scenes_captioner(),
    clips("Ti", 16),
    clips("S", 16),
    tiny_clips(),
]
