"""Joining ground-truth banks built in parts (``tdabench merge-banks``).

A bank can be built in parts (``--subsets 0:50`` on one machine, ``--subsets 50:`` on
another); :func:`merge_banks` checks that the parts were built for the same spec, data, base
model and ground-truth version and that a fine-tune computed twice agrees, then writes one bank.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tdabench.errors import ConfigError
from tdabench.groundtruth.bank import (
    BankError,
    BankMismatch,
    check_manifest,
    load_loss,
    loss_path,
    read_manifest,
    read_membership,
)
from tdabench.spec import stable_hash
from tdabench.store import atomic_write_json, atomic_write_npy

# Largest difference (in nats of mean response loss) tolerated between two copies of the same
# (subset, seed). On one machine the same spec and seed give bit-identical losses (difference
# 0; also across executors and worker counts). Another machine can round differently (other
# BLAS kernels, instruction sets: float32 reduction order), which a short fine-tune carries into
# the final loss at roughly 1e-6..1e-5. What the labels are made of is far larger: on
# chatterbot/tiny, another training seed moves a target's loss by 0.067 (median) and the
# subsets spread it by 0.15 (std per target). 1e-4 lies between the two: a copy that differs by
# more came from another computation. Raise it (--atol) for nondeterministic GPU kernels.
MERGE_ATOL = 1e-4
_LOSS_FILE = re.compile(r"m(\d+)-r(\d+)\.npy")


@dataclass
class MergeReport:
    """What :func:`merge_banks` found and wrote.

    ``found``: loss files read across the sources (destination included); ``unique``: distinct
    (subset, seed) pairs among them; ``duplicates``: pairs present in more than one source (each
    counted once in the bank, compared for agreement); ``max_abs_diff``: largest difference
    between two copies of a pair (0.0 when none, or when all copies are identical);
    ``written``: files added to the destination; ``total``: subsets x seeds of the spec.
    """

    into: Path
    sources: list[Path]
    found: int = 0
    unique: int = 0
    duplicates: int = 0
    max_abs_diff: float = 0.0
    written: int = 0
    total: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.unique == self.total


def _bank_files(path: Path, n_subsets: int, n_seeds: int, n_targets: int
                ) -> dict[tuple[int, int], np.ndarray]:
    """Every valid finished (subset, seed) of the bank at ``path`` (corrupt files are skipped,
    never removed: a merge only reads its sources)."""
    out = {}
    for file in sorted((path / "losses").glob("m*-r*.npy")):
        match = _LOSS_FILE.fullmatch(file.name)
        if not match:
            continue
        key = (int(match.group(1)), int(match.group(2)))
        if key[0] >= n_subsets or key[1] >= n_seeds:
            raise BankMismatch(f"{file} lies outside the bank's {n_subsets} subsets x {n_seeds} "
                               "seeds: the directory holds files of another bank; remove them")
        losses = load_loss(file, n_targets)
        if losses is not None:
            out[key] = losses
    return out


def _read_part(path: Path) -> tuple[dict, np.ndarray]:
    """A source bank's manifest and membership (both must exist)."""
    if not (path / "manifest.json").exists():
        raise BankError(f"{path} is not a ground-truth bank (no manifest.json)")
    if not (path / "membership.npy").exists():
        raise BankError(f"{path} is not a complete ground-truth bank (no membership.npy)")
    return read_manifest(path), read_membership(path)


def _advice(first: Path) -> str:
    return (f"Only parts of one bank (same task, preset, --set values, data and base model, "
            f"built by the same tdabench) can be merged: leave this one out, or merge it with "
            f"the parts of its own bank instead of {first}.")


def merge_banks(sources: Sequence[Path], into: Path, atol: float = MERGE_ATOL) -> MergeReport:
    """Join banks built in parts (same spec, data and base model) into the bank at ``into``.

    The manifests must agree (:func:`check_manifest`) and so must the subsets. A (subset, seed)
    found in more than one place (the destination counts as a source, and comes first) is kept
    once, from the first place it was found; its copies are compared, and the merge is refused
    (nothing written) if any two differ by more than ``atol`` (see :data:`MERGE_ATOL`).
    """
    into = Path(into)
    places = [into] if (into / "manifest.json").exists() else []
    for src in map(Path, sources):
        if src.resolve() not in {p.resolve() for p in places}:
            places.append(src)
    if not places or places == [into]:
        raise ConfigError("merge-banks needs at least one source bank other than the destination")
    if not (into / "manifest.json").exists() and any((into / "losses").glob("*.npy")):
        raise BankMismatch(f"{into} holds loss files but no manifest.json; refusing to merge into it")
    reference, membership = _read_part(places[0])
    report = MergeReport(into, places)
    versions_seen = {stable_hash(reference.get("versions"))}
    shape = reference["shape"]
    found: dict[tuple[int, int], list[np.ndarray]] = {}
    for place in places:
        manifest, members = _read_part(place)
        check_manifest(manifest, reference, place, _advice(places[0]))
        if not np.array_equal(members, membership):
            raise BankMismatch(f"{place}/membership.npy differs from {places[0]}/membership.npy: "
                               f"they hold other subsets. {_advice(places[0])}")
        versions_seen.add(stable_hash(manifest.get("versions")))
        for key, losses in _bank_files(place, shape["subsets"], shape["seeds"], shape["targets"]).items():
            found.setdefault(key, []).append(losses)
    if len(versions_seen) > 1:
        report.notes.append("the sources were built with different library versions "
                            "(see each manifest.json); their shared fine-tunes were compared")
    disagreements = []
    for key, copies in found.items():
        report.found += len(copies)
        if len(copies) > 1:
            report.duplicates += 1
            diff = float(np.max(np.ptp(np.stack(copies), axis=0)))
            report.max_abs_diff = max(report.max_abs_diff, diff)
            if diff > atol:
                disagreements.append((diff, key))
    report.unique, report.total = len(found), shape["subsets"] * shape["seeds"]
    if disagreements:
        worst = ", ".join(f"subset {m} seed {r}: {d:.3g}" for d, (m, r) in sorted(disagreements)[::-1][:5])
        raise BankMismatch(
            f"{len(disagreements)} fine-tune(s) computed in more than one source disagree by more "
            f"than atol={atol:g} (largest difference {report.max_abs_diff:.3g}; {worst}). Same spec "
            "and seed should give the same losses: check the sources' library versions and "
            "hardware, or raise --atol if their kernels are known to be nondeterministic.")
    if places[0] != into:
        atomic_write_npy(into / "membership.npy", membership)
    owned = _bank_files(into, shape["subsets"], shape["seeds"], shape["targets"]) if places[0] == into else {}
    for (m, r), copies in sorted(found.items()):
        if (m, r) not in owned:
            atomic_write_npy(loss_path(into, m, r), copies[0])
            report.written += 1
    if places[0] != into:
        atomic_write_json(into / "manifest.json", reference)  # last: the bank is valid from here
    return report
