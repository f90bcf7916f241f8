"""Example records, their fingerprints, and data fetched from pinned registry archives."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from tdabench.errors import ConfigError, UserError
from tdabench.spec import Example, stable_hash
from tdabench.store import atomic_write_bytes, cache_dir, sha256_file
from tdabench.task import TaskData


class DataError(UserError, RuntimeError):
    """Task data could not be fetched, verified or parsed."""


def examples_fingerprint(examples: list[Example]) -> str:
    """sha256 over the records (id, prompt, response, source) in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(asdict(ex), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """The JSON-object lines of a file as (line number, object), and the malformed ones as
    (line number, what is wrong); blank lines are skipped. Callers decide how to report."""
    rows, errors = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                errors.append((lineno, f"not UTF-8: byte 0x{raw[err.start]:02x} at column {err.start + 1}"))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                errors.append((lineno, f"not valid JSON ({err.msg})"))
                continue
            if isinstance(row, dict):
                rows.append((lineno, row))
            else:
                errors.append((lineno, f"expected a JSON object, got {type(row).__name__}"))
    return rows, errors


def fetch_package_archive(package: str, version: str, filename: str, sha256: str) -> Path:
    """Download one pinned file of a package from the Python package index and verify it.

    The file is cached under ``<cache>/downloads/`` after the first use and its sha256 is
    checked every time, so a corrupted or substituted archive is never used. pip does the
    download, so whatever index pip is configured with (a mirror, a proxy) is used.
    """
    target = cache_dir() / "downloads" / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--only-binary=:all:" if filename.endswith(".whl") else "--no-binary=:all:",
                   "--dest", tmp, f"{package}=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / filename
            if proc.returncode != 0 or not got.exists():
                raise DataError(
                    f"could not download {filename} ({package}=={version}) from the package "
                    f"index: {proc.stderr.strip()[-500:] or 'file not in the download'}. "
                    f"Check the network, or place the file at {target} by hand.")
            got.replace(target)
    return _verified(target, sha256, f"{package}=={version}")


def pip_setting(name: str) -> str | None:
    """One of pip's settings (``index-url``, ``cert``, ...) as ``pip config list`` shows it:
    ``PIP_*`` variables first, then the ``download`` section, then ``global``."""
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("'\"")
    for section in (":env:", "download", "global"):
        if f"{section}.{name}" in values:
            return values[f"{section}.{name}"]
    return None


def pip_index_urls() -> list[str]:
    """The package indexes pip is configured with: ``index-url`` (PyPI if unset), then
    ``extra-index-url``."""
    extra = (pip_setting("extra-index-url") or "").split()
    return [pip_setting("index-url") or "https://pypi.org/simple", *extra]


def _urlopen(url: str | urllib.request.Request, timeout: float):
    """``urlopen`` trusting pip's ``cert`` bundle where pip is configured with one."""
    full_url = url.full_url if isinstance(url, urllib.request.Request) else url
    cert = pip_setting("cert") if full_url.startswith("https:") else None
    context = ssl.create_default_context(cafile=cert) if cert and os.path.exists(cert) else None
    return urllib.request.urlopen(url, timeout=timeout, context=context)


class _Anchors(HTMLParser):
    """The ``<a href>`` links of a PEP 503 simple page, as (href, text) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")
            self.links.append((self._href or "", ""))

    def handle_data(self, data):
        if self._href is not None:
            href, text = self.links[-1]
            self.links[-1] = (href, text + data)

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def _index_file_url(index: str, package: str, filename: str) -> str | None:
    """The download URL of ``filename`` on one index's simple page of ``package``, if listed."""
    page = f"{index.rstrip('/')}/{re.sub(r'[-_.]+', '-', package).lower()}/"
    if page.startswith("file:"):  # a local index is a folder per project, like pip reads it
        page = urllib.parse.urljoin(page, "index.html")
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with _urlopen(request, timeout=60) as resp:
            body = resp.read()
            kind = resp.headers.get("Content-Type", "")
            page = resp.geturl()
    except (OSError, ValueError):  # URLError is an OSError; a missing local index folder too
        return None
    if "json" in kind:
        files = json.loads(body).get("files", [])
        links = [(f.get("url", ""), f.get("filename", "")) for f in files]
    else:
        parser = _Anchors()
        parser.feed(body.decode("utf-8", "replace"))
        links = parser.links
    for href, text in links:
        name = urllib.parse.unquote(urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1])
        if filename in (name, text.strip()):
            return urllib.parse.urljoin(page, href)
    return None


def fetch_index_file(package: str, filename: str, sha256: str) -> Path:
    """Download one pinned file of a package straight from pip's package index, verified.

    For files that ``pip download`` cannot fetch: pip prepares a source archive's metadata
    (installing its build requirements and running its build backend) even with ``--no-deps``,
    and refuses some archives afterwards (e.g. ``bigbench`` 1.0.0 declares a direct-URL
    dependency). This reads the package's simple page (PEP 691 JSON or PEP 503 HTML) on the
    indexes pip is configured with (:func:`pip_index_urls`), downloads the file to
    ``<cache>/downloads/`` and checks its sha256 every time, like :func:`fetch_package_archive`.
    """
    target = cache_dir() / "downloads" / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        indexes = pip_index_urls()
        url = next((u for u in (_index_file_url(i, package, filename) for i in indexes) if u), None)
        if url is None:
            raise DataError(
                f"{filename} is not listed for {package!r} on the package indexes {indexes}. "
                f"Check the network, or place the file at {target} by hand.")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=120) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a download is not
            os.replace(tmp, target)
        except OSError as e:
            raise DataError(f"could not download {filename} from {url}: {e}. "
                            f"Check the network, or place the file at {target} by hand.") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return _verified(target, sha256, f"{package} ({filename})")


