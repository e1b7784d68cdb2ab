"""The local Hub stand-in (tests/local_hub.py) against real huggingface_hub calls."""

import hashlib
import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_hub import LocalHub, hub_env, use_local_hub

huggingface_hub = pytest.importorskip("huggingface_hub")
httpx2 = pytest.importorskip("httpx2")  # huggingface_hub's HTTP client
from huggingface_hub import errors  # noqa: E402

REPO = "owner/model"
CONFIG = {"name": "tiny", "width": 8}


@pytest.fixture
def hub(tmp_path):
    repo = tmp_path / "hub" / "owner" / "model"
    (repo / "sub").mkdir(parents=True)
    (repo / "a.json").write_text(json.dumps(CONFIG))
    (repo / "sub" / "b c.txt").write_text("spaced")
    (repo / "big.bin").write_bytes(bytes(range(256)) * 4)
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _connection_refused(hub):
    try:
        socket.create_connection((hub.host, hub.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_download_then_cached_with_server_stopped(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache)
    commit = hashlib.sha1(REPO.encode()).hexdigest()

    path = huggingface_hub.hf_hub_download(REPO, "a.json")
    assert json.loads(Path(path).read_text()) == CONFIG
    snapshot = cache / "models--owner--model" / "snapshots" / commit
    assert path == str(snapshot / "a.json")
    assert hub.requests == [("HEAD", REPO, "a.json"), ("GET", REPO, "a.json")]

    # Quoted paths: a subfolder and a space.
    path = huggingface_hub.hf_hub_download(REPO, "sub/b c.txt")
    assert Path(path).read_text() == "spaced"
    assert hub.requests[-1] == ("GET", REPO, "sub/b c.txt")

    # Cached and the hub up: huggingface_hub still asks (HEAD), downloads nothing.
    hub.clear()
    assert huggingface_hub.hf_hub_download(REPO, "a.json") == str(snapshot / "a.json")
    assert hub.requests == [("HEAD", REPO, "a.json")]

    # Hub stopped: the HEAD is refused, refs/main -> snapshots/<commit> is used.
    hub.clear()
    hub.stop()
    assert _connection_refused(hub)
    again = huggingface_hub.hf_hub_download(REPO, "a.json")
    assert again == str(snapshot / "a.json")
    assert json.loads(Path(again).read_text()) == CONFIG
    assert hub.requests == []
    # Not cached and the hub stopped: no file to fall back to.
    with pytest.raises(errors.LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "big.bin")


def test_new_commit_is_a_new_snapshot(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache)
    first = huggingface_hub.hf_hub_download(REPO, "a.json")
    hub.commits[REPO] = "f" * 40
    hub.clear()
    second = huggingface_hub.hf_hub_download(REPO, "a.json")
    snapshots = cache / "models--owner--model" / "snapshots"
    assert second == str(snapshots / ("f" * 40) / "a.json")
    assert second != first
    # Same ETag (content): the blob is reused, nothing is downloaded.
    assert hub.requests == [("HEAD", REPO, "a.json")]
    assert (cache / "models--owner--model" / "refs" / "main").read_text() == "f" * 40


def test_missing_file_and_missing_repo(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache)
    with pytest.raises(errors.RemoteEntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "missing.json")
    with pytest.raises(errors.RepositoryNotFoundError):
        huggingface_hub.hf_hub_download("owner/nothing", "a.json")
    assert [(entry.method, entry.repo_id, entry.status) for entry in hub.log] == [
        ("HEAD", REPO, 404),
        ("HEAD", "owner/nothing", 404),
    ]
    # The hub's EntryNotFound carries the commit: huggingface_hub caches the absence.
    commit = hub.commit(REPO)
    no_exist = cache / "models--owner--model" / ".no_exist"
    assert (no_exist / commit / "missing.json").exists()


@pytest.mark.parametrize("chunk_size", [None, 64])
def test_truncated_body_fails_and_leaves_no_file(hub, cache, monkeypatch, chunk_size):
    sleeps = use_local_hub(monkeypatch, hub, cache)
    hub.truncate[(REPO, "big.bin")] = 100
    if chunk_size is None:
        # http_get reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks and a
        # cut loses the partial chunk: with a small file nothing was received,
        # so every retry is a full GET (no Range).
        retries = [(200, None)] * 5
    else:
        # One 64-byte chunk arrives before the cut: retries resume from it.
        constants = huggingface_hub.constants
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk_size)
        retries = [(206, f"bytes={chunk_size}-")] * 5

    # A body shorter than its Content-Length: httpx2.RemoteProtocolError, which
    # http_get retries 5 times (sleeping 1 s each) after its last new bytes,
    # then re-raises.
    with pytest.raises(httpx2.RemoteProtocolError):
        huggingface_hub.hf_hub_download(REPO, "big.bin")
    gets = [entry for entry in hub.log if entry.method == "GET"]
    assert [(entry.status, entry.range) for entry in gets] == [(200, None)] + retries
    assert sleeps == [1] * 5  # made instant by use_local_hub

    files = [path for path in cache.rglob("*") if path.is_file() or path.is_symlink()]
    assert not [path for path in files if path.name == "big.bin"]
    blobs = cache / "models--owner--model" / "blobs"
    assert all(path.name.endswith(".incomplete") for path in blobs.iterdir())

    # Fault off: the same call now downloads the whole file.
    del hub.truncate[(REPO, "big.bin")]
    path = huggingface_hub.hf_hub_download(REPO, "big.bin")
    assert Path(path).read_bytes() == bytes(range(256)) * 4


def test_fail_all(hub, cache, monkeypatch):
    use_local_hub(monkeypatch, hub, cache)
    cached = huggingface_hub.hf_hub_download(REPO, "a.json")
    hub.fail_all = True
    hub.clear()
    # 503 on the HEAD: the cached file is used, without retrying.
    assert huggingface_hub.hf_hub_download(REPO, "a.json") == cached
    assert [(entry.method, entry.status) for entry in hub.log] == [("HEAD", 503)]
    # Nothing cached: the HEAD is retried (5 retries, sleeps made instant), then
    # huggingface_hub reports that it cannot find the file locally.
    hub.clear()
    with pytest.raises(errors.LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download(REPO, "big.bin")
    assert hub.requests == [("HEAD", REPO, "big.bin")] * 7


def test_headers_and_range(hub):
    data = bytes(range(256)) * 4
    connection = http.client.HTTPConnection(hub.host, hub.port, timeout=5)
    connection.request("HEAD", f"/{REPO}/resolve/main/big.bin")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert response.getheader("X-Repo-Commit") == hub.commit(REPO)
    assert response.getheader("ETag") == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.getheader("Content-Length") == str(len(data))
    connection.close()

    connection = http.client.HTTPConnection(hub.host, hub.port, timeout=5)
    url = f"/{REPO}/resolve/v1.0/big.bin"
    connection.request("GET", url, headers={"Range": "bytes=1000-"})
    response = connection.getresponse()
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes 1000-1023/{len(data)}"
    assert response.read() == data[1000:]
    connection.close()


def test_subprocess_download(hub, cache):
    code = (
        "import sys, huggingface_hub\n"
        "path = huggingface_hub.hf_hub_download('owner/model', 'a.json')\n"
        "sys.stdout.write(open(path).read())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=hub_env(hub, cache),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == CONFIG
    assert ("GET", REPO, "a.json") in hub.requests
    assert list(cache.glob("models--owner--model/snapshots/*/a.json"))
