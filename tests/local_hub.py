"""A stand-in for the Hugging Face Hub's file endpoints, served on 127.0.0.1.

Tests use it to run real `huggingface_hub.hf_hub_download` calls (HEAD, GET,
Range retries, cache layout) without the internet:

    with LocalHub(tmp_path / "hub") as hub:          # serves hub/<owner>/<name>/<path>
        use_local_hub(monkeypatch, hub, tmp_path / "cache")   # in-process
        path = huggingface_hub.hf_hub_download("owner/name", "a.json")
        assert ("GET", "owner/name", "a.json") in hub.requests

    subprocess.run([...], env=hub_env(hub, tmp_path / "cache"))  # subprocesses

What huggingface_hub 2.4.0 needs from HEAD and GET of
`{endpoint}/{repo}/resolve/{revision}/{path}` (read in its `file_download.py`
and `utils/_http.py`):
- HEAD answers with `X-Repo-Commit` (else `FileMetadataError`), `ETag` or
  `X-Linked-Etag` (quotes stripped: it names the blob in the cache) and
  `Content-Length` (the expected size, checked after the GET).
- 404 + `X-Error-Code: EntryNotFound` -> `RemoteEntryNotFoundError` (raised
  at once; with `X-Repo-Commit` it also records `.no_exist/<commit>/<path>`),
  `X-Error-Code: RepoNotFound` -> `RepositoryNotFoundError`.
- It follows redirects (the HEAD only those that stay on the same host), which
  this server never sends.
- A GET body shorter than its `Content-Length` is an
  `httpx2.RemoteProtocolError`; `http_get` then sleeps 1 s and retries with
  `Range: bytes=<received>-` (a plain GET when nothing was received: it reads
  in `DOWNLOAD_CHUNK_SIZE` = 10 MiB chunks and a cut loses the partial chunk),
  up to 5 times in a row without new bytes, then re-raises that error. The
  partial download, `blobs/<etag>.<random>.incomplete`, is deleted on failure.
- A HEAD that fails (connection refused, 5xx) falls back to the cache
  (`refs/<revision>` -> `snapshots/<commit>/<path>`); with nothing cached it
  repeats the HEAD with retries (sleeps 1, 2, 4, 8, 8 s) before raising
  `LocalEntryNotFoundError`. `use_local_hub` makes those sleeps instant for
  in-process tests; a subprocess still sleeps them.
"""

import hashlib
import importlib
import os
import re
import socket
import socketserver
import sys
import threading
import time
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")
NO_PROXY = "127.0.0.1,localhost"
_COMMIT = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")

# One served request: method, repo id (None when the path is no /resolve/ URL),
# filename (or the raw path), HTTP status, and the Range header (or None).
Served = namedtuple("Served", "method repo_id filename status range")


