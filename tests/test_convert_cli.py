"""`ov2 convert`, released preset names <-> sources, and `hf://` handles
converted on the fly. The Hub is always simulated: nothing is downloaded."""

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import errors as hub_errors
from keras import ops

import keras_ov2
from keras_ov2 import OpenVision2Backbone
from keras_ov2 import cli
from keras_ov2.convert import load_open_clip
from keras_ov2.convert import preset_for_source
from keras_ov2.convert import save_open_clip
from keras_ov2.convert import source_for_preset
from keras_ov2.models.presets import resolve
from tests import open_clip_reference
from tests.open_clip_reference import keras_encoder

TI16 = "openvision_vit_tiny_patch16_160"
TI16_SOURCE = "hf://UCSC-VLAA/openvision-vit-tiny-patch16-160"
L14_OV2 = "openvision2_vit_large_patch14_224"
L14_OV2_SOURCE = "hf://UCSC-VLAA/openvision2-vit-large-patch14-224-vision-only"


@pytest.fixture(scope="session")
def releases(tmp_path_factory):
    return open_clip_reference.parity_releases(tmp_path_factory)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Conversions are cached in a fresh folder, never in the user's."""
    monkeypatch.setenv("KERAS_OV2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub serving local folders: {repo id: folder}; records calls."""
    import huggingface_hub

    repos, calls = {}, []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if repo_id not in repos:
            raise hub_errors.LocalEntryNotFoundError("no network in tests")
        path = repos[repo_id] / filename
        if not path.exists():
            response = SimpleNamespace(headers={}, request=None)
            raise hub_errors.RemoteEntryNotFoundError(f"{filename} not found", response=response)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return repos, calls


def assert_same_model(model, expected):
    """Same configuration and equal weights: the same outputs, bit for bit."""
    assert model.get_config() | {"name": ""} == expected.get_config() | {"name": ""}
    for actual, wanted in zip(model.weights, expected.weights, strict=True):
        assert actual.path == wanted.path
        np.testing.assert_array_equal(ops.convert_to_numpy(actual.value),
                                      ops.convert_to_numpy(wanted.value))


def test_every_released_preset_maps_to_its_source_and_back():
    released = {n: m for n, m in keras_ov2.list_presets().items() if m.get("source")}
    assert len(released) == 33
    for name, metadata in released.items():
        assert source_for_preset(name) == metadata["source"]
        assert preset_for_source(metadata["source"]) == name
        assert preset_for_source(metadata["source"].removeprefix("hf://")) == name
    with pytest.raises(ValueError, match="not a released preset"):
        source_for_preset("openvision2_captioner_tiny_patch14_84")


def test_convert_folder_into_an_output_folder(releases, tmp_path, capsys):
    out = tmp_path / "ti16"
    assert cli.main(["convert", str(releases / "ti16_160"), str(out), "--preset", TI16]) == 0
    assert "Wrote the encoder preset" in capsys.readouterr().out
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["source"] == TI16_SOURCE
    assert metadata["converted_from"] == str(releases / "ti16_160")
    assert metadata["image_size"] == 160 and metadata["family"] == "openvision"
    model = OpenVision2Backbone.from_preset(str(out))
    expected, _ = open_clip_reference.converted_release(releases / "ti16_160")
    assert_same_model(model, expected)
    converter = json.loads((out / "image_converter.json").read_text())
    assert converter["config"]["image_size"] == [160, 160]


def test_convert_into_the_presets_own_name(releases, hub, cache):
    """Without an output folder the conversion lands in the cache, where the
    preset name and its hf:// handle both find it (no download)."""
    repos, calls = hub
    with pytest.raises(OSError, match=f"ov2 convert FOLDER --preset {TI16}"):
        OpenVision2Backbone.from_preset(TI16)  # not converted, no Hub
    calls.clear()
    assert cli.main(["convert", str(releases / "ti16_160"), "--preset", TI16]) == 0
    by_name = OpenVision2Backbone.from_preset(TI16)
    by_handle = OpenVision2Backbone.from_preset(TI16_SOURCE)
    assert_same_model(by_name, by_handle)
    assert calls == []
    converted = cache / "converted" / "UCSC-VLAA--openvision-vit-tiny-patch16-160"
    assert resolve(TI16, load_weights=False) == str(converted)  # what `ov2 embed` loads


def test_hf_handle_is_converted_on_the_fly_and_cached(tmp_path, hub, cache):
    repos, calls = hub
    model = keras_encoder(3, projection_dim=16)
    save_open_clip(model, tmp_path / "repo", image_size=48)
    repos["someone/small-openvision"] = tmp_path / "repo"
    loaded = OpenVision2Backbone.from_preset("hf://someone/small-openvision")
    assert_same_model(loaded, model)
    assert [f for _, f in calls] == ["open_clip_config.json", "open_clip_model.safetensors",
                                     "open_clip_pytorch_model.bin"]
    folder = cache / "converted" / "someone--small-openvision"
    assert resolve("hf://someone/small-openvision") == str(folder)
    assert len(calls) == 3  # the second load reads the cache
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["source"] == "hf://someone/small-openvision"


def test_offline_hub_says_what_to_download_and_how_to_convert(hub, cache):
    with pytest.raises(OSError) as error:
        OpenVision2Backbone.from_preset(L14_OV2_SOURCE)
    message = str(error.value)
    assert "not reachable" in message and "LocalEntryNotFoundError" in message
    assert f"https://huggingface.co/{L14_OV2_SOURCE.removeprefix('hf://')}" in message
    assert "open_clip_config.json and open_clip_pytorch_model.bin" in message
    assert f"ov2 convert FOLDER --preset {L14_OV2}" in message
    converted = cache / "converted"
    assert not converted.exists() or all(p.suffix == ".lock" for p in converted.iterdir())


def test_without_huggingface_hub_the_message_is_the_same_recipe(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(OSError, match="huggingface_hub is not installed") as error:
        OpenVision2Backbone.from_preset(L14_OV2_SOURCE)
    assert f"ov2 convert FOLDER --preset {L14_OV2}" in str(error.value)


def test_hf_handle_without_open_clip_files_goes_to_keras_hub(tmp_path, hub):
    from keras_ov2.convert.to_preset import converted_preset
    from keras_ov2.models import presets

    repos, _ = hub
    (tmp_path / "keras_preset").mkdir()
    repos["someone/keras-preset"] = tmp_path / "keras_preset"
    assert converted_preset("hf://someone/keras-preset") is None
    assert presets.resolve("hf://someone/keras-preset") == "hf://someone/keras-preset"


def test_weights_of_another_architecture_are_refused(releases, tmp_path, capsys):
    folder = tmp_path / "release"
    shutil.copytree(releases / "ti16_160", folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["image_size"] = 224
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        cli.main(["convert", str(folder), str(tmp_path / "out"), "--preset", L14_OV2])
    error = capsys.readouterr().err
    assert f"is not the checkpoint of preset '{L14_OV2}'" in error
    assert "patch_size=16, the preset 14" in error
    assert not (tmp_path / "out").exists()


def test_existing_output_folder_is_not_overwritten(releases, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        cli.main(["convert", str(releases / "ti16_160"), str(out)])
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_convert_back_to_open_clip(tmp_path):
    model = keras_encoder(4)
    model.save_to_preset(str(tmp_path / "preset"))
    out = tmp_path / "open_clip"
    assert cli.main(["convert", str(tmp_path / "preset"), str(out), "--to", "open_clip",
                     "--image-size", "48", "--safetensors"]) == 0
    assert (out / "open_clip_model.safetensors").exists()
    assert_same_model(load_open_clip(out), model)
