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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import examples_fingerprint
from .executors import run_local
from .spec import GroundTruthSpec, TaskSpec, spec_differences, spec_hash, stable_hash
from .store import atomic_write_json, atomic_write_npy, cache_dir, read_json
from .task import Task, TaskData

STREAMS = {"training": 7_001}  # seed streams of training banks (evaluation banks use none)


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


def sample_subsets(data: TaskData, spec: TaskSpec) -> np.ndarray:
    """(M, N) bool membership of M random subsets of the pool, seeded by ``groundtruth.seed``.

    Subsets are drawn from the pool examples that are not targets (all of them, when pool and
    targets are disjoint), k = round(fraction * candidates) each.
    """
    gt = spec.groundtruth
    target_ids = {ex.id for ex in data.targets}
    candidates = np.array([i for i, ex in enumerate(data.pool) if ex.id not in target_ids], dtype=np.int64)
    k = int(round(gt.fraction * len(candidates)))
    if not 0 < k < len(candidates):
        raise ValueError(f"groundtruth.fraction={gt.fraction} gives subsets of {k} of {len(candidates)}")
    rng = np.random.default_rng(gt.seed)
    membership = np.zeros((gt.n_subsets, len(data.pool)), dtype=bool)
    for m in range(gt.n_subsets):
        membership[m, rng.choice(candidates, k, replace=False)] = True
    return membership


def training_seed(spec: TaskSpec, subset: int, replicate: int) -> int:
    """The fine-tuning seed of subset ``subset``, replicate ``replicate``.

    Training banks (``groundtruth.stream`` set) draw from a separate seed stream, so they never
    share a fine-tuning seed with an evaluation bank.
    """
    gt = spec.groundtruth
    entropy = [gt.seed, subset, replicate] + ([] if gt.stream is None else [STREAMS[gt.stream], 1])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


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
    membership = sample_subsets(data, spec) if spec.groundtruth.source == "finetune" else None
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
class _Job:
    """One bank to fill: its spec, where it lives, its subsets, its targets."""

    spec: TaskSpec
    path: Path
    membership: np.ndarray
    targets: list


@dataclass
class _SubsetTrainer:
    """Per-worker state: the base model loaded once, pool and every bank's targets tokenised once."""

    lm: object
    initial_state: dict
    pool: list
    banks: list[_Job]


def _init_trainer(data: TaskData, banks: list[tuple[TaskSpec, Path, np.ndarray, list]]):
    from . import lm

    model_spec = banks[0][0].model
    target_lm = lm.load_base_model(model_spec, data.warmup, data.pool)
    state = {k: v.detach().clone() for k, v in target_lm.model.state_dict().items()}
    tok = target_lm.tokenizer
    return _SubsetTrainer(target_lm, state, lm.encode(tok, data.pool, model_spec),
                          [_Job(spec, path, membership, lm.encode(tok, targets, spec.model))
                           for spec, path, membership, targets in banks])


def _train_subset(state: _SubsetTrainer, job: tuple[int, int, int]) -> None:
    from . import lm

    b, subset, replicate = job
    bank = state.banks[b]
    model, pad = state.lm.model, state.lm.tokenizer.pad_token_id
    model.load_state_dict(state.initial_state)
    lm.finetune(model, lm.trainable_parameters(model, bank.spec.model),
                [state.pool[i] for i in np.flatnonzero(bank.membership[subset])], bank.spec.finetune,
                seed=training_seed(bank.spec, subset, replicate), pad_id=pad)
    atomic_write_npy(_loss_path(bank.path, subset, replicate),
                     lm.response_losses(model, bank.targets, pad))


