"""Downloads open_clip releases from the Hugging Face Hub (the cache of
conversions is `keras_ov2.models.presets.converted_folder`).

`huggingface_hub` is optional: without it, or without a network, the error
says which files to download and the one command that converts them.
"""

import re
from pathlib import Path
from typing import NamedTuple

from keras_ov2.convert.reading import OPEN_CLIP_CONFIG
from keras_ov2.convert.reading import OPEN_CLIP_WEIGHTS
from keras_ov2.models.presets import repo_id


class HubUnavailableError(OSError):
    """The Hub cannot be reached (no network, or no huggingface_hub)."""


class NotOpenClipError(ValueError):
    """The Hub repository holds no open_clip_config.json."""


def how_to_convert(handle, preset=None):
    """The offline recipe: which files to fetch, which command to run."""
    url = f"https://huggingface.co/{repo_id(handle)}"
    if preset:
        command = f"ov2 convert FOLDER --preset {preset}"
        load = f'OpenVision2Backbone.from_preset("{preset}") (or "{handle}")'
        alone = (f' OpenVision2Backbone.from_preset("{preset}", load_weights=False) '
                 "builds the architecture alone, with random weights.")
    else:
        command = "ov2 convert FOLDER OUT_DIR"
        load = "OpenVision2Backbone.from_preset(OUT_DIR)"
        alone = ""
    return (
        f"To get the weights without a network: download {OPEN_CLIP_CONFIG} "
        f"and {OPEN_CLIP_WEIGHTS[1]} (or {OPEN_CLIP_WEIGHTS[0]}) from {url} "
        f"into a folder FOLDER, convert them with `{command}`, then load {load}.{alone}"
    )


class MissingFileError(LookupError):
    """The repository exists but has no such file."""


class Release(NamedTuple):
    """An open_clip release downloaded into huggingface_hub's cache."""

    config: Path
    weights: Path
    revision: str | None  # the Hub commit the files are from


def revision_of(path):
    """The commit of a file in huggingface_hub's cache (.../snapshots/<commit>/file)."""
    name = Path(path).parent.name
    return name if re.fullmatch(r"[0-9a-f]{40}", name) else None


def fetch(repo, filename):
    """One file of a Hub repository -> local path (huggingface_hub's cache,
    with its progress bar)."""
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


def unreachable(error):
    """Whether a download error means "no network" rather than "it broke"."""
    from huggingface_hub import errors

    offline = (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError)
    return isinstance(error, offline) or "connect" in type(error).__name__.lower()


def download_open_clip(handle, preset=None):
    """The open_clip release at `handle` (a `Release`).

    Raises `NotOpenClipError` when the repository has no open_clip config
    (it may be a KerasHub preset), `HubUnavailableError` when offline or when
    a download breaks off.
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
                weights = fetch(repo, name)
            except MissingFileError:
                continue
            return Release(config, weights, revision_of(weights))
    except ValueError:  # no such repository, or not an open_clip one
        raise
    except Exception as error:  # no network, timeouts, server errors, broken downloads
        what = (
            "the Hugging Face Hub is not reachable"
            if unreachable(error)
            else "the download failed"
        )
        raise HubUnavailableError(
            f"Cannot convert {handle} on the fly: {what} "
            f"({type(error).__name__}: {error}). {how_to_convert(handle, preset)}"
        ) from None
    raise FileNotFoundError(
        f"{handle} has {OPEN_CLIP_CONFIG} but none of {', '.join(OPEN_CLIP_WEIGHTS)}."
    )