class LocalHub:
    """Serve `root/<owner>/<name>/<path>` as the Hub's resolve endpoints.

    The server starts on construction, on 127.0.0.1 and a free port, in a daemon
    thread of the test process; `stop()` (or leaving the `with` block) closes the
    listening socket and every open connection, so later requests are refused.

    Attributes a test reads or sets:
        url: `http://127.0.0.1:<port>`, the endpoint to give huggingface_hub.
        requests: `(method, repo_id, filename)` of every request, in order
            (errors and faults included). `log` has the same requests as
            `Served` tuples with the status and the Range header.
        commits: `{repo_id: 40-hex}` overriding a repository's commit, which is
            otherwise the sha1 of its id (set it to simulate a new revision).
            A 40-hex revision in the URL is echoed back as the commit.
        truncate: `{(repo_id, filename): n}`: a GET announces the full length
            but sends no byte at or past offset n, then closes the connection,
            on every GET, Range retries included (so the download never ends).
        fail_all: when True, every request gets a 503.
    Repositories are folders (`owner/name`; `datasets/owner/name` also works);
    a missing folder is a 404 `RepoNotFound`, a missing file a 404
    `EntryNotFound`. Any revision is served from the same folder. The ETag is the
    quoted sha256 of the content; `Range: bytes=...` (one range) gets a 206.
    """

    def __init__(self, root, host="127.0.0.1", port=0):
        self.root = Path(root)
        self.commits = {}
        self.truncate = {}
        self.fail_all = False
        self.requests = []
        self.log = []
        self.errors = []  # exceptions raised in handler threads (a client hung up, ...)
        self._lock = threading.Lock()
        self._connections = set()
        self._server = _Server((host, port), _Handler)
        self._server.hub = self
        self.host, self.port = self._server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"LocalHub:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        state = "stopped" if self._stopped else "serving"
        return f"LocalHub({str(self.root)!r}, url={self.url!r}, {state})"

    def commit(self, repo_id):
        """The commit reported for `repo_id`: its `commits` entry, else sha1(id)."""
        return self.commits.get(repo_id) or hashlib.sha1(repo_id.encode()).hexdigest()

    def clear(self):
        """Forget the requests served so far."""
        with self._lock:
            self.requests.clear()
            self.log.clear()

    def stop(self):
        """Stop serving: refuse new connections and cut the open ones. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    # -- called from handler threads --

    def _record(self, method, repo_id, filename, status, range_header):
        with self._lock:
            self.requests.append((method, repo_id, filename))
            self.log.append(Served(method, repo_id, filename, status, range_header))

    def _answer(self, handler, method):
        range_header = handler.headers.get("Range")
        parsed = _parse_resolve_path(urlsplit(handler.path).path)
        if parsed is None:
            repo_id, revision, filename = None, None, urlsplit(handler.path).path
        else:
            repo_id, revision, filename = parsed

        if self.fail_all:
            status, headers, body = 503, {"X-Error-Message": "LocalHub fail_all"}, b""
        elif parsed is None:
            status, headers, body = 404, {}, b""
        else:
            status, headers, body = self._answer_file(
                method, repo_id, revision, filename, range_header
            )
        # Record before answering: the client may return as soon as it has the body.
        self._record(method, repo_id, filename, status, range_header)
        _send(handler, method, status, headers, body)

    def _answer_file(self, method, repo_id, revision, filename, range_header):
        repo_dir = self.root.joinpath(*repo_id.split("/"))
        commit = revision if _COMMIT.fullmatch(revision) else self.commit(repo_id)
        if not repo_dir.is_dir():
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        path = repo_dir.joinpath(*filename.split("/"))
        if not path.is_file():
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b""

        data = path.read_bytes()
        size = len(data)
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, size, 200  # end: exclusive
        if method == "GET" and range_header is not None:
            byte_range = _parse_range(range_header, size)
            if byte_range is None:
                headers["Content-Range"] = f"bytes */{size}"
                return 416, headers, b""
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)

        limit = self.truncate.get((repo_id, filename))
        body = data[start:end]
        if limit is not None:
            body = data[start : max(start, min(end, limit))]
        return status, headers, body


def _parse_resolve_path(path):
    """`/<repo...>/resolve/<revision>/<file...>` -> (repo_id, revision, filename)."""
    segments = [unquote(segment) for segment in path.split("/")[1:]]
    if "resolve" not in segments:
        return None
    at = segments.index("resolve")
    repo, revision, file = segments[:at], segments[at + 1 : at + 2], segments[at + 2 :]
    if not (1 <= len(repo) <= 3) or not revision or not file:
        return None
    for segment in repo + file:
        if segment in ("", ".", "..") or "\\" in segment or "\0" in segment:
            return None
    return "/".join(repo), revision[0], "/".join(file)


def _parse_range(header, size):
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` -> (start, end exclusive), or None."""
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    elif last:
        start, end = max(size - int(last), 0), size
    else:
        return None
    if start >= size or start >= end:
        return None
    return start, end