def build_banks(items: list[tuple[TaskSpec, TaskData, Path | None]], workers: int = 1,
                desc: str = "ground truth") -> list[GroundTruthBank]:
    """Build (or resume) several banks over the same pool and base model in one worker pool:
    fine-tune every missing (bank, subset, seed)."""
    from . import lm

    first_spec, first_data = items[0][0], items[0][1]
    for spec, data, _ in items:
        if spec.groundtruth.source != "finetune":
            raise ValueError(f"{spec.task}/{spec.preset} uses published ground truth "
                             f"(groundtruth.source={spec.groundtruth.source!r}); it is imported, "
                             "not built. To regenerate it, use --set groundtruth.source=finetune")
        if spec.model != first_spec.model or data.pool != first_data.pool or data.warmup != first_data.warmup:
            raise ValueError("banks built together must share the model, pool and warm-up set")
    fingerprint = lm.load_base_model(first_spec.model, first_data.warmup, first_data.pool).fingerprint
    banks = [open_bank(spec, data, fingerprint, path) for spec, data, path in items]
    missing = [(b, m, r) for b, bank in enumerate(banks) for m in range(bank.losses.shape[0])
               for r in range(bank.losses.shape[1]) if not np.isfinite(bank.losses[m, r]).all()]
    payload = [(spec, bank.path, bank.membership, data.targets)
               for (spec, data, _), bank in zip(items, banks)]
    run_local(missing, _init_trainer, (first_data, payload), _train_subset, workers=workers, desc=desc)
    return [open_bank(spec, data, fingerprint, bank.path) for (spec, data, _), bank in zip(items, banks)]


def build_bank(spec: TaskSpec, data: TaskData, path: Path | None = None,
               workers: int = 1) -> GroundTruthBank:
    """Build (or resume) the bank for ``spec``: fine-tune every missing (subset, seed) pair."""
    return build_banks([(spec, data, path)], workers, f"ground truth {spec.task}/{spec.preset}")[0]


@dataclass(frozen=True)
class TrainingBankSpec:
    """A method's own training ground truth (e.g. AirRep's): ``n_splits`` splits, each with
    ``n_dev`` dev targets drawn from the pool and ``n_subsets`` subsets of ``fraction`` of the
    rest of the pool, fine-tuned once each on a seed stream of its own."""

    n_splits: int = 8
    n_dev: int = 100
    n_subsets: int = 50
    fraction: float = 0.1
    seed: int = 0


def training_splits(spec: TaskSpec, data: TaskData, tb: TrainingBankSpec
                    ) -> list[tuple[TaskSpec, TaskData]]:
    """The (spec, data) of each training split.

    No leakage by construction: dev targets are pool examples, so never the evaluation targets
    (checked); subsets never hold a split's own dev targets; fine-tuning seeds come from the
    ``training`` stream, which evaluation banks never use.
    """
    eval_ids = {ex.id for ex in data.targets}
    if any(ex.id in eval_ids for ex in data.pool):
        raise ValueError("the pool contains evaluation targets; a training bank would leak them")
    if not 0 < tb.n_dev < len(data.pool):
        raise ValueError(f"n_dev={tb.n_dev} must be between 1 and the pool size {len(data.pool)}")
    out = []
    for split in range(tb.n_splits):
        rng = np.random.default_rng([tb.seed, split, STREAMS["training"]])
        dev = [data.pool[i] for i in np.sort(rng.choice(len(data.pool), tb.n_dev, replace=False))]
        gt = GroundTruthSpec(n_subsets=tb.n_subsets, fraction=tb.fraction, n_seeds=1,
                             seed=tb.seed * 1_000 + split, stream="training")
        out.append((replace(spec, groundtruth=gt), replace(data, targets=dev)))
    return out


def build_training_bank(spec: TaskSpec, data: TaskData, tb: TrainingBankSpec, workers: int = 1
                        ) -> list[tuple[TaskData, GroundTruthBank]]:
    """Build (or resume) every split of a training bank; returns (split data, bank) pairs."""
    root = cache_dir() / "training-banks" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}" / stable_hash(tb)
    splits = training_splits(spec, data, tb)
    banks = build_banks([(s, d, root / f"split{i:03d}") for i, (s, d) in enumerate(splits)], workers,
                        f"training bank {spec.task}/{spec.preset}")
    return [(d, bank) for (_, d), bank in zip(splits, banks)]


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
