"""Any released checkpoint -> a loadable keras_ov2 preset folder.

Sources: a folder of open_clip release files, an open_clip weights file, a
JAX `.npz`, an `hf://` handle, or a released preset name (which stands for
its `source`). With a preset, the architecture must match the preset's and
the folder takes the preset's metadata; without an output folder the result
goes to the conversion cache, where `from_preset(name)` and
`from_preset("hf://...")` find it.
"""

import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from keras_ov2.convert import hub
from keras_ov2.convert import jax_params
from keras_ov2.convert import open_clip
from keras_ov2.convert import reading
from keras_ov2.convert.checkpoint import CheckpointError
from keras_ov2.models import OpenVision2Captioner
from keras_ov2.models import OpenVision2CaptionerPreprocessor
from keras_ov2.models import OpenVision2ImageConverter
from keras_ov2.models import OpenVision2Tokenizer
from keras_ov2.models import presets
from keras_ov2.version import __version__

ARCHITECTURE_FIELDS = ("patch_size", "hidden_dim", "num_layers", "num_heads",
                       "intermediate_dim", "projection_dim", "layer_norm_epsilon")
ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")


def source_for_preset(name):
    """The released checkpoint (hf://...) a preset name stands for."""
    metadata = presets.list_presets().get(name)
    if not metadata or not metadata.get("source"):
        released = sorted(n for n, m in presets.list_presets().items() if m.get("source"))
        raise ValueError(
            f"{name!r} is not a released preset; released presets: {', '.join(released)}."
        )
    return metadata["source"]


def preset_for_source(source):
    """The preset name of a released checkpoint id (hf://owner/name or
    owner/name), or None."""
    wanted = presets.repo_id(str(source))
    for name, metadata in presets.list_presets().items():
        if metadata.get("source") and presets.repo_id(metadata["source"]) == wanted:
            return name
    return None


def preset_config(name):
    folder = presets.PRESETS_DIR / name
    return json.loads((folder / "config.json").read_text())["config"]


def check_architecture(arch, preset, origin):
    """Refuses weights of another architecture than the preset's."""
    expected = preset_config(preset)
    for field, value in arch.items():
        if value != expected[field]:
            raise CheckpointError(
                f"{origin} is not the checkpoint of preset {preset!r}: it has "
                f"{field}={value!r}, the preset {expected[field]!r}."
            )


def load_open_clip_source(config_path, weights, preset, projection):
    config = reading.read_json(config_path)
    size = open_clip.image_size(config, str(config_path))
    if preset:
        expected = presets.list_presets()[preset]["image_size"]
        if size != (expected, expected):
            raise CheckpointError(
                f"{config_path} is for {size[0]}x{size[1]} px images, preset "
                f"{preset!r} for {expected} px: these are different checkpoints."
            )
        check_architecture(open_clip.architecture(config, str(config_path)), preset, config_path)
        projection = preset_config(preset)["projection_dim"] is not None
    state_dict = reading.read_state_dict(weights)
    backbone = open_clip.backbone_from_open_clip(state_dict, config, projection, str(weights))
    if preset:
        check_architecture({"projection_dim": backbone.projection_dim}, preset, weights)
    return backbone, None, size[0], []


def load_jax_source(path, preset, image_size, num_heads):
    arch = None
    if preset:
        config = preset_config(preset)
        arch = {field: config[field] for field in ARCHITECTURE_FIELDS}
        image_size = image_size or presets.list_presets()[preset]["image_size"]
    result = jax_params.from_jax_params(
        jax_params.read_params(path), origin=str(path), num_heads=num_heads,
        architecture_kwargs=arch,
    )
    return result.backbone, result.decoder, image_size, result.skipped


