"""Plain files written atomically, and where tdabench keeps its caches.

Every file tdabench produces is written to a temporary name in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX), so a killed process leaves either
the old file or the new one, never half of one; a directory is built the same way
(:func:`atomic_dir`). Files get the usual permissions (0644 under the usual umask), not the
private 0600 of a temporary file, so that a shared cache can be read by its other users.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tdabench.errors import UserError

CACHE_ENV = "TDABENCH_CACHE"


def cache_dir() -> Path:
    """Root of every cached artefact: ``$TDABENCH_CACHE``, else ``~/.cache/tdabench``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "tdabench")
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise UserError(f"{CACHE_ENV}={root} is a file; set it to a directory (or unset it for "
                        "~/.cache/tdabench)")
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new directory gets under this process's umask (0755 under 022)."""
    return 0o777 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory at a temporary name beside ``path`` and rename it to ``path`` when
    the block succeeds; remove it when the block fails (nothing is left behind).

    If ``path`` exists by then (another process built the same thing first), that copy is kept
    and this one removed, unless ``overwrite``, which replaces it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes it private (0700)
        yield tmp
        if overwrite and path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same directory first
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (0 if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
