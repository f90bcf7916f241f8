"""Counterfactual ground truth: fine-tune the target LM on random pool subsets, record losses.

A bank is a directory of plain files::

    manifest.json        spec, spec hash, data and model fingerprints, library versions
    membership.npy       (M, N) bool: which pool examples each subset holds
    losses/mJJJJ-rR.npy  (T,) float64: every target's loss after fine-tune j, training seed r

Each loss file is written atomically by the worker that computed it, so an interrupted build
resumes where it stopped; a truncated or corrupt file is detected, removed and recomputed.
Ground-truth label of target t on subset j: minus its loss, averaged over the training seeds
(higher = the subset helped the target more). Published ground truth (subsets and losses made
elsewhere) is imported into the same format by :func:`import_bank`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import examples_fingerprint
from .executors import run_local
from .spec import TaskSpec, spec_differences, spec_hash
from .store import atomic_write_json, atomic_write_npy, cache_dir, read_json
from .task import Task, TaskData


class BankMismatch(RuntimeError):
    """A bank on disk was built for another spec, other data or another model."""


def versions() -> dict[str, str]:
    import scipy
    import torch
    import transformers

    from . import __version__

    return {"tdabench": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def sample_subsets(n_pool: int, spec: TaskSpec) -> np.ndarray:
    """(M, N) bool membership of M random subsets of k = round(fraction * N) pool examples,
    seeded by ``groundtruth.seed``."""
    gt = spec.groundtruth
    k = int(round(gt.fraction * n_pool))
    if not 0 < k < n_pool:
        raise ValueError(f"groundtruth.fraction={gt.fraction} gives subsets of {k} of {n_pool}")
    rng = np.random.default_rng(gt.seed)
    membership = np.zeros((gt.n_subsets, n_pool), dtype=bool)
    for m in range(gt.n_subsets):
        membership[m, rng.choice(n_pool, k, replace=False)] = True
    return membership


def training_seed(spec: TaskSpec, subset: int, replicate: int) -> int:
    """The fine-tuning seed of subset ``subset``, replicate ``replicate``."""
    return int(np.random.SeedSequence([spec.groundtruth.seed, subset, replicate]).generate_state(1)[0])


@dataclass
class GroundTruthBank:
    """A (possibly incomplete) bank.

    ``membership``: (M, N) bool, pool example n in subset m; ``losses``: (M, R, T), NaN where
    not yet computed (R training seeds).
    """

    path: Path
    spec: TaskSpec
    membership: np.ndarray
    losses: np.ndarray

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.losses).all())

    def labels(self) -> np.ndarray:
        """(T, M) ground-truth labels: minus the target's loss, mean over training seeds."""
        return -self.losses.mean(axis=1).T


def default_bank_path(spec: TaskSpec) -> Path:
    return cache_dir() / "groundtruth" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}"


