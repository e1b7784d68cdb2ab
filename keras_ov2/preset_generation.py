"""The preset folders, written from `keras_ov2.preset_table`; and the check
that a folder tree holds what the table generates.

The JSON is written directly, in the form KerasHub's `save_to_preset`
gives (tests/test_preset_generation.py builds models and compares): no model
is built, so generating all 45 folders, giant ones included, needs no
backend and takes a moment. Parameter counts are analytic for the same
reason (that test checks them against `count_params()`).
"""

import json
import shutil
from pathlib import Path
from typing import NamedTuple

from keras_ov2.preset_table import PRESETS
from keras_ov2.preset_table import PRESETS_DIR
from keras_ov2.variants import KEEP_RATIO
from keras_ov2.variants import SPECIAL_TOKENS

PACKAGE = Path(__file__).resolve().parent
VOCABULARY = PACKAGE / "assets" / "vocabulary.txt"
VOCABULARY_FILE = "assets/tokenizer/vocabulary.txt"
VOCABULARY_SIZE = 32000
LAYER_NORM_EPSILON = 1e-6


class Serializable(NamedTuple):
    """A class the presets serialize: its module under keras_ov2.models,
    its name, and the name Keras gives its first instance."""

    module: str
    name: str
    default_name: str


BACKBONE = Serializable(
    "common.openvision_backbone", "OpenVision2Backbone", "open_vision2_backbone"
)
IMAGE_CONVERTER = Serializable(
    "common.openvision_image_converter", "OpenVision2ImageConverter", "open_vision2_image_converter"
)
TOKENIZER = Serializable(
    "common.openvision_tokenizer", "OpenVision2Tokenizer", "open_vision2_tokenizer"
)
CAPTIONER = Serializable(
    "openvision2.openvision2_captioner", "OpenVision2Captioner", "open_vision2_captioner"
)
CAPTIONER_PREPROCESSOR = Serializable(
    "openvision2.openvision2_captioner_preprocessor",
    "OpenVision2CaptionerPreprocessor",
    "open_vision2_captioner_preprocessor",
)
TEXT_DECODER = Serializable(
    "openvision2.openvision2_text_decoder", "OpenVision2TextDecoder", "open_vision2_text_decoder"
)
CLIPS = Serializable("openvision1.openvision1_clips", "OpenVisionCLIPS", "open_vision_clips")
CLIPS_PREPROCESSOR = Serializable(
    "openvision1.openvision1_preprocessor", "OpenVision1Preprocessor", "open_vision1_preprocessor"
)
TEXT_ENCODER = Serializable(
    "openvision1.openvision1_text_encoder", "OpenVision1TextEncoder", "open_vision1_text_encoder"
)
CAPTION_DECODER = Serializable(
    "openvision1.openvision1_caption_decoder",
    "OpenVision1CaptionDecoder",
    "open_vision1_caption_decoder",
)


# --- Vocabularies ---


def scene_vocabulary():
    """The tokens of `OpenVision2Tokenizer.for_texts(CAPTION_WORDS)`: every
    word the built-in scenes say is a whole BERT word-piece."""
    from keras_ov2.data.synthetic_scenes import CAPTION_WORDS

    return [*SPECIAL_TOKENS, *sorted(set(CAPTION_WORDS) - set(SPECIAL_TOKENS))]


def vocabulary_size(preset):
    """The decoder's (and v1 text encoder's) embedding and output rows."""
    return VOCABULARY_SIZE if preset.vocabulary == "bert" else len(scene_vocabulary())


def vocabulary_file(preset):
    """The tokenizer's vocabulary: the shipped file to copy, or its text."""
    if preset.vocabulary == "bert":
        return VOCABULARY
    return "".join(token + "\n" for token in scene_vocabulary())


# --- Parameter counts ---


def block_params(size):
    """One `TransformerBlock`: q/k/v/out and the MLP with biases, two LayerNorms."""
    w, m = size.width, size.mlp
    return 4 * (w * w + w) + (w * m + m) + (m * w + w) + 2 * 2 * w


def tower_params(size):
    """The blocks and the final LayerNorm every tower ends with."""
    return size.depth * block_params(size) + 2 * size.width


def encoder_params(preset):
    """The ViT without the v1 head: patch conv (no bias), CLS, blocks, norm."""
    w, patch = preset.encoder.width, preset.patch_size
    return patch * patch * 3 * w + w + tower_params(preset.encoder)


def backbone_params(preset):
    return encoder_params(preset) + preset.encoder.width * (preset.projection_dim or 0)


