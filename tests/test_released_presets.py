"""Released encoders by name: download, convert, cache, load; offline errors;
no torch; bad downloads cache nothing; concurrent loads; Keras presets on a hub.

The Hub is `tests.local_hub.LocalHub` on 127.0.0.1, serving releases that
open_clip itself wrote (`tests.open_clip_reference.HUB_RELEASES`), so
`huggingface_hub` downloads for real and nothing leaves the machine.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

from keras_ov2 import OpenVision2Backbone
from keras_ov2 import OpenVision2ImageConverter
from keras_ov2 import cli
from keras_ov2.cli.common import read_image
from keras_ov2.convert import CheckpointError
from keras_ov2.convert import open_clip as open_clip_convert
from keras_ov2.convert.hub import HubUnavailableError
from keras_ov2.models import presets
from tests import open_clip_reference
from tests.local_hub import LocalHub
from tests.local_hub import hub_env
from tests.local_hub import use_local_hub

TI16 = "openvision_vit_tiny_patch16_160"
TI16_REPO = "UCSC-VLAA/openvision-vit-tiny-patch16-160"
OV2_REPO = "someone/openvision2-tiny-vision-only"
OV2_SINCOS_REPO = "someone/openvision2-tiny-vision-only-sincos"
ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("sequence_output", "pooled_output")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    return open_clip_reference.hub_releases(tmp_path_factory)


@pytest.fixture
def hub_root(reference, tmp_path):
    """A private copy of the releases: a test may break its files."""
    root = tmp_path / "hub"
    shutil.copytree(reference / "hub", root)
    return root


@pytest.fixture
def hub(hub_root):
    with LocalHub(hub_root) as server:
        yield server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """keras_ov2's conversion cache and huggingface_hub's download cache."""
    monkeypatch.setenv("KERAS_OV2_CACHE", str(tmp_path / "keras_ov2_cache"))
    return tmp_path / "keras_ov2_cache", tmp_path / "hf_cache"


@pytest.fixture
def online(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache[1])
    return hub


def expected(reference, repo):
    return np.load(reference / "outputs" / (repo.replace("/", "--") + ".npz"))


def assert_matches(outputs, reference_outputs, keys=OUTPUTS):
    for key in keys:
        np.testing.assert_allclose(outputs[key], reference_outputs[key], atol=1e-5, rtol=0)


def converted_entries(cache_dir):
    """What the conversion cache holds, lock files aside."""
    folder = cache_dir / "converted"
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock") if folder.exists() else []


def weight_downloads(hub, repo):
    return [r for r in hub.requests if r[0] == "GET" and r[1] == repo and "model" in r[2]]


def test_name_downloads_converts_caches_and_reloads_offline_without_torch(
    reference, hub, cache, tmp_path
):
    """A fresh process with `import torch` blocked loads the preset by name:
    the release is downloaded from the local Hub, converted and cached; its
    features are open_clip's. Then, with the Hub stopped, this process loads
    the cached weights on its own backend: the same features."""
    images = tmp_path / "images.npz"
    reference_outputs = expected(reference, TI16_REPO)
    np.savez(images, images=reference_outputs["images"])
    env = hub_env(hub, cache[1])
    env["KERAS_OV2_CACHE"] = str(cache[0])
    if keras.backend.backend() == "torch":
        env["KERAS_BACKEND"] = "jax"  # Keras on torch needs torch; convert on JAX
    out = tmp_path / "out.npz"
    subprocess.run(
        [sys.executable, "-m", "tests.load_without_torch", TI16, str(images), str(out)],
        cwd=ROOT, env=env, check=True, timeout=600,
    )
    assert_matches(np.load(out), reference_outputs)
    assert len(weight_downloads(hub, TI16_REPO)) == 1
    assert converted_entries(cache[0]) == [TI16_REPO.replace("/", "--")]
    metadata = json.loads(
        (cache[0] / "converted" / TI16_REPO.replace("/", "--") / "metadata.json").read_text()
    )
    assert metadata["source_revision"] == hub.commit(TI16_REPO)
    assert metadata["converted_by"].startswith("keras_ov2 ")

    hub.stop()
    model = OpenVision2Backbone.from_preset(TI16)
    outputs = model.predict(reference_outputs["images"], verbose=0)
    assert_matches(outputs, reference_outputs, OUTPUTS + ("projected_output",))


@pytest.mark.parametrize("repo", [OV2_REPO, OV2_SINCOS_REPO])
def test_vision_only_release_without_norm_kwargs_uses_eps_1e6(reference, online, repo):
    """The authors' OV2 form: vision tower only, `proj` in the file, the
    fork's config fields, no norm_kwargs (.bin first, then .safetensors)."""
    config = json.loads((online.root / repo / "open_clip_config.json").read_text())
    assert "norm_kwargs" not in config["model_cfg"]["vision_cfg"]
    model = OpenVision2Backbone.from_preset(f"hf://{repo}")
    assert model.layer_norm_epsilon == 1e-6
    reference_outputs = expected(reference, repo)
    assert_matches(model.predict(reference_outputs["images"], verbose=0), reference_outputs)


