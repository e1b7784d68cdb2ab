"""open_clip releases <-> OpenVision2Backbone: parity with open_clip's own
VisionTransformer, exact round trips, and refusal of bad checkpoints."""

import json
import pathlib
import re

import keras
import numpy as np
import pytest
from keras import ops

from keras_ov2.convert import CheckpointError
from keras_ov2.convert import backbone_from_open_clip
from keras_ov2.convert import load_open_clip
from keras_ov2.convert import save_open_clip
from keras_ov2.convert import to_open_clip
from keras_ov2.convert import open_clip as open_clip_convert
from tests import open_clip_reference
from tests.open_clip_reference import keras_encoder

OUTPUTS = ("sequence_output", "pooled_output", "projected_output")
# (hidden_dim, patch_size, num_layers, intermediate_dim, num_heads) per release.
ARCHITECTURES = {
    "ti16_160": (192, 16, 12, 768, 3),
    "b16_224": (768, 16, 12, 3072, 12),
    "l14_224_depth2": (1024, 14, 2, 4096, 16),
    "so400m14_384_depth2": (1152, 14, 2, 4304, 16),
    "ti8_160_depth2": (192, 8, 2, 768, 3),
}


@pytest.fixture(scope="session")
def releases(tmp_path_factory):
    return open_clip_reference.parity_releases(tmp_path_factory)


def weights(model):
    return {v.path: ops.convert_to_numpy(v.value) for v in model.weights}


@pytest.fixture
def tiny_release():
    """A small valid (state dict, config) pair: a Keras export."""
    return to_open_clip(keras_encoder(0, 16), image_size=32)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_matches_open_clip_vision_transformer(releases, name):
    """Ti/16@160, B/16@224, reduced-depth L/14@224, So400m/14@384 and Ti/8@160:
    the outputs, and the penultimate block's patch tokens (LLaVA's)."""
    model, outputs = open_clip_reference.converted_release(releases / name)
    architecture = (model.hidden_dim, model.patch_size, model.num_layers,
                    model.intermediate_dim, model.num_heads)
    assert architecture == ARCHITECTURES[name]
    reference = np.load(releases / name / "reference.npz")
    for key in OUTPUTS:
        actual = outputs[key]
        error = np.max(np.abs(actual - reference[key]))
        print(f"{keras.backend.backend()} {name} {key}: max abs difference {error:.2e}")
        np.testing.assert_allclose(actual, reference[key], atol=1e-5, rtol=0)
    penultimate = model.intermediate_tokens(ops.convert_to_tensor(reference["images"]), -2)
    np.testing.assert_allclose(ops.convert_to_numpy(penultimate),
                               reference["penultimate_tokens"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("projection_dim", [None, 16])
def test_keras_to_open_clip_to_keras_is_exact(tmp_path, projection_dim):
    model = keras_encoder(0, projection_dim)
    for safetensors in (False, True):
        folder = tmp_path / f"safetensors_{safetensors}"
        save_open_clip(model, folder, image_size=48, safetensors=safetensors)
        restored = load_open_clip(folder)
        assert restored.get_config() | {"name": ""} == model.get_config() | {"name": ""}
        expected = weights(model)
        for path, value in weights(restored).items():
            np.testing.assert_array_equal(value, expected[path])


def test_exported_encoder_runs_in_open_clip(releases):
    """keras_ov2's export loads strictly into open_clip's tower and gives the
    Keras outputs (an identity `proj` for an encoder without a head)."""
    for name, (seed, projection_dim) in open_clip_reference.EXPORTS.items():
        model = keras_encoder(seed, projection_dim)
        reference = np.load(releases / name / "reference.npz")
        outputs = {k: ops.convert_to_numpy(v) for k, v in model(reference["images"]).items()}
        # Weights N(0, 0.3) everywhere give tokens up to ~15: float32 rounding.
        for key in ("sequence_output", "pooled_output"):
            np.testing.assert_allclose(outputs[key], reference[key], atol=1e-5, rtol=1e-5)
        projected = outputs.get("projected_output", outputs["pooled_output"])
        np.testing.assert_allclose(projected, reference["projected_output"], atol=1e-5, rtol=1e-5)


def test_vision_only_state_dict_without_prefix(tiny_release):
    state, config = tiny_release
    bare = {k.removeprefix("visual."): v for k, v in state.items()}
    model = backbone_from_open_clip(bare, config)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model.head.kernel.value), state["visual.proj"]
    )