def _send(handler, method, status, headers, body=b""):
    """Answer and close the connection (no keep-alive: a stopped hub must not
    keep answering on a pooled connection). `body` may be shorter than the
    Content-Length header (the truncate fault)."""
    handler.close_connection = True
    handler.send_response(status)
    headers = dict(headers)
    headers.setdefault("Content-Length", str(len(body)))
    headers["Connection"] = "close"
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    if method == "GET" and body:
        handler.wfile.write(body)
    handler.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind looks up the host's FQDN, which can hang
        # without DNS; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # Keep stderr quiet (a client that hangs up mid-body, a cut connection).
        self.hub.errors.append(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub"
    sys_version = ""

    def setup(self):
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.hub._lock:
                self.server.hub._connections.discard(self.connection)

    def do_HEAD(self):
        self.server.hub._answer(self, "HEAD")

    def do_GET(self):
        self.server.hub._answer(self, "GET")

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class _InstantSleep:
    """The `time` module, except that `sleep` returns at once (and is counted)."""

    def __init__(self):
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def hub_env(hub, cache_dir, base=None):
    """The environment for a subprocess that downloads from `hub` into `cache_dir`.

    A full environment (a copy of `base`, default `os.environ`) for
    `subprocess.run(..., env=hub_env(hub, cache_dir))`: the `HF_*` settings
    huggingface_hub reads when imported, no proxy variables, `NO_PROXY` for
    127.0.0.1, and no token (none is sent to the local hub). The subprocess
    keeps huggingface_hub's retry sleeps, so faults there cost seconds.
    """
    env = dict(os.environ if base is None else base)
    drop = {name.lower() for name in PROXY_VARIABLES} | {
        "hf_token",
        "hugging_face_hub_token",
        "huggingface_co_staging",  # would override HF_ENDPOINT
        "huggingface_hub_cache",
        "transformers_offline",
    }
    for name in list(env):
        if name.lower() in drop:
            del env[name]
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_CACHE=str(cache_dir),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_XET="1",
        NO_PROXY=NO_PROXY,
        no_proxy=NO_PROXY,
    )
    return env


def use_local_hub(monkeypatch, hub, cache_dir, *, instant_retries=True):
    """Point the already imported huggingface_hub at `hub`, caching in `cache_dir`.

    huggingface_hub reads its environment once, into `huggingface_hub.constants`,
    when imported; `file_download` and `utils._http` read `constants.<NAME>` at
    call time, so patching the module attributes is enough for downloads. The
    few copies taken by value are patched too. Everything is undone by
    `monkeypatch` at the end of the test.

    With `instant_retries`, the `time.sleep` calls of huggingface_hub's retry
    loops (`file_download.http_get`, `utils._http` backoff) return at once; the
    sleeps are counted in the returned list.
    """
    constants = importlib.import_module("huggingface_hub.constants")
    http = importlib.import_module("huggingface_hub.utils._http")
    file_download = importlib.import_module("huggingface_hub.file_download")
    hf_api = importlib.import_module("huggingface_hub.hf_api")
    cache_manager = importlib.import_module("huggingface_hub.utils._cache_manager")
    tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

    cache_dir = str(cache_dir)
    # hf_hub_url builds `HUGGINGFACE_CO_URL_TEMPLATE.format(...)`, computed from
    # ENDPOINT at import: both must change. HfApi and telemetry use ENDPOINT.
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # is_offline_mode()
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # Copies taken by value at import: scan_cache_dir's default cache, the
    # module-level HfApi behind huggingface_hub.file_exists & co., progress bars.
    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    monkeypatch.setattr(tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)

    # Same variables in os.environ, for code that reads them (or spawns).
    for name, value in hub_env(hub, cache_dir, base={}).items():
        monkeypatch.setenv(name, value)
    for name in PROXY_VARIABLES + ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # The shared httpx2 client reads proxies when it is created: drop the
    # current one so the next request builds one under this environment.
    monkeypatch.setattr(http, "_GLOBAL_CLIENT", None)

    sleeper = _InstantSleep()
    if instant_retries:
        monkeypatch.setattr(file_download, "time", sleeper)
        monkeypatch.setattr(http, "time", sleeper)
    return sleeper.sleeps
