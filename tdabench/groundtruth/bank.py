"""A ground-truth bank on disk: its subsets, its format, its manifest, reading and checking it.

A bank is a directory of plain files::

    manifest.json        spec, spec hash, ground-truth version, data and model fingerprints,
                         library versions
    membership.npy       (M, N) bool: which pool examples each subset holds
    losses/mJJJJ-rR.npy  (T,) float64: every target's loss after fine-tune j, training seed r

Each loss file is written atomically by the worker that computed it, so an interrupted build
resumes where it stopped; a truncated or corrupt file is reported, removed and recomputed.
Ground-truth label of target t on subset j: minus its loss, averaged over the training seeds
(higher = the subset helped the target more). Published ground truth (subsets and losses made
elsewhere) is imported into the same format by :func:`import_bank`. Building a bank is
:mod:`tdabench.groundtruth.building`; joining parts is :mod:`tdabench.groundtruth.merging`.
"""

from __future__ import annotations

import math
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tdabench.data import examples_fingerprint
from tdabench.device import CPU, Device
from tdabench.errors import ConfigError, UserError
from tdabench.seeds import subsets_rng
from tdabench.spec import GROUNDTRUTH_VERSION, TaskSpec, spec_differences, spec_hash, stable_hash
from tdabench.store import atomic_write_json, atomic_write_npy, cache_dir, read_json
from tdabench.task import PublishedGroundTruth, TaskData

FORMAT = 1


class BankError(UserError, RuntimeError):
    """A bank on disk cannot be used as it is."""


class BankMismatch(BankError):
    """A bank on disk was built for another spec, other data, another model or another
    ground-truth version."""


MIN_SUBSET_SIZE = 2  # pool examples per subset: a subset of one is a leave-all-but-one design


class CorruptBank(BankError):
    """A bank's manifest or membership file cannot be read."""


def versions() -> dict[str, str]:
    import scipy
    import torch
    import transformers

    from tdabench import __version__

    return {"tdabench": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def pool_minimums(spec: TaskSpec, n_candidates: int) -> list[str]:
    """The subset-size minimums for a pool of ``n_candidates`` examples subsets are drawn from
    (UserError if subsets would be empty, whole or single); warnings (see :func:`minimums`)."""
    gt = spec.groundtruth
    k = int(round(gt.fraction * n_candidates))
    if k < MIN_SUBSET_SIZE or k >= n_candidates:
        need = math.ceil((MIN_SUBSET_SIZE - 0.5) / gt.fraction)
        raise ConfigError(
            f"the pool has {n_candidates} examples, so subsets of groundtruth.fraction="
            f"{gt.fraction:g} hold {k}: each subset needs {MIN_SUBSET_SIZE} or more examples and "
            f"must leave some out. Use more data (a pool of at least {need} at this fraction) "
            f"or another --set groundtruth.fraction")
    batch = spec.finetune.batch_size
    if gt.n_seeds >= 2 and k <= batch:
        return [f"every subset ({k} examples) fits in one batch of finetune.batch_size={batch}: "
                f"the {gt.n_seeds} training seeds only reorder that batch, so they measure no "
                "noise (the noise ceiling reads 1) and the extra seeds are wasted compute; use "
                f"--set finetune.batch_size={max(1, k // 2)} (or a larger groundtruth.fraction), "
                "or --set groundtruth.n_seeds=1"]
    return []


def sample_subsets(data: TaskData, spec: TaskSpec) -> np.ndarray:
    """(M, N) bool membership of M random subsets of the pool, seeded by ``groundtruth.seed``.

    Subsets are drawn from the pool examples that are not targets (all of them, when pool and
    targets are disjoint), k = round(fraction * candidates) each (ConfigError when the pool is
    too small for subsets of at least two examples that leave some out).
    """
    gt = spec.groundtruth
    target_ids = {ex.id for ex in data.targets}
    candidates = np.array([i for i, ex in enumerate(data.pool) if ex.id not in target_ids], dtype=np.int64)
    pool_minimums(spec, len(candidates))
    k = int(round(gt.fraction * len(candidates)))
    rng = subsets_rng(gt)
    membership = np.zeros((gt.n_subsets, len(data.pool)), dtype=bool)
    for m in range(gt.n_subsets):
        membership[m, rng.choice(candidates, k, replace=False)] = True
    return membership


@dataclass
class GroundTruthBank:
    """A (possibly incomplete) bank.

    ``membership``: (M, N) bool, pool example n in subset m; ``losses``: (M, R, T), NaN where
    not yet computed (R training seeds); ``discarded``: corrupt loss files removed on opening
    (they are recomputed).
    """

    path: Path
    spec: TaskSpec
    membership: np.ndarray
    losses: np.ndarray
    discarded: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.losses).all())

    def labels(self) -> np.ndarray:
        """(T, M) ground-truth labels: minus the target's loss, mean over training seeds."""
        return -self.losses.mean(axis=1).T


