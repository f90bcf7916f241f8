"""A stand-in Hugging Face Hub that tests serve on loopback.

Tests that exercise code calling ``huggingface_hub`` must never reach the real Hub (the test machines
have no internet access, and the real Hub changes under us). This module serves a few in-memory repos
over HTTP on 127.0.0.1 so the *real* client code runs unchanged once ``HF_ENDPOINT`` points at
:attr:`StandinHub.url` (the client reads ``HF_ENDPOINT`` at import time, so set it before importing
``huggingface_hub``, e.g. in a subprocess).

Client calls supported (checked against huggingface_hub 2.5.0):

- ``HfApi().model_info`` / ``dataset_info`` / ``repo_info`` (with or without ``revision``, and with
  ``files_metadata=True``): ``GET /api/{models,datasets}/{repo}[/revision/{rev}]``.
- ``HfApi().list_repo_tree`` (which ``snapshot_download`` uses to list files):
  ``GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]?recursive=...``.
- ``hf_hub_download`` and ``snapshot_download``: ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}``,
  including single ``Range`` requests (the client sends them when it resumes a broken download).

Revisions ``main`` and the repo's full commit sha resolve; anything else is ``RevisionNotFound``. Unknown
repos answer ``RepoNotFound`` and unknown files ``EntryNotFound``, through the ``X-Error-Code`` header the
client's ``hf_raise_for_status`` turns into its typed errors. Files are served as plain git blobs (no LFS,
no Xet, no redirects). It serves only what tests need: no auth, uploads, pagination, spaces or tags.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# A fixed date: the client parses it (format '%Y-%m-%dT%H:%M:%S.%fZ'), nothing depends on its value.
_LAST_MODIFIED = "2024-01-01T00:00:00.000Z"
_API_TYPES = {"models": "model", "datasets": "dataset"}
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class Repo:
    """One repo the stand-in hub serves, at a single commit."""

    repo_id: str
    repo_type: str  # "model" or "dataset"
    files: dict[str, Path | bytes]  # path inside the repo -> content
    sha: str  # 40-hex commit

    def __post_init__(self) -> None:
        if self.repo_type not in ("model", "dataset"):
            raise ValueError(f"repo_type must be 'model' or 'dataset', not {self.repo_type!r}")
        if not _SHA_RE.fullmatch(self.sha):
            raise ValueError(f"sha must be 40 lowercase hex digits, not {self.sha!r}")


def _git_blob_oid(content: bytes) -> str:
    # The Hub's ETag and tree `oid` of a non-LFS file is its git blob id; mimic it so cache paths look real.
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _ServedRepo:
    """A :class:`Repo` with its contents read once, so every request sees the same bytes and hashes."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.blobs: dict[str, bytes] = {
            path: (content if isinstance(content, bytes) else Path(content).read_bytes())
            for path, content in sorted(repo.files.items())
        }
        self.oids = {path: _git_blob_oid(content) for path, content in self.blobs.items()}
        # Every folder that holds a file, at any depth ("" is the root).
        self.folders = {"/".join(p.split("/")[:i]) for p in self.blobs for i in range(p.count("/") + 1)}

    def info(self, with_blobs: bool) -> dict:
        """The JSON of ``/api/{models,datasets}/{repo}``: the fields ModelInfo/DatasetInfo read."""
        repo = self.repo
        siblings = []
        for path in self.blobs:
            sibling: dict = {"rfilename": path}
            if with_blobs:  # `files_metadata=True` sends `blobs=true` and expects sizes and blob ids
                sibling.update(size=len(self.blobs[path]), blobId=self.oids[path])
            siblings.append(sibling)
        data: dict = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": repo.sha,
            "lastModified": _LAST_MODIFIED,
            "createdAt": _LAST_MODIFIED,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(b) for b in self.blobs.values()),
        }
        if repo.repo_type == "model":
            data["modelId"] = repo.repo_id  # the Hub still sends this legacy alias of `id`
        return data

    def tree(self, folder: str, recursive: bool) -> list[dict] | None:
        """Entries of ``/api/.../tree/{rev}/{folder}`` (None if there is no such folder)."""
        if folder not in self.folders:
            return None
        prefix = f"{folder}/" if folder else ""
        entries = []
        for sub in sorted(self.folders - {""}):
            if sub.startswith(prefix) and (recursive or "/" not in sub[len(prefix) :]):
                # RepoFolder needs `oid`; any stable 40-hex id will do.
                oid = hashlib.sha1(f"tree {self.repo.sha} {sub}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": sub})
        for path, content in self.blobs.items():
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                # RepoFile needs `path`, `size` and `oid`; no `lfs`/`xetHash`, so plain HTTP downloads.
                entries.append({"type": "file", "oid": self.oids[path], "size": len(content), "path": path})
        return entries