def _manifest(spec: TaskSpec, data: TaskData, model_fingerprint: str) -> dict:
    return {
        "format": 1,
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


def check_manifest(stored: dict, expected: dict, path: Path) -> None:
    """Refuse a bank whose spec, data or model differs from what is being asked for."""
    problems = spec_differences(stored.get("spec", {}), expected["spec"])
    for key in ("data", "model_fingerprint", "shape"):
        if stored.get(key) != expected[key]:
            problems.append(f"{key}: {stored.get(key)!r} -> {expected[key]!r}")
    if problems:
        raise BankMismatch(
            f"the ground-truth bank at {path} was built for another spec; differing fields:\n  "
            + "\n  ".join(problems)
            + "\nUse another --bank directory, or delete this one to rebuild it.")


def _loss_path(path: Path, subset: int, replicate: int) -> Path:
    return path / "losses" / f"m{subset:04d}-r{replicate}.npy"


def _read_loss(file: Path, n_targets: int) -> np.ndarray | None:
    """A finished subset's losses, or None (removing the file) if it is truncated or corrupt."""
    if not file.exists():
        return None
    try:
        arr = np.load(file, allow_pickle=False)
        if arr.shape == (n_targets,) and np.isfinite(arr).all():
            return arr
    except (ValueError, OSError, EOFError):
        pass
    file.unlink(missing_ok=True)
    return None


def open_bank(spec: TaskSpec, data: TaskData, model_fingerprint: str,
              path: Path | None = None) -> GroundTruthBank:
    """Open (or create) the bank for ``spec`` and read every finished subset from disk."""
    path = Path(path) if path else default_bank_path(spec)
    expected = _manifest(spec, data, model_fingerprint)
    membership = sample_subsets(len(data.pool), spec) if spec.groundtruth.source == "finetune" \
        else None
    if (path / "manifest.json").exists():
        check_manifest(read_json(path / "manifest.json"), expected, path)
        stored = np.load(path / "membership.npy") if (path / "membership.npy").exists() else None
        if membership is None:
            membership = stored
        elif stored is not None and not np.array_equal(stored, membership):
            raise BankMismatch(f"{path}/membership.npy differs from the subsets this spec draws "
                               "(another numpy version?); delete the bank to rebuild it")
        elif stored is None:
            atomic_write_npy(path / "membership.npy", membership)
    elif membership is None:
        raise FileNotFoundError(f"no published ground truth has been imported at {path}")
    else:
        atomic_write_npy(path / "membership.npy", membership)
        atomic_write_json(path / "manifest.json", expected)
    gt = spec.groundtruth
    losses = np.full((gt.n_subsets, gt.n_seeds, len(data.targets)), np.nan)
    for m in range(gt.n_subsets):
        for r in range(gt.n_seeds):
            got = _read_loss(_loss_path(path, m, r), len(data.targets))
            if got is not None:
                losses[m, r] = got
    return GroundTruthBank(path, spec, membership, losses)


@dataclass(frozen=True)
class PublishedGroundTruth:
    """Ground truth made elsewhere: ``membership`` (M, N) bool, ``losses`` (M, T) or (M, R, T),
    ``provenance`` naming the source and its file hashes (stands in for the model fingerprint)."""

    membership: np.ndarray
    losses: np.ndarray
    provenance: str


def import_bank(spec: TaskSpec, data: TaskData, published: PublishedGroundTruth,
                path: Path | None = None) -> GroundTruthBank:
    """Store published ground truth in the bank format (checked against the spec)."""
    membership, losses, provenance = published.membership, published.losses, published.provenance
    path = Path(path) if path else default_bank_path(spec)
    losses = losses[:, None, :] if losses.ndim == 2 else losses
    gt = spec.groundtruth
    expected_shape = (gt.n_subsets, len(data.pool))
    if membership.shape != expected_shape or losses.shape != (gt.n_subsets, gt.n_seeds, len(data.targets)):
        raise ValueError(f"published ground truth has {membership.shape[0]} subsets over "
                         f"{membership.shape[1]} pool examples and losses {losses.shape}; the spec "
                         f"expects {expected_shape} and ({gt.n_subsets}, {gt.n_seeds}, {len(data.targets)})")
    if not np.isfinite(losses).all():
        raise ValueError("published ground truth contains non-finite losses")
    expected = _manifest(spec, data, provenance)
    if (path / "manifest.json").exists():
        check_manifest(read_json(path / "manifest.json"), expected, path)
        bank = open_bank(spec, data, provenance, path)
        if bank.complete and np.array_equal(bank.membership, membership):
            return bank
    atomic_write_npy(path / "membership.npy", membership.astype(bool))
    for m in range(losses.shape[0]):
        for r in range(losses.shape[1]):
            atomic_write_npy(_loss_path(path, m, r), losses[m, r].astype(np.float64))
    atomic_write_json(path / "manifest.json", expected)  # last: a bank is valid once this exists
    return open_bank(spec, data, provenance, path)


# --- the fine-tuning job, run inside executor workers ---------------------------------------

@dataclass
class _SubsetTrainer:
    """Per-worker state: the base model loaded once, pool and targets tokenised once."""

    spec: TaskSpec
    bank_path: Path
    membership: np.ndarray
    lm: object
    initial_state: dict
    pool: list
    targets: list


def _init_trainer(spec: TaskSpec, data: TaskData, bank_path: Path, membership: np.ndarray):
    from . import lm

    target_lm = lm.load_base_model(spec.model, data.warmup, data.pool)
    state = {k: v.detach().clone() for k, v in target_lm.model.state_dict().items()}
    return _SubsetTrainer(spec, bank_path, membership, target_lm, state,
                          lm.encode(target_lm.tokenizer, data.pool, spec.model),
                          lm.encode(target_lm.tokenizer, data.targets, spec.model))


def _train_subset(state: _SubsetTrainer, job: tuple[int, int]) -> None:
    from . import lm

    subset, replicate = job
    model, pad = state.lm.model, state.lm.tokenizer.pad_token_id
    model.load_state_dict(state.initial_state)
    lm.finetune(model, lm.trainable_parameters(model, state.spec.model),
                [state.pool[i] for i in np.flatnonzero(state.membership[subset])], state.spec.finetune,
                seed=training_seed(state.spec, subset, replicate), pad_id=pad)
    atomic_write_npy(_loss_path(state.bank_path, subset, replicate),
                     lm.response_losses(model, state.targets, pad))


def build_bank(spec: TaskSpec, data: TaskData, path: Path | None = None,
               workers: int = 1) -> GroundTruthBank:
    """Build (or resume) the bank for ``spec``: fine-tune every missing (subset, seed) pair."""
    from . import lm

    if spec.groundtruth.source != "finetune":
        raise ValueError(f"{spec.task}/{spec.preset} uses published ground truth "
                         f"(groundtruth.source={spec.groundtruth.source!r}); it is imported, not "
                         "built. To regenerate it, use --set groundtruth.source=finetune")

    model_fingerprint = lm.load_base_model(spec.model, data.warmup, data.pool).fingerprint
    bank = open_bank(spec, data, model_fingerprint, path)
    missing = [(m, r) for m in range(bank.losses.shape[0]) for r in range(bank.losses.shape[1])
               if not np.isfinite(bank.losses[m, r]).all()]
    run_local(missing, _init_trainer, (spec, data, bank.path, bank.membership), _train_subset,
              workers=workers, desc=f"ground truth {spec.task}/{spec.preset}")
    return open_bank(spec, data, model_fingerprint, bank.path)


def ensure_bank(task: Task, spec: TaskSpec, data: TaskData, path: Path | None = None,
                workers: int = 1) -> GroundTruthBank:
    """The complete bank for ``spec``: imported when the preset uses published ground truth,
    built (or resumed) otherwise."""
    if spec.groundtruth.source == "finetune":
        return build_bank(spec, data, path, workers)
    if spec.groundtruth.source != "published":
        raise ValueError(f"unknown groundtruth.source {spec.groundtruth.source!r}; "
                         "use 'finetune' or 'published'")
    if task.published_groundtruth is None:
        raise ValueError(f"task {task.name!r} has no published ground truth; "
                         "use --set groundtruth.source=finetune")
    return import_bank(spec, data, task.published_groundtruth(spec, data), path)