def default_bank_path(spec: TaskSpec, device: Device = CPU) -> Path:
    """Under the cache, by spec hash (and ``-bf16`` for banks fine-tuned under bf16 autocast)."""
    return cache_dir() / "groundtruth" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}{device.suffix}"


def own_bank_path(spec: TaskSpec, data: TaskData, device: Device = CPU) -> Path:
    """Where a bank that a method builds for itself lives: by spec hash and the targets it
    labels (a method's banks differ in their targets, e.g. AirRep's dev examples, which the
    spec does not name), apart from the evaluation banks."""
    targets = stable_hash([ex.id for ex in data.targets], 8)
    return (cache_dir() / "method-banks"
            / f"{spec.task}-{spec.preset}-{spec_hash(spec)}-{targets}{device.suffix}")


def finished_on_disk(spec: TaskSpec, path: Path) -> bool:
    """Whether the bank at ``path`` has a manifest and a loss file for every (subset, seed)
    that ``spec`` asks for (whether building it would fine-tune nothing)."""
    gt = spec.groundtruth
    return (Path(path) / "manifest.json").exists() and all(
        loss_path(path, m, r).exists() for m in range(gt.n_subsets) for r in range(gt.n_seeds))


def manifest(spec: TaskSpec, data: TaskData, model_fingerprint: str, device: Device = CPU) -> dict:
    """The manifest a bank for ``spec``, ``data`` and this base model must carry; ``compute``
    states the device and precision the fine-tunes ran with."""
    return {
        "compute": device.describe(),
        "format": FORMAT,
        "groundtruth_version": GROUNDTRUTH_VERSION,
        "spec": spec.to_dict(),
        "spec_hash": spec_hash(spec),
        "data": {"pool": examples_fingerprint(data.pool),
                 "targets": examples_fingerprint(data.targets),
                 "warmup": examples_fingerprint(data.warmup)},
        "model_fingerprint": model_fingerprint,
        "shape": {"subsets": spec.groundtruth.n_subsets, "seeds": spec.groundtruth.n_seeds,
                  "targets": len(data.targets), "pool": len(data.pool)},
        "versions": versions(),
    }


REBUILD = "Use another --bank directory, or delete this one to rebuild it."


def check_manifest(stored: dict, expected: dict, path: Path, advice: str = REBUILD) -> None:
    """Refuse a bank whose ground-truth version, spec, data or model differs from what is asked
    for (manifests written before versions were recorded count as version 1)."""
    version = stored.get("groundtruth_version", 1)
    if version != expected.get("groundtruth_version", 1):
        raise BankMismatch(
            f"the ground-truth bank at {path} was built under ground-truth version {version}, "
            f"and this tdabench computes version {expected['groundtruth_version']} (the "
            "fine-tuning or loss code changed, so its losses are not comparable). " + advice)
    problems = spec_differences(stored.get("spec", {}), expected["spec"])
    for key in ("data", "model_fingerprint", "shape"):
        if stored.get(key) != expected[key]:
            problems.append(f"{key}: {stored.get(key)!r} -> {expected[key]!r}")
    dtypes = [m.get("compute", {}).get("dtype", "fp32") for m in (stored, expected)]
    if dtypes[0] != dtypes[1]:  # the device may differ (float rounding); the precision may not
        problems.append(f"dtype (fine-tuning precision): {dtypes[0]!r} -> {dtypes[1]!r}")
    if problems:
        raise BankMismatch(
            f"the ground-truth bank at {path} was built for another spec; differing fields:\n  "
            + "\n  ".join(problems) + "\n" + advice)


def read_manifest(path: Path) -> dict:
    """``path/manifest.json``; CorruptBank naming the file if it cannot be read."""
    file = Path(path) / "manifest.json"
    try:
        stored = read_json(file)
    except (ValueError, OSError) as err:
        raise CorruptBank(f"{file} is corrupt ({err}); delete the bank directory {path} to "
                          "rebuild it") from err
    if not isinstance(stored, dict):
        raise CorruptBank(f"{file} is not a bank manifest; delete the bank directory {path}")
    return stored


def read_membership(path: Path) -> np.ndarray:
    """``path/membership.npy``; CorruptBank naming the file if it cannot be read."""
    file = Path(path) / "membership.npy"
    try:
        membership = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptBank(f"{file} is corrupt ({err}); delete it (a fine-tuned bank redraws "
                          "it from its spec) or the bank directory") from err
    if membership.ndim != 2 or membership.dtype != bool:
        raise CorruptBank(f"{file} holds a {membership.dtype} array of shape {membership.shape}, "
                          "not (subsets, pool) bool; delete it or the bank directory")
    return membership