def test_safetensors_release_reads_lazily_as_bfloat16(online, hub_root, reference):
    """A bfloat16 .safetensors release converts: widened exactly to float32."""
    import ml_dtypes
    from safetensors.numpy import load_file

    folder = hub_root / OV2_SINCOS_REPO
    path = folder / "open_clip_model.safetensors"
    state = load_file(str(path))
    halved = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    (folder / "open_clip_model.safetensors").unlink()
    # safetensors' NumPy writer cannot write bfloat16: write its bytes as BF16 by hand.
    header = {k: {"dtype": "BF16", "shape": list(v.shape)} for k, v in halved.items()}
    offset, blobs = 0, []
    for key, value in halved.items():
        blob = value.tobytes()
        header[key]["data_offsets"] = [offset, offset + len(blob)]
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    model = OpenVision2Backbone.from_preset(f"hf://{OV2_SINCOS_REPO}")
    query = model.transformer_layers[0].attention.query.kernel
    widened = halved["transformer.resblocks.0.attn.in_proj_weight"][:48].astype("float32").T
    np.testing.assert_array_equal(ops.convert_to_numpy(query), widened)


def test_keras_hub_base_class_loads_a_released_name(reference, online):
    model = keras_hub.models.Backbone.from_preset(TI16)
    assert isinstance(model, OpenVision2Backbone)
    reference_outputs = expected(reference, TI16_REPO)
    assert_matches(model.predict(reference_outputs["images"], verbose=0), reference_outputs)


def test_architecture_only_never_touches_the_network(online):
    online.fail_all = True
    model = OpenVision2Backbone.from_preset(TI16, load_weights=False)
    assert model.hidden_dim == 192
    assert online.requests == []


def test_offline_and_uncached_names_the_hub_id_files_and_command(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache[1])
    hub.stop()
    with pytest.raises(HubUnavailableError) as error:
        OpenVision2Backbone.from_preset(TI16)
    message = str(error.value)
    assert "not reachable" in message
    assert f"https://huggingface.co/{TI16_REPO}" in message
    assert "open_clip_config.json and open_clip_pytorch_model.bin" in message
    assert f"ov2 convert FOLDER --preset {TI16}" in message
    assert converted_entries(cache[0]) == []


def test_truncated_download_caches_nothing(online, cache):
    online.truncate[(TI16_REPO, "open_clip_pytorch_model.bin")] = 1000
    with pytest.raises(HubUnavailableError, match="the download failed"):
        OpenVision2Backbone.from_preset(TI16)
    assert converted_entries(cache[0]) == []
    blobs = cache[1] / f"models--{TI16_REPO.replace('/', '--')}" / "blobs"
    assert not blobs.exists() or all(p.suffix == ".incomplete" or p.stat().st_size < 10_000
                                     for p in blobs.iterdir())
    del online.truncate[(TI16_REPO, "open_clip_pytorch_model.bin")]
    assert OpenVision2Backbone.from_preset(TI16).hidden_dim == 192  # then it works


def test_truncated_file_on_the_hub_is_a_clear_error(online, hub_root, cache):
    path = hub_root / TI16_REPO / "open_clip_pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        OpenVision2Backbone.from_preset(TI16)
    assert converted_entries(cache[0]) == []


def test_release_of_another_architecture_is_refused(online, hub_root, cache):
    path = hub_root / TI16_REPO / "open_clip_config.json"
    config = json.loads(path.read_text())
    config["model_cfg"]["vision_cfg"]["layers"] = 6
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_layers=6, the preset 12"):
        OpenVision2Backbone.from_preset(TI16)
    assert converted_entries(cache[0]) == []


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the two loads run in JAX "
                    "processes whatever the suite's backend: the jax run covers it")