def test_text_tower_of_a_whole_clip_is_left_out(tiny_release):
    state, config = tiny_release
    text = {"token_embedding.weight": np.zeros((10, 8)), "logit_scale": np.zeros(()),
            "transformer.resblocks.0.ln_1.weight": np.ones(8)}
    model = backbone_from_open_clip({**state, **text}, config)
    assert model.projection_dim == 16


def test_projection_can_be_dropped_or_required(tiny_release):
    state, config = tiny_release
    assert backbone_from_open_clip(state, config, projection=False).head is None
    without = {k: v for k, v in state.items() if k != "visual.proj"}
    assert backbone_from_open_clip(without, config).head is None
    with pytest.raises(CheckpointError, match="'proj'"):
        backbone_from_open_clip(without, config, projection=True)


def test_missing_key_is_named(tiny_release):
    state, config = tiny_release
    del state["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    key = re.escape("missing key 'visual.transformer.resblocks.1.mlp.c_fc.bias'")
    with pytest.raises(CheckpointError, match=key):
        backbone_from_open_clip(state, config, origin="weights.bin")


def test_extra_key_is_named(tiny_release):
    state, config = tiny_release
    state["visual.ln_pre.weight"] = np.ones(32, "float32")
    message = re.escape("weights.bin: unexpected key(s) 'visual.ln_pre.weight'")
    with pytest.raises(CheckpointError, match=message):
        backbone_from_open_clip(state, config, origin="weights.bin")


def test_unknown_key_outside_the_vision_tower_is_named(tiny_release):
    state, config = tiny_release
    state["decoder.head.weight"] = np.ones(3, "float32")
    with pytest.raises(CheckpointError, match="'decoder.head.weight'"):
        backbone_from_open_clip(state, config)


def test_shape_that_does_not_match_the_config_is_named(tiny_release):
    state, config = tiny_release
    config["model_cfg"]["vision_cfg"]["mlp_ratio"] = 3.0
    with pytest.raises(CheckpointError) as error:
        backbone_from_open_clip(state, config, origin="weights.bin")
    message = str(error.value)
    assert "'visual.transformer.resblocks.0.mlp.c_fc.weight'" in message
    assert "(64, 32)" in message and "(96, 32)" in message


def test_deeper_checkpoint_than_config_is_refused(tiny_release):
    state, config = tiny_release
    config["model_cfg"]["vision_cfg"]["layers"] = 1
    with pytest.raises(CheckpointError, match="visual.transformer.resblocks.1"):
        backbone_from_open_clip(state, config)


def test_learned_position_embedding_is_refused(tiny_release):
    state, config = tiny_release
    state["visual.positional_embedding"] = state["visual.positional_embedding"] + 0.5
    message = "'visual.positional_embedding' is not the fixed 2-D sin-cos"
    with pytest.raises(CheckpointError, match=message):
        backbone_from_open_clip(state, config)


def test_config_of_another_network_is_refused(tiny_release):
    state, config = tiny_release
    config["model_cfg"]["vision_cfg"]["pool_type"] = "tok"
    with pytest.raises(CheckpointError, match="vision_cfg.pool_type is 'tok'"):
        backbone_from_open_clip(state, config)


def test_nothing_is_half_loaded(tiny_release):
    state, config = tiny_release
    model = keras_encoder(7, 16)
    before = weights(model)
    state["visual.ln_post.bias"] = np.zeros(5, "float32")  # checked after the blocks
    with pytest.raises(CheckpointError, match="visual.ln_post.bias"):
        open_clip_convert.load_into(model, state, config, "weights.bin")
    for path, value in weights(model).items():
        np.testing.assert_array_equal(value, before[path])


def test_pickle_that_would_run_code_is_refused(tmp_path, tiny_release):
    import torch

    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    state, config = tiny_release
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    checkpoint = {k: torch.from_numpy(v) for k, v in state.items()}
    checkpoint["visual.extra"] = Payload()
    torch.save(checkpoint, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        load_open_clip(folder)
    assert str(folder / "open_clip_pytorch_model.bin") in str(error.value)
    assert "refused to load" in str(error.value)
    assert not marker.exists()


def test_unreadable_weights_file_is_named(tmp_path, tiny_release):
    path = tmp_path / "open_clip_pytorch_model.bin"
    path.write_bytes(b"not a checkpoint")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(tiny_release[1]))
    with pytest.raises(CheckpointError, match=f"{path}: not a readable PyTorch checkpoint"):
        load_open_clip(tmp_path)


def test_folder_without_release_files_says_what_it_expects(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json and one of"):
        load_open_clip(tmp_path)