def text_decoder_params(preset):
    """OV2's decoder: token embedding, visual projection, blocks, untied head."""
    w = preset.decoder.width
    return (2 * vocabulary_size(preset) + preset.encoder.width) * w + tower_params(preset.decoder)


def text_encoder_params(preset):
    """v1's text encoder: token and position embeddings, blocks, head."""
    size = preset.text_encoder
    rows = vocabulary_size(preset) + preset.sequence_length + preset.projection_dim
    return rows * size.width + tower_params(size)


def caption_decoder_params(preset):
    """v1's decoder: image and text projections, learned queries, blocks, head."""
    size = preset.decoder
    rows = preset.encoder.width + preset.text_encoder.width + preset.caption_length
    return (rows + vocabulary_size(preset)) * size.width + tower_params(size)


def parameter_counts(preset):
    """The metadata's counts: "params" is the whole model (task or encoder)."""
    if preset.family == "openvision2_captioner":
        return {
            "params": backbone_params(preset) + text_decoder_params(preset),
            "encoder_params": encoder_params(preset),
        }
    if preset.family == "openvision_clips":
        text, decoder = text_encoder_params(preset), caption_decoder_params(preset)
        return {
            "params": backbone_params(preset) + text + decoder + 1,  # + temperature
            "encoder_params": encoder_params(preset),
            "text_encoder_params": text,
            "decoder_params": decoder,
        }
    return {"params": backbone_params(preset)}


# --- Serialized configs, as `keras.saving.serialize_keras_object` writes them ---


def serialized(cls, config):
    return {
        "module": f"keras_ov2.models.{cls.module}",
        "class_name": cls.name,
        "config": config,
        "registered_name": f"keras_ov2>{cls.name}",
    }


def layer(cls, dtype="float32", **fields):
    """A layer or model: its name, trainable and dtype policy, then `fields`."""
    policy = {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": dtype},
        "registered_name": None,
    }
    config = {"name": cls.default_name, "trainable": True, "dtype": policy, **fields}
    return serialized(cls, config)


def size_fields(size):
    return {
        "hidden_dim": size.width,
        "num_layers": size.depth,
        "num_heads": size.heads,
        "intermediate_dim": size.mlp,
    }


def backbone(preset):
    return layer(
        BACKBONE,
        patch_size=preset.patch_size,
        **size_fields(preset.encoder),
        projection_dim=preset.projection_dim,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
        image_shape=[None, None, 3],
    )


def image_converter(preset):
    return layer(
        IMAGE_CONVERTER,
        image_size=[preset.image_size, preset.image_size],
        interpolation="bilinear",
        antialias=True,
        crop_to_aspect_ratio=False,
        pad_to_aspect_ratio=False,
        bounding_box_format="yxyx",
        normalize=True,
    )


def tokenizer(preset):
    """The shipped vocabulary stays out of the config (an asset); a scenes
    vocabulary is in it too (see `OpenVision2Tokenizer.get_config`)."""
    return layer(
        TOKENIZER,
        dtype="int32",
        config_file="tokenizer.json",
        vocabulary=None if preset.vocabulary == "bert" else scene_vocabulary(),
        sequence_length=None,
        lowercase=True,
        strip_accents=True,
        split=True,
        suffix_indicator="##",
        oov_token="[UNK]",
        special_tokens=None,
        special_tokens_in_strings=False,
    )


def preprocessor(cls, preset, **fields):
    return layer(
        cls,
        tokenizer=tokenizer(preset),
        image_converter=image_converter(preset),
        config_file="preprocessor.json",
        sequence_length=preset.sequence_length,
        **fields,
    )


def captioner_task(preset):
    """(task.json, preprocessor.json) of an OpenVision 2 captioner."""
    processor = preprocessor(CAPTIONER_PREPROCESSOR, preset)
    decoder = layer(
        TEXT_DECODER,
        vocabulary_size=vocabulary_size(preset),
        **size_fields(preset.decoder),
        attention_mask="causal",
        layer_norm_epsilon=LAYER_NORM_EPSILON,
    )
    task = serialized(CAPTIONER, {
        "backbone": backbone(preset),
        "preprocessor": processor,
        "name": CAPTIONER.default_name,
        "decoder": decoder,
        "keep_ratio": KEEP_RATIO,
        "parallel_fraction": 0.0,
        "seed": None,
    })
    return task, processor