def test_two_processes_loading_one_name_convert_it_once(reference, hub, cache, tmp_path):
    images = tmp_path / "images.npz"
    reference_outputs = expected(reference, TI16_REPO)
    np.savez(images, images=reference_outputs["images"])
    env = hub_env(hub, cache[1]) | {"KERAS_OV2_CACHE": str(cache[0]), "KERAS_BACKEND": "jax"}
    runs = [
        subprocess.Popen([sys.executable, "-m", "tests.load_without_torch", TI16,
                          str(images), str(tmp_path / f"out{i}.npz")], cwd=ROOT, env=env)
        for i in range(2)
    ]
    assert [run.wait(timeout=600) for run in runs] == [0, 0]
    for i in range(2):
        assert_matches(np.load(tmp_path / f"out{i}.npz"), reference_outputs)
    assert converted_entries(cache[0]) == [TI16_REPO.replace("/", "--")]
    assert len(weight_downloads(hub, TI16_REPO)) == 1  # the second waited for the first


def test_keras_preset_on_a_hub_loads_without_conversion(hub_root, online, cache, monkeypatch):
    """A converted folder is an ordinary KerasHub preset: shared on a hub
    (`keras_hub.upload_preset`), `from_preset("hf://...")` loads it as is."""
    model = open_clip_reference.keras_encoder(5, projection_dim=8)
    model.save_to_preset(str(hub_root / "someone" / "keras-ov2-small"))
    if keras.backend.backend() != "torch":  # Keras on torch needs it, nothing else may
        monkeypatch.setitem(sys.modules, "torch", None)
    loaded = OpenVision2Backbone.from_preset("hf://someone/keras-ov2-small")
    for actual, wanted in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(actual), ops.convert_to_numpy(wanted))
    assert converted_entries(cache[0]) == []
    assert ("GET", "someone/keras-ov2-small", "model.weights.h5") in online.requests


# -- the CLI --------------------------------------------------------------------


@pytest.fixture
def image_file(tmp_path):
    from PIL import Image

    path = tmp_path / "image.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_embed_released_name_offline_fails_and_random_weights_say_so(
    hub, cache, monkeypatch, image_file, tmp_path, capsys
):
    use_local_hub(monkeypatch, hub, cache[1])
    hub.stop()
    out = tmp_path / "features.npy"
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["embed", TI16, image_file, "--out", str(out)])
    assert exit_code.value.code == 1
    err = capsys.readouterr().err
    assert f"ov2 convert FOLDER --preset {TI16}" in err and "--random-weights" in err
    assert not out.exists()
    assert cli.main(["embed", TI16, image_file, "--out", str(out), "--random-weights"]) == 0
    assert "Using random weights (--random-weights)" in capsys.readouterr().out
    assert np.load(out).shape == (1, 192)


def test_embed_by_name_and_by_handle_agree_and_need_no_image_size(online, image_file, tmp_path):
    by_name, by_handle = tmp_path / "name.npy", tmp_path / "handle.npy"
    assert cli.main(["embed", TI16, image_file, "--out", str(by_name), "--tokens"]) == 0
    handle = f"hf://{TI16_REPO}"
    assert cli.main(["embed", handle, image_file, "--out", str(by_handle), "--tokens"]) == 0
    assert np.load(by_name).shape == (1, 100, 192)  # 160 px: from the converted preset
    np.testing.assert_array_equal(np.load(by_name), np.load(by_handle))
    model = OpenVision2Backbone.from_preset(TI16)
    converter = OpenVision2ImageConverter(image_size=(160, 160))
    x = np.asarray(converter(read_image(image_file)))[None]
    np.testing.assert_allclose(np.load(by_name), model.predict(x, verbose=0)["sequence_output"],
                               atol=1e-5)


def test_eval_and_caption_refuse_random_weights_unless_asked(hub, cache, monkeypatch,
                                                             image_file, capsys):
    use_local_hub(monkeypatch, hub, cache[1])
    hub.stop()
    with pytest.raises(SystemExit):
        cli.main(["eval", TI16, "--train", "8", "--test", "8"])
    assert "--random-weights" in capsys.readouterr().err
    config_only = "openvision2_captioner_tiny_patch14_84"  # a preset to pretrain from
    with pytest.raises(SystemExit):
        cli.main(["caption", config_only, image_file])
    err = capsys.readouterr().err
    assert "has no weights" in err and "--random-weights" in err
    assert cli.main(["caption", config_only, image_file, "--random-weights",
                     "--max-length", "4"]) == 0
    assert "Using random weights" in capsys.readouterr().out