def loss_path(path: Path, subset: int, replicate: int) -> Path:
    return Path(path) / "losses" / f"m{subset:04d}-r{replicate}.npy"


def load_loss(file: Path, n_targets: int) -> np.ndarray | None:
    """A finished subset's losses, or None if the file is missing, truncated or corrupt."""
    try:
        arr = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return arr if arr.shape == (n_targets,) and np.isfinite(arr).all() else None


def open_bank(spec: TaskSpec, data: TaskData, model_fingerprint: str,
              path: Path | None = None, device: Device = CPU) -> GroundTruthBank:
    """Open (or create) the bank for ``spec`` and read every finished subset from disk;
    a corrupt loss file is removed (and listed in ``discarded``) so that it is recomputed. A
    new bank's manifest states ``device`` (its dtype must match an existing bank's)."""
    path = Path(path) if path else default_bank_path(spec, device)
    expected = manifest(spec, data, model_fingerprint, device)
    membership = sample_subsets(data, spec) if spec.groundtruth.source == "finetune" else None
    if (path / "manifest.json").exists():
        check_manifest(read_manifest(path), expected, path)
        stored = read_membership(path) if (path / "membership.npy").exists() else None
        if membership is None:
            membership = stored
        elif stored is not None and not np.array_equal(stored, membership):
            raise BankMismatch(f"{path}/membership.npy differs from the subsets this spec draws "
                               "(another numpy version?); delete the bank to rebuild it")
        elif stored is None:
            atomic_write_npy(path / "membership.npy", membership)
    elif membership is None:
        raise BankError(f"no published ground truth has been imported at {path}")
    else:
        atomic_write_npy(path / "membership.npy", membership)
        atomic_write_json(path / "manifest.json", expected)
    gt = spec.groundtruth
    losses = np.full((gt.n_subsets, gt.n_seeds, len(data.targets)), np.nan)
    discarded = []
    for m in range(gt.n_subsets):
        for r in range(gt.n_seeds):
            file = loss_path(path, m, r)
            if not file.exists():
                continue
            got = load_loss(file, len(data.targets))
            if got is None:
                file.unlink(missing_ok=True)
                discarded.append(file)
            else:
                losses[m, r] = got
    if discarded:
        print(f"tdabench: discarded {len(discarded)} corrupt or truncated loss file(s) of the "
              f"bank at {path} (first: {discarded[0].name}); they are recomputed", file=sys.stderr)
    return GroundTruthBank(path, spec, membership, losses, discarded)


def import_bank(spec: TaskSpec, data: TaskData, published: PublishedGroundTruth,
                path: Path | None = None) -> GroundTruthBank:
    """Store published ground truth in the bank format (checked against the spec).
    ``groundtruth.n_subsets=0`` takes as many subsets as were published."""
    membership, losses, provenance = published.membership, published.losses, published.provenance
    path = Path(path) if path else default_bank_path(spec)
    losses = losses[:, None, :] if losses.ndim == 2 else losses
    if spec.groundtruth.n_subsets == 0:
        spec = replace(spec, groundtruth=replace(spec.groundtruth, n_subsets=len(membership)))
    gt = spec.groundtruth
    expected_shape = (gt.n_subsets, len(data.pool))
    if membership.shape != expected_shape or losses.shape != (gt.n_subsets, gt.n_seeds, len(data.targets)):
        raise ConfigError(f"published ground truth has {membership.shape[0]} subsets over "
                          f"{membership.shape[1]} pool examples and losses {losses.shape}; the spec "
                          f"expects {expected_shape} and ({gt.n_subsets}, {gt.n_seeds}, "
                          f"{len(data.targets)}): set groundtruth.n_subsets and n_seeds to match "
                          "(--set groundtruth.n_subsets=...)")
    if not np.isfinite(losses).all():
        raise BankError("published ground truth contains non-finite losses")
    expected = manifest(spec, data, provenance)
    if (path / "manifest.json").exists():  # open_bank refuses a manifest of another spec
        bank = open_bank(spec, data, provenance, path)
        if bank.complete and np.array_equal(bank.membership, membership):
            return bank
    atomic_write_npy(path / "membership.npy", membership.astype(bool))
    for m in range(losses.shape[0]):
        for r in range(losses.shape[1]):
            atomic_write_npy(loss_path(path, m, r), losses[m, r].astype(np.float64))
    atomic_write_json(path / "manifest.json", expected)  # last: a bank is valid once this exists
    return open_bank(spec, data, provenance, path)