def clips_task(preset):
    """(task.json, preprocessor.json) of an OpenVision v1 CLIPS model."""
    processor = preprocessor(
        CLIPS_PREPROCESSOR, preset, caption_length=preset.caption_length, seed=None
    )
    text_encoder = layer(
        TEXT_ENCODER,
        vocabulary_size=vocabulary_size(preset),
        **size_fields(preset.text_encoder),
        projection_dim=preset.projection_dim,
        max_sequence_length=preset.sequence_length,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
    )
    decoder = layer(
        CAPTION_DECODER,
        vocabulary_size=vocabulary_size(preset),
        **size_fields(preset.decoder),
        num_queries=preset.caption_length,
        layer_norm_epsilon=LAYER_NORM_EPSILON,
    )
    task = serialized(CLIPS, {
        "backbone": backbone(preset),
        "preprocessor": processor,
        "name": CLIPS.default_name,
        "text_encoder": text_encoder,
        "decoder": decoder,
        "clip_loss_weight": 1.0,
        "caption_loss_weight": 2.0,
    })
    return task, processor


TASKS = {"openvision2_captioner": captioner_task, "openvision_clips": clips_task}


def metadata(preset):
    official = "OpenVision 2" if preset.family.startswith("openvision2") else "OpenVision"
    fields = {
        "description": preset.description,
        "official_name": official,
        "family": preset.family,
        **parameter_counts(preset),
        "image_size": preset.image_size,
        "patch_size": preset.patch_size,
    }
    if preset.sequence_length:
        fields["sequence_length"] = preset.sequence_length
    if preset.caption_length:
        fields["caption_length"] = preset.caption_length
    fields["source"] = preset.source
    if preset.source:
        fields["model_card"] = preset.source.replace("hf://", "https://huggingface.co/")
    if preset.note:
        fields["note"] = preset.note
    return fields


def preset_files(preset):
    """{path in the folder: JSON object, text, or the source file to copy}."""
    files = {"config.json": backbone(preset), "metadata.json": metadata(preset)}
    if preset.family in TASKS:
        task, processor = TASKS[preset.family](preset)
        files.update({
            "task.json": task,
            "preprocessor.json": processor,
            "tokenizer.json": processor["config"]["tokenizer"],
            "image_converter.json": processor["config"]["image_converter"],
            VOCABULARY_FILE: vocabulary_file(preset),
        })
    return files


# --- Writing and checking ---


def write_presets(folder=PRESETS_DIR, presets=PRESETS):
    """Replaces `folder` by one subfolder per preset."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    for preset in presets:
        for path, content in preset_files(preset).items():
            target = folder / preset.name / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            elif isinstance(content, str):
                target.write_text(content)
            else:  # as KerasHub's saver writes it
                target.write_text(json.dumps(content, indent=4))


def files_under(folder):
    return {
        path.relative_to(folder).as_posix()
        for path in Path(folder).rglob("*")
        if path.is_file()
    }


def json_differences(expected, actual, where=""):
    """Where two parsed JSON values differ: "/key/key: actual, generated expected"."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(expected.keys() | actual.keys()):
            found += json_differences(expected.get(key), actual.get(key), f"{where}/{key}")
        return found
    if expected != actual:
        return [f"{where or '/'}: {actual!r}, generated {expected!r}"]
    return []


def file_difference(expected, actual):
    """None when the two files hold the same (JSON: the same objects)."""
    if expected.suffix != ".json":
        return None if expected.read_bytes() == actual.read_bytes() else "different content"
    found = json_differences(json.loads(expected.read_text()), json.loads(actual.read_text()))
    return "; ".join(found) or None


def presence(want, have, suffix=""):
    """A line for each name only `want` holds (missing) or only `have` (extra)."""
    return [f"{name}{suffix}: missing" for name in sorted(want - have)] + [
        f"{name}{suffix}: not generated by the table" for name in sorted(have - want)
    ]


def differences(expected, actual):
    """One line per preset folder missing from or extra in folder `actual`,
    then per file missing, extra or different in the folders both hold."""
    expected, actual = Path(expected), Path(actual)
    want, have = files_under(expected), files_under(actual)
    want_folders = {path.split("/")[0] for path in want}
    have_folders = {path.split("/")[0] for path in have}
    lines = presence(want_folders, have_folders, suffix="/")
    both = want_folders & have_folders
    want = {path for path in want if path.split("/")[0] in both}
    have = {path for path in have if path.split("/")[0] in both}
    lines += presence(want, have)
    for path in sorted(want & have):
        difference = file_difference(expected / path, actual / path)
        if difference:
            lines.append(f"{path}: {difference}")
    return lines