def test_presets_command_lists_sources_and_cache_state(online, capsys):
    assert cli.main(["presets"]) == 0
    before = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(presets.list_presets()) <= set(before)
    assert TI16_REPO in before[TI16] and "not converted yet" in before[TI16]
    assert "5.5M" in before[TI16] and "160 px" in before[TI16]
    assert "config only" in before["openvision2_captioner_tiny_patch14_84"]
    OpenVision2Backbone.from_preset(TI16)
    assert cli.main(["presets"]) == 0
    after = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "cached (keras_ov2" in after[TI16] and online.commit(TI16_REPO)[:10] in after[TI16]


def test_convert_refresh_records_the_new_revision(online, cache, capsys):
    assert cli.main(["convert", TI16]) == 0
    folder = cache[0] / "converted" / TI16_REPO.replace("/", "--")
    first = json.loads((folder / "metadata.json").read_text())["source_revision"]
    assert cli.main(["convert", TI16]) == 0
    assert "Already converted" in capsys.readouterr().out
    assert first == online.commit(TI16_REPO)
    online.commits[TI16_REPO] = "f" * 40
    assert cli.main(["convert", TI16, "--refresh"]) == 0
    second = json.loads((folder / "metadata.json").read_text())["source_revision"]
    assert second == "f" * 40
    assert converted_entries(cache[0]) == [folder.name]


# -- the configuration rules ------------------------------------------------------


def fork_config(**vision):
    base = open_clip_reference.fork_vision_config(48, 2, 8, 4, 32)
    return {"model_cfg": {"embed_dim": 48, "vision_cfg": base | vision}}


def test_layer_norm_epsilon_follows_the_authors_fork():
    assert open_clip_convert.architecture(fork_config())["layer_norm_epsilon"] == 1e-6
    explicit = fork_config(norm_kwargs={"eps": 1e-5})
    assert open_clip_convert.architecture(explicit)["layer_norm_epsilon"] == 1e-5


@pytest.mark.parametrize("field, value", [
    ("patch_dropout", 0.5), ("output_tokens", False), ("pos_embed_type", "sin_cos_2d"),
    ("attn_pooler_heads", 4), ("act_kwargs", {"approximate": "none"}),
])
def test_fields_that_leave_the_network_unchanged_are_accepted(field, value):
    assert open_clip_convert.architecture(fork_config(**{field: value}))["hidden_dim"] == 48


@pytest.mark.parametrize("field, value, words", [
    ("act_kwargs", {"approximate": "tanh"}, "vision_cfg.act_kwargs"),
    ("in_channels", 1, "vision_cfg.in_channels=1"),
    ("ls_init_value", 0.1, "vision_cfg.ls_init_value=0.1"),
    ("pool_type", "tok", "vision_cfg.pool_type is 'tok'"),
    ("norm_kwargs", {"eps": 1e-6, "elementwise_affine": False}, "only eps"),
    ("registers", 4, "unknown vision_cfg field 'registers'"),
])
def test_fields_that_change_the_network_are_named(field, value, words):
    with pytest.raises(CheckpointError, match=words):
        open_clip_convert.architecture(fork_config(**{field: value}), "cfg.json")


def test_cache_holds_no_partial_folder_after_a_failed_conversion(online, hub_root, cache):
    (hub_root / TI16_REPO / "open_clip_pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        OpenVision2Backbone.from_preset(TI16)
    assert (cache[0] / "converted").is_dir() and converted_entries(cache[0]) == []
    assert not presets.has_weights(cache[0] / "converted" / TI16_REPO.replace("/", "--"))


OV2_RELEASED = sorted(n for n, m in presets.list_presets().items()
                      if m.get("source") and m["family"] == "openvision2")


@pytest.mark.parametrize("name", OV2_RELEASED)
def test_the_forks_config_of_every_openvision2_release_fits_its_preset(name):
    """A vision-only config as the fork writes it (no norm_kwargs) describes
    exactly the preset's architecture, eps 1e-6 included: before, every OV2
    release was refused ("layer_norm_epsilon=1e-05, the preset 1e-06")."""
    from keras_ov2.convert.export import mlp_ratio
    from keras_ov2.convert.to_preset import check_architecture
    from keras_ov2.convert.to_preset import preset_config

    config = preset_config(name)
    width, heads = config["hidden_dim"], config["num_heads"]
    vision = open_clip_reference.fork_vision_config(
        width, config["num_layers"], config["patch_size"], heads,
        presets.list_presets()[name]["image_size"],
    ) | {"mlp_ratio": mlp_ratio(width, config["intermediate_dim"])}
    arch = open_clip_convert.architecture({"model_cfg": {"embed_dim": width,
                                                          "vision_cfg": vision}})
    check_architecture(arch, name, "the fork's config")  # raises on any difference
    assert arch["layer_norm_epsilon"] == 1e-6