def load_source(path, preset=None, projection=None, image_size=None, num_heads=None):
    """(backbone, decoder or None, image size or None, skipped parts)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_jax_source(path, preset, image_size, num_heads)
    if path.is_file():
        return load_open_clip_source(
            path.with_name(reading.OPEN_CLIP_CONFIG), path, preset, projection
        )
    if path.is_dir() and not (path / reading.OPEN_CLIP_CONFIG).exists():
        if path.suffix == ".npz" or any((path / f).exists() for f in ORBAX_FILES):
            raise CheckpointError(f"{path}: {jax_params.ORBAX_HINT}")
    config_path, weights = reading.find_open_clip_files(path)
    return load_open_clip_source(config_path, weights, preset, projection)


def metadata_for(backbone, source, origin, preset, image_size, revision=None):
    if preset:
        metadata = dict(presets.list_presets()[preset])
    else:
        metadata = {"description": f"OpenVision encoder converted from {source}."}
        if image_size:
            metadata["image_size"] = image_size
        metadata["patch_size"] = backbone.patch_size
    metadata.update(
        params=backbone.count_params(),
        source=source,
        converted_from=origin,
        converted_by=f"keras_ov2 {__version__}",
    )
    if revision:
        metadata["source_revision"] = revision
    return metadata


def check_output(out):
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"Output folder {out} exists and is not empty.")


def write_preset(out, backbone, decoder, image_size, metadata, replace=False):
    """Writes the folder next to `out` and renames it into place, so an
    interrupted conversion leaves no half-written preset. `replace` swaps out
    an existing folder (the caller holds the cache lock)."""
    out = Path(out)
    if not replace:
        check_output(out)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    retired = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        converter = OpenVision2ImageConverter(
            image_size=(image_size, image_size) if image_size else None
        )
        if decoder is None:
            backbone.save_to_preset(str(staging))
            if image_size:
                converter.save_to_preset(str(staging))
        else:
            preprocessor = OpenVision2CaptionerPreprocessor(
                OpenVision2Tokenizer(), converter
            )
            captioner = OpenVision2Captioner(backbone, decoder, preprocessor)
            captioner.save_to_preset(str(staging))
        path = staging / "metadata.json"
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, **metadata}, indent=4))
        if out.exists():
            os.replace(out, retired)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return out


class Target(NamedTuple):
    """What a conversion reads and where it writes."""

    source: str  # a path, or the hf:// handle of the release
    preset: str | None  # the released preset the weights are
    out_dir: Path
    cached: bool  # out_dir is the conversion cache (shared, locked)


def target(source, out_dir=None, preset=None):
    """Resolves a preset name to its release and the output to the cache."""
    source = str(source)
    if source in presets.list_presets():
        preset = preset or source
        source = source_for_preset(source)
    if preset is None and source.startswith(presets.HUB_SCHEME):
        preset = preset_for_source(source)
    if preset is not None:
        source_for_preset(preset)  # a clear error for a name that is not released
    if out_dir is not None:
        return Target(source, preset, Path(out_dir), False)
    if not (source.startswith(presets.HUB_SCHEME) or preset):
        raise ValueError("Give an output folder, or a released preset to convert into.")
    handle = source if source.startswith(presets.HUB_SCHEME) else source_for_preset(preset)
    return Target(source, preset, presets.converted_folder(handle), True)


def cache_lock(folder):
    """One conversion at a time per cache entry, across processes."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder.with_name(folder.name + ".lock")))


def convert_to_preset(source, out_dir=None, preset=None, projection=None,
                      image_size=None, num_heads=None, refresh=False):
    """Converts `source` into a preset folder and returns its path.

    `source`: a folder with open_clip_config.json and open_clip weights, an
    open_clip weights file, a JAX `.npz`, an `hf://` handle, or a released
    preset name. `preset`: the released preset these weights are (inferred
    for hf handles and preset names). `out_dir`: where to write; by default
    the conversion cache of the preset's source, which is reused unless
    `refresh` (another process converting the same release waits for it).
    `refresh` also replaces an existing `out_dir`.
    """
    goal = target(source, out_dir, preset)
    if not goal.cached:
        if not refresh:
            check_output(goal.out_dir)
        return convert(goal, projection, image_size, num_heads, replace=refresh)
    if presets.has_weights(goal.out_dir) and not refresh:
        return goal.out_dir  # a finished conversion (renamed into place whole)
    with cache_lock(goal.out_dir):
        if presets.has_weights(goal.out_dir) and not refresh:  # made while we waited
            return goal.out_dir
        return convert(goal, projection, image_size, num_heads, replace=True)


def convert(goal, projection, image_size, num_heads, replace):
    source, preset = goal.source, goal.preset
    revision = None
    if source.startswith(presets.HUB_SCHEME):
        release = hub.download_open_clip(source, preset)
        revision = release.revision
        backbone, decoder, size, skipped = load_open_clip_source(
            release.config, release.weights, preset, projection
        )
    else:
        backbone, decoder, size, skipped = load_source(
            source, preset, projection, image_size, num_heads
        )
    if decoder is not None and not size:
        raise ValueError(
            f"{source} holds a caption decoder too; its captioner preset needs the "
            "image size: pass image_size (ov2 convert --image-size)."
        )
    if source.startswith(presets.HUB_SCHEME):
        named = source
    else:
        named = source_for_preset(preset) if preset else str(Path(source).resolve())
    metadata = metadata_for(backbone, named, source, preset, size, revision)
    if skipped:
        metadata["not_converted"] = skipped
    return write_preset(goal.out_dir, backbone, decoder, size, metadata, replace)


def converted_preset(source):
    """The converter `keras_ov2.models.presets` plugs in (entry point
    `keras_ov2.converters`): a released preset name or an `hf://` handle ->
    its cached conversion, converting it first when needed; None for a
    handle without open_clip files (KerasHub may load it). Even with
    `load_weights=False` a handle is converted: its files are its only
    description of the architecture."""
    try:
        return str(convert_to_preset(source))
    except hub.NotOpenClipError:
        return None
