import importlib.resources
import json
from pathlib import Path

import keras
import keras_hub
import pytest

import keras_ov2
from keras_ov2 import OpenVision2Backbone

# Encoder parameters without the OpenVision v1 head: the reference table.
REFERENCE_MILLIONS = {
    ("tiny", 16): 5.49,
    ("small", 16): 21.6,
    ("base", 16): 85.7,
    ("large", 14): 302.9,
    ("so400m", 14): 412.2,
    ("huge", 14): 630.4,
    ("giant", 14): 1010.8,
}
RELEASED = [
    f"openvision_vit_{size}_patch{patch}_{res}"
    for size in ("tiny", "small", "base")
    for patch in (16, 8)
    for res in (160, 224, 384)
] + [
    "openvision_vit_large_patch14_84",
    "openvision_vit_large_patch14_224",
    "openvision_vit_large_patch14_336",
    "openvision_vit_so400m_patch14_84",
    "openvision_vit_so400m_patch14_224",
    "openvision_vit_so400m_patch14_384",
    "openvision_vit_huge_patch14_84",
    "openvision_vit_huge_patch14_224",
    "openvision2_vit_large_patch14_224",
    "openvision2_vit_large_patch14_336",
    "openvision2_vit_so400m_patch14_384",
    "openvision2_vit_huge_patch14_224",
    "openvision2_vit_huge_patch14_336",
    "openvision2_vit_huge_patch14_448",
    "openvision2_vit_giant_patch14_224",
]


def encoder_presets():
    return {
        name: meta
        for name, meta in keras_ov2.list_presets().items()
        if meta["family"] in ("openvision", "openvision2")
    }


def build_without_weights(name):
    """Shapes only: the variables are never initialised, so no memory."""
    with keras.StatelessScope(initialize_variables=False):
        return OpenVision2Backbone.from_preset(name, load_weights=False)


def test_every_released_model_has_a_preset():
    assert sorted(RELEASED) == sorted(encoder_presets())


def test_presets_are_also_listed_the_keras_hub_way():
    assert set(RELEASED) <= set(OpenVision2Backbone.presets)


@pytest.mark.parametrize("name", RELEASED)
def test_parameter_count_matches_the_reference_table(name):
    model = build_without_weights(name)
    size, patch = name.split("_vit_")[1].split("_patch")
    patch = int(patch.split("_")[0])
    head = model.get_layer("head").count_params() if model.projection_dim else 0
    encoder = model.count_params() - head
    reference = REFERENCE_MILLIONS.get((size, patch))
    if reference is None:  # patch-8 variants: same blocks, smaller patch conv
        reference = REFERENCE_MILLIONS[(size, 16)] - (16**2 - 8**2) * 3 * (
            model.hidden_dim / 1e6
        )
    assert abs(encoder / 1e6 - reference) / reference < 1e-3
    assert keras_ov2.list_presets()[name]["params"] == model.count_params()


@pytest.mark.parametrize("name", RELEASED)
def test_metadata_names_the_source_and_geometry(name):
    meta = keras_ov2.list_presets()[name]
    family, rest = name.split("_vit_")
    size, patch_res = rest.split("_patch")
    patch, res = (int(v) for v in patch_res.split("_"))
    assert meta["image_size"] == res and meta["patch_size"] == patch
    expected = f"hf://UCSC-VLAA/{family}-vit-{size}-patch{patch}-{res}"
    assert meta["source"].startswith(expected)
    assert meta["description"]


def test_openvision_v1_presets_have_the_contrastive_head():
    heads = {
        "tiny_patch16": 192,
        "small_patch16": 384,
        "base_patch16": 512,
        "large_patch14": 768,
        "so400m_patch14": 1152,
        "huge_patch14": 1024,
    }
    for scale, dim in heads.items():
        model = build_without_weights(f"openvision_vit_{scale}_224")
        assert model.projection_dim == dim
    assert build_without_weights("openvision2_vit_large_patch14_224").projection_dim is None


def test_preset_folders_ship_inside_the_package():
    folder = importlib.resources.files("keras_ov2") / "presets"
    config = folder / "openvision2_vit_large_patch14_224" / "config.json"
    assert json.loads(config.read_text())["class_name"] == "OpenVision2Backbone"


def test_by_name_and_by_folder_give_the_same_architecture():
    by_name = build_without_weights("openvision2_vit_large_patch14_224")
    folder = importlib.resources.files("keras_ov2") / "presets" / "openvision2_vit_large_patch14_224"
    by_folder = build_without_weights(str(folder))
    by_path = build_without_weights(Path(str(folder)))
    assert by_name.get_config() | {"name": ""} == by_folder.get_config() | {"name": ""}
    assert by_path.get_config() | {"name": ""} == by_folder.get_config() | {"name": ""}
    assert by_name.hidden_dim == 1024 and by_name.num_layers == 24


def test_keras_hub_base_class_loads_our_preset():
    """A configuration preset; released names through KerasHub's base class
    load their converted weights (test_released_presets.py)."""
    with keras.StatelessScope(initialize_variables=False):
        model = keras_hub.models.Backbone.from_preset(
            "openvision2_captioner_tiny_patch14_84", load_weights=False
        )
    assert isinstance(model, OpenVision2Backbone)


def test_missing_weights_say_where_they_come_from():
    """Offline (the suite sets HF_HUB_OFFLINE) and not converted yet."""
    with pytest.raises(OSError) as error:
        OpenVision2Backbone.from_preset("openvision2_vit_large_patch14_224")
    message = str(error.value)
    assert "hf://UCSC-VLAA/openvision2-vit-large-patch14-224-vision-only" in message
    assert "load_weights=False" in message


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError) as error:
        OpenVision2Backbone.from_preset("openvision2_vit_larg_patch14_224")
    message = str(error.value)
    assert "Unknown preset 'openvision2_vit_larg_patch14_224'" in message
    assert "openvision2_vit_large_patch14_224" in message


def test_unknown_name_without_close_matches_points_to_the_list():
    with pytest.raises(ValueError, match="list_presets"):
        OpenVision2Backbone.from_preset("resnet50")


def test_the_scenes_captioner_has_one_row_per_word_piece_of_their_captions():
    from keras_ov2.data import SyntheticScenes
    from keras_ov2.data.synthetic_scenes import CAPTION_WORDS

    captioner = keras_ov2.OpenVision2Captioner.from_preset(
        "openvision2_captioner_scenes_patch14_84", load_weights=False)
    tokenizer = captioner.preprocessor.tokenizer
    small = keras_ov2.OpenVision2Tokenizer.for_texts(CAPTION_WORDS)
    assert tokenizer.get_vocabulary() == small.get_vocabulary()
    assert captioner.decoder.vocabulary_size == tokenizer.vocabulary_size() < 40
    # The same architecture as the 32,000-row demo captioner otherwise.
    tiny = keras_ov2.OpenVision2Captioner.from_preset(
        "openvision2_captioner_tiny_patch14_84", load_weights=False)
    assert captioner.backbone.get_config() == tiny.backbone.get_config()
    # Every caption gets the word-pieces the authors' vocabulary gives it.
    full = tiny.preprocessor.tokenizer
    scenes = SyntheticScenes(40, image_size=84, max_objects=4)
    captions = [scenes[i][field] for i in range(40) for field in ("caption", "short_caption")]
    for ids, full_ids in zip(tokenizer(captions), full(captions)):
        assert [tokenizer.id_to_token(int(i)) for i in ids] == [
            full.id_to_token(int(i)) for i in full_ids]