def cached_examples(name: str, key: dict, build: Callable[[], list[Example]]) -> list[Example]:
    """Examples extracted once and kept as JSONL under ``<cache>/examples/``.

    ``key`` (JSON-able) must determine what ``build`` returns, e.g. the sha256 of the archive it
    reads and its extraction settings; the file is named by its hash, so other settings get their
    own file. Written atomically: a killed extraction leaves no half file.
    """
    path = cache_dir() / "examples" / f"{name}-{stable_hash(key)}.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [Example(**json.loads(line)) for line in f if line.strip()]
    examples = build()
    text = "".join(json.dumps(asdict(ex), ensure_ascii=False) + "\n" for ex in examples)
    atomic_write_bytes(path, text.encode("utf-8"))
    return examples


def balanced_split(examples: list[Example], n_pool: int, n_targets: int, seed: int,
                   max_warmup: int | None = None, balanced_pool: bool = True,
                   from_back: bool = False) -> TaskData:
    """Seeded split balanced over sources: targets, then the pool, drawn round-robin.

    The examples are shuffled with ``seed`` and grouped by source; targets take one example
    from each source in turn (sources in sorted order, exhausted ones skipped; each source's
    first example in shuffled order, or its last with ``from_back``) until there are
    ``n_targets``, then the pool is drawn the same way from what is left (or, without
    ``balanced_pool``, the first ``n_pool`` of what is left in shuffled order). Everything
    else, in shuffled order and cut to ``max_warmup`` if given, is the warm-up set.
    """
    if n_pool + n_targets >= len(examples):
        raise ConfigError(f"data.n_pool + data.n_targets = {n_pool + n_targets} must be below the "
                          f"{len(examples)} available examples; lower them with --set data.n_pool=...")
    rng = np.random.default_rng(seed)
    order = [examples[i] for i in rng.permutation(len(examples))]
    queues: dict[str, deque[Example]] = {}
    for ex in order:
        queues.setdefault(ex.source, deque()).append(ex)
    sources = sorted(queues)

    def draw(n: int) -> list[Example]:
        out: list[Example] = []
        while len(out) < n:
            for source in sources:
                if queues[source] and len(out) < n:
                    out.append(queues[source].pop() if from_back else queues[source].popleft())
        return out

    targets = draw(n_targets)
    if balanced_pool:
        pool = draw(n_pool)
    else:
        chosen = {ex.id for ex in targets}
        pool = [ex for ex in order if ex.id not in chosen][:n_pool]
    taken = {ex.id for ex in targets + pool}
    warmup = [ex for ex in order if ex.id not in taken]
    return TaskData(pool=pool, targets=targets, warmup=warmup[:max_warmup])


def cap_per_source(by_source: dict[str, list[tuple[str, str]]], min_per_source: int,
                   max_per_source: int) -> list[Example]:
    """Examples from (prompt, response) pairs grouped by source: sources with fewer than
    ``min_per_source`` pairs are dropped, and each keeps the ``max_per_source`` pairs with the
    smallest sha256 of (source, prompt, response), a choice independent of file order and seed."""
    examples = []
    for source in sorted(by_source):
        pairs = by_source[source]
        if len(pairs) < min_per_source:
            continue
        def digest(pair: tuple[str, str], source: str = source) -> str:
            return hashlib.sha256(f"{source}\n{pair[0]}\n{pair[1]}".encode()).hexdigest()

        pairs = sorted(pairs, key=digest)
        for i, (prompt, response) in enumerate(pairs[:max_per_source]):
            examples.append(Example(f"{source}-{i:04d}", prompt, response, source))
    return examples


def task_options(task: str, spec_options: dict[str, Any], defaults: dict[str, Any]
                 ) -> dict[str, Any]:
    """A task's data options: ``defaults`` updated by the spec's, unknown names refused."""
    unknown = set(spec_options) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {task} data options {sorted(unknown)}; valid: {sorted(defaults)}")
    return {**defaults, **spec_options}


def selected_examples(task: str, options: dict[str, Any], selection: tuple[str, ...], key: dict,
                      read: Callable[..., list[Example]]) -> list[Example]:
    """The examples ``read(**chosen)`` selects from a verified archive, where ``chosen`` are
    the ``selection`` entries of ``options``; extracted once, then cached under ``key`` (the
    archive's hash and extraction format) and ``chosen`` (see :func:`cached_examples`)."""
    chosen = {k: options[k] for k in selection}
    return cached_examples(task, {**key, **chosen}, lambda: read(**chosen))


def load_with_options(task: str, spec: Any, defaults: dict[str, Any],
                      examples: Callable[[dict[str, Any]], list[Example]]) -> TaskData:
    """A task's data for ``spec`` (a DataSpec): its options (``defaults`` updated by the
    spec's), ``examples(options)``, then :func:`balanced_split` with ``options["max_warmup"]``."""
    options = task_options(task, spec.options, defaults)
    return balanced_split(examples(options), spec.n_pool, spec.n_targets, spec.seed, options["max_warmup"])


def _verified(target: Path, sha256: str, what: str) -> Path:
    """``target`` if its sha256 is ``sha256``; else a DataError naming it and the fix."""
    actual = sha256_file(target)
    if actual != sha256:
        raise DataError(f"{target} has sha256 {actual}, expected {sha256} for {what}. "
                        "Delete the file to download it again.")
    return target