class _Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that can close idle keep-alive connections, so shutdown never waits on them."""

    daemon_threads = True

    def __init__(self, hub: StandinHub) -> None:
        self.hub = hub
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # the peer may have closed it meanwhile
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.1 as the Hub speaks it; every response carries Content-Length, so keep-alive is safe.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:
        pass  # keep test output clean; requests are recorded in StandinHub.requests instead

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _refuse(self) -> None:
        # Uploads and other writes are not served; close the connection rather than read a body.
        self.server.hub._record(self.command, unquote(urlsplit(self.path).path))
        self.close_connection = True
        self._json(405, {"error": f"{self.command} is not served by the stand-in hub"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    # --- responses -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # HEAD gets the GET's headers, Content-Length included, and no body
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    def _error(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        # hf_raise_for_status maps X-Error-Code to RepositoryNotFoundError, RevisionNotFoundError, ...
        self._json(
            404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        )

    # --- routing ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.server.hub._record(self.command, unquote(url.path))
        # Split before unquoting: the client quotes revisions (and tree paths) with safe="", so a "/"
        # inside one arrives as %2F and must stay within its segment.
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _API_TYPES:
            self._api(_API_TYPES[segments[1]], segments[2:], query)
        elif segments and segments[0] == "datasets":
            self._resolve("dataset", segments[1:])
        else:
            self._resolve("model", segments)

    def _find(
        self, repo_type: str, segments: list[str], ids: tuple[int, ...]
    ) -> tuple[_ServedRepo | None, int]:
        """The served repo whose id is the first n segments (n from ``ids``), and that n."""
        for n in ids:
            served = self.server.hub._repos.get((repo_type, "/".join(segments[:n])))
            if served is not None and len(segments) >= n:
                return served, n
        return None, 0

    def _revision_ok(self, served: _ServedRepo, revision: str) -> bool:
        if revision in ("main", served.repo.sha):
            return True
        self._error("RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    def _api(self, repo_type: str, rest: list[str], query: dict[str, list[str]]) -> None:
        served, n = self._find(repo_type, rest, (2, 1))
        if served is None:
            self._error("RepoNotFound", "Repository not found")
            return
        after = rest[n:]
        if not after or (after[0] == "revision" and len(after) == 2):
            # model_info/dataset_info: without `revision` the client calls the bare route (default branch).
            revision = after[1] if after else "main"
            if self._revision_ok(served, revision):
                self._json(200, served.info(with_blobs=query.get("blobs", [""])[0].lower() == "true"))
        elif after[0] == "tree" and len(after) >= 2:
            # list_repo_tree: one page, so no `Link: <...>; rel="next"` header is ever needed.
            if self._revision_ok(served, after[1]):
                folder = "/".join(after[2:]).strip("/")
                recursive = query.get("recursive", [""])[0].lower() == "true"
                entries = served.tree(folder, recursive)
                if entries is None:
                    self._error("EntryNotFound", f"{folder} does not exist on {after[1]}")
                else:
                    self._json(200, entries)
        else:
            self._json(404, {"error": "Sorry, the stand-in hub does not serve this route"})

    def _resolve(self, repo_type: str, segments: list[str]) -> None:
        # /{repo}/resolve/{rev}/{path}: the repo id is whatever precedes "resolve" (one or two segments).
        at = next((i for i in (2, 1) if len(segments) > i + 1 and segments[i] == "resolve"), None)
        if at is None:
            self._json(404, {"error": "Sorry, the stand-in hub does not serve this route"})
            return
        served = self.server.hub._repos.get((repo_type, "/".join(segments[:at])))
        if served is None:
            self._error("RepoNotFound", "Repository not found")
            return
        revision, path = segments[at + 1], "/".join(segments[at + 2 :])
        if not self._revision_ok(served, revision):
            return
        # The client needs X-Repo-Commit (the commit it caches under) on every answer, misses included:
        # it records a miss under .no_exist/<commit>/.
        commit = {"X-Repo-Commit": served.repo.sha}
        content = served.blobs.get(path)
        if content is None:
            self._error("EntryNotFound", "Entry not found", commit)
            return
        headers = {
            **commit,
            # The client keys its blob cache on the ETag (X-Linked-Etag only matters for LFS redirects).
            "ETag": f'"{served.oids[path]}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        status, body = 200, content
        match = _RANGE_RE.fullmatch(self.headers.get("Range", "").strip())
        if match and any(match.groups()):
            # http_get resumes an interrupted download with "bytes=N-"; serve single ranges only.
            first, last = match.groups()
            size = len(content)
            start = int(first) if first else max(size - int(last), 0)
            end = min(int(last), size - 1) if first and last else size - 1
            if start >= size or start > end:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(status, body, headers)


class StandinHub:
    """A running stand-in hub: point ``HF_ENDPOINT`` at :attr:`url`."""

    def __init__(self, repos: list[Repo]) -> None:
        self._repos: dict[tuple[str, str], _ServedRepo] = {}
        for repo in repos:
            key = (repo.repo_type, repo.repo_id)
            if key in self._repos:
                raise ValueError(f"{repo.repo_type} {repo.repo_id} is served twice")
            self._repos[key] = _ServedRepo(repo)
        self._requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.url = ""

    @property
    def requests(self) -> list[tuple[str, str]]:
        """A copy of the (method, percent-decoded path without query) pairs seen so far, in order."""
        with self._lock:
            return list(self._requests)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))


@contextlib.contextmanager
def serve(repos: list[Repo]) -> Iterator[StandinHub]:
    """Serve ``repos`` on 127.0.0.1 (a free port) while the ``with`` block runs."""
    hub = StandinHub(repos)
    server = _Server(hub)
    host, port = server.server_address[:2]
    hub.url = f"http://{host}:{port}"
    # A short poll interval so leaving the block does not wait the default half second.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="standin-hub", daemon=True
    )
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        thread.join(timeout=30)


def client_env(hub: StandinHub, home: Path) -> dict[str, str]:
    """The environment of a subprocess whose hub client talks to ``hub`` only: this process's
    environment without proxies or any HF setting (token, offline mode, home, cache, endpoint),
    then ``HF_ENDPOINT`` at the stand-in and a private home and cache under ``home``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.lower().endswith("_proxy")
        and not name.upper().startswith(("HF_", "HUGGINGFACE"))
        and name.upper() != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home / "hf_home"),  # no user token or config can leak in
        HF_HUB_CACHE=str(home / "cache"),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        # The client's 10 s defaults are ample on loopback, but a loaded machine should not fail a test.
        HF_HUB_ETAG_TIMEOUT="60",
        HF_HUB_DOWNLOAD_TIMEOUT="60",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env
