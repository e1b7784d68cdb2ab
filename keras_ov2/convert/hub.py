"""Downloads open_clip releases from the Hugging Face Hub; where conversions
are cached.

`huggingface_hub` is optional: without it, or without a network, the error
says which files to download and the one command that converts them.
"""

import os
from pathlib import Path

from keras_ov2.convert.reading import OPEN_CLIP_CONFIG
from keras_ov2.convert.reading import OPEN_CLIP_WEIGHTS

SCHEME = "hf://"


class HubUnavailableError(OSError):
    """The Hub cannot be reached (no network, or no huggingface_hub)."""


class NotOpenClipError(ValueError):
    """The Hub repository holds no open_clip_config.json."""


def repo_id(handle):
    return handle.removeprefix(SCHEME).strip("/")


def cache_root():
    """$KERAS_OV2_CACHE, else ~/.cache/keras_ov2 (or under $XDG_CACHE_HOME)."""
    if os.environ.get("KERAS_OV2_CACHE"):
        return Path(os.environ["KERAS_OV2_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "keras_ov2"


def converted_folder(source):
    """The preset folder a conversion of `source` (hf id) is cached in."""
    return cache_root() / "converted" / repo_id(source).replace("/", "--")


def how_to_convert(handle, preset=None):
    """The offline recipe: which files to fetch, which command to run."""
    url = f"https://huggingface.co/{repo_id(handle)}"
    if preset:
        command = f"ov2 convert FOLDER --preset {preset}"
        load = f'OpenVision2Backbone.from_preset("{preset}") (or "{handle}")'
    else:
        command = "ov2 convert FOLDER OUT_DIR"
        load = "OpenVision2Backbone.from_preset(OUT_DIR)"
    return (
        f"Download {OPEN_CLIP_CONFIG} and {OPEN_CLIP_WEIGHTS[1]} (or "
        f"{OPEN_CLIP_WEIGHTS[0]}) from {url} into a folder FOLDER, convert "
        f"them with `{command}`, then load {load}."
    )


class MissingFileError(LookupError):
    """The repository exists but has no such file."""


def fetch(repo, filename):
    """One file of a Hub repository -> local path (huggingface_hub's cache)."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename))
    except errors.RemoteEntryNotFoundError:
        raise MissingFileError(filename) from None
    except errors.RepositoryNotFoundError:
        raise ValueError(
            f"No Hugging Face Hub repository {repo!r} (or it is private or gated)."
        ) from None


def download_open_clip(handle, preset=None):
    """(config path, weights path) of the open_clip release at `handle`.

    Raises `NotOpenClipError` when the repository has no open_clip config
    (it may be a KerasHub preset), `HubUnavailableError` when offline.
    """
    repo = repo_id(handle)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise HubUnavailableError(
            f"Cannot convert {handle} on the fly: huggingface_hub is not "
            f"installed. {how_to_convert(handle, preset)}"
        ) from None
    try:
        try:
            config = fetch(repo, OPEN_CLIP_CONFIG)
        except MissingFileError:
            raise NotOpenClipError(f"{handle} holds no {OPEN_CLIP_CONFIG}.") from None
        for name in OPEN_CLIP_WEIGHTS:
            try:
                return config, fetch(repo, name)
            except MissingFileError:
                continue
    except ValueError:  # no such repository, or not an open_clip one
        raise
    except Exception as error:  # no network (LocalEntryNotFoundError), timeouts, server errors
        raise HubUnavailableError(
            f"Cannot convert {handle} on the fly: the Hugging Face Hub is not "
            f"reachable ({type(error).__name__}: {error}). "
            f"{how_to_convert(handle, preset)}"
        ) from None
    raise FileNotFoundError(
        f"{handle} has {OPEN_CLIP_CONFIG} but none of {', '.join(OPEN_CLIP_WEIGHTS)}."
    )
