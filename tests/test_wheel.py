"""A wheel built from the repository installs and loads presets without the
checkout: the preset folders and the vocabulary ship as files, the `ov2`
script and the converter entry point are registered, and the installed copy
(not the editable checkout this venv also has) is what gets imported.

Runs on the Keras backend of KERAS_BACKEND (the subprocess inherits it).
"""

import configparser
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_ov2"
CAPTIONER = "openvision2_captioner_tiny_patch14_84"
BACKBONE = "openvision_vit_tiny_patch16_224"
# What `pip wheel` must not leave in the checkout (setuptools' defaults).
BUILD_LEFTOVERS = ("build", "dist", "keras_ov2.egg-info")

# Run in an empty folder with PYTHONPATH=<site> only: the checkout is not on
# sys.path, and the venv's editable finder comes after PYTHONPATH.
INSTALLED_CHECK = r"""
import importlib.metadata
import inspect
import json
import sys
from pathlib import Path

import keras
import numpy as np

site, expected = Path(sys.argv[1]).resolve(), json.loads(sys.argv[2])

def under_site(path):
    return Path(path).resolve().is_relative_to(site)

import keras_ov2
from keras_ov2.models import presets

assert under_site(keras_ov2.__file__), keras_ov2.__file__
assert under_site(presets.PRESETS_DIR), presets.PRESETS_DIR
listed = keras_ov2.list_presets()
assert set(expected) <= set(listed), sorted(set(expected) - set(listed))
for name in ("%(captioner)s", "%(backbone)s"):
    assert under_site(presets.resolve(name, load_weights=False)), name

captioner = keras_ov2.OpenVision2Captioner.from_preset("%(captioner)s", load_weights=False)
assert captioner.preprocessor.tokenizer.vocabulary_size() > 1000
backbone = keras_ov2.OpenVision2Backbone.from_preset("%(backbone)s", load_weights=False)
images = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype("float32")
pooled = keras.ops.convert_to_numpy(backbone(images)["pooled_output"])
assert pooled.shape == (2, backbone.hidden_dim) and np.isfinite(pooled).all(), pooled.shape

# The first distribution on sys.path is the wheel's, and so is the converter
# `from_preset` would call (presets.convert_release takes the first).
assert under_site(importlib.metadata.distribution("keras_ov2").locate_file("keras_ov2"))
found = list(importlib.metadata.entry_points(group="keras_ov2.converters"))
assert found and found[0].name == "open_clip", found
assert under_site(found[0].dist.locate_file("keras_ov2")), found[0].dist
assert under_site(inspect.getfile(found[0].load())), inspect.getfile(found[0].load())
print("INSTALLED_OK", len(listed), "presets,", keras.backend.backend())
""" % {"captioner": CAPTIONER, "backbone": BACKBONE}


def shipped_presets():
    """Every preset folder of the checkout: name -> its files, relative to
    the package (what the wheel must hold)."""
    return {
        config.parent.name: sorted(
            path.relative_to(PACKAGE).as_posix()
            for path in config.parent.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        )
        for config in sorted((PACKAGE / "presets").glob("*/config.json"))
    }


def run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel, site): a wheel of the checkout and where it is installed.

    setuptools would build in <root>/build and write <root>/keras_ov2.egg-info;
    DIST_EXTRA_CONFIG (a config file every setuptools command reads last)
    sends both into the temporary folder instead.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "egg").mkdir()
    config = tmp / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp / 'egg'}\n")
    before = {name: (ROOT / name).exists() for name in BUILD_LEFTOVERS}
    env = dict(os.environ, DIST_EXTRA_CONFIG=str(config), PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp / "dist"), str(ROOT)], env=env, cwd=tmp)
    created = [name for name, existed in before.items() if not existed and (ROOT / name).exists()]
    assert not created, f"building the wheel left {created} in the checkout"
    (wheel,) = (tmp / "dist").glob("keras_ov2-*.whl")
    site = tmp / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "-q",
         "--target", str(site), str(wheel)], env=env, cwd=tmp)
    return wheel, site


def test_wheel_ships_presets_vocabulary_and_entry_points(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        entries = {info.filename: info for info in archive.infolist()}
        (dist_info,) = {name.split("/")[0] for name in entries if ".dist-info/" in name}
        points = configparser.ConfigParser()
        points.read_file(io.StringIO(archive.read(f"{dist_info}/entry_points.txt").decode()))

    def real_file(name):
        info = entries.get(name)
        mode = (info.external_attr >> 16) if info else 0
        return info is not None and info.file_size > 0 and not stat.S_ISLNK(mode) and not info.is_dir()

    presets = shipped_presets()
    assert CAPTIONER in presets and BACKBONE in presets
    for name, files in presets.items():
        assert real_file(f"keras_ov2/presets/{name}/config.json"), name
        missing = [f for f in files if not real_file(f"keras_ov2/{f}")]
        assert not missing, f"{name}: not in the wheel: {missing}"
    assert real_file("keras_ov2/assets/vocabulary.txt")
    assert points["console_scripts"]["ov2"] == "keras_ov2.cli:main"
    assert points["keras_ov2.converters"]["open_clip"] == "keras_ov2.convert.to_preset:converted_preset"


def test_installed_wheel_loads_presets_without_the_checkout(built, tmp_path):
    _, site = built
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1",
               KERAS_OV2_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    done = run([sys.executable, "-c", INSTALLED_CHECK, str(site), json.dumps(list(shipped_presets()))],
               env=env, cwd=empty)
    assert "INSTALLED_OK" in done.stdout, done.stdout[-2000:]
    # The console script pip wrote runs the installed package.
    script = site / "bin" / "ov2"
    assert script.is_file()
    done = run([sys.executable, str(script), "--help"], env=env, cwd=empty)
    assert "pretrain" in done.stdout
