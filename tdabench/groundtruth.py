"""A task's counterfactual ground truth: fine-tune the target LM on random pool subsets and
record the targets' losses (or import published ground truth), and a method's training bank.

The parts live in modules of their own, re-exported here as the ground-truth API:
:mod:`tdabench.bank` (a bank on disk: format, manifest, reading, checking, importing),
:mod:`tdabench.building` (the fine-tuning worker and its dispatch to the local or Ray
executor), :mod:`tdabench.seeds` (every seed derivation) and :mod:`tdabench.merging` (joining
banks built in parts). :func:`ensure_bank` gives the complete bank for a spec, built or
imported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .bank import (  # noqa: F401  (the ground-truth API)
    BankError,
    BankMismatch,
    CorruptBank,
    GroundTruthBank,
    PublishedGroundTruth,
    check_manifest,
    default_bank_path,
    import_bank,
    open_bank,
    sample_subsets,
    versions,
)
from .building import EXECUTORS, Trainer, build_bank, build_banks, check_executor  # noqa: F401
from .device import CPU, Device
from .errors import ConfigError
from .merging import MERGE_ATOL, MergeReport, merge_banks  # noqa: F401
from .seeds import STREAMS, training_seed  # noqa: F401
from .spec import GroundTruthSpec, TaskSpec, setup_hash, stable_hash
from .store import cache_dir
from .task import Task, TaskData


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


def build_training_bank(spec: TaskSpec, data: TaskData, tb: TrainingBankSpec, workers: int = 1,
                        executor: str = "local", address: str | None = None, device: Device = CPU
                        ) -> list[tuple[TaskData, GroundTruthBank]]:
    """Build (or resume) every split of a training bank; returns (split data, bank) pairs."""
    root = (cache_dir() / "training-banks" / f"{spec.task}-{spec.preset}-{setup_hash(spec)}"
            / f"{stable_hash(tb)}{device.suffix}")
    splits = training_splits(spec, data, tb)
    banks = build_banks([(s, d, root / f"split{i:03d}") for i, (s, d) in enumerate(splits)], workers,
                        f"training bank {spec.task}/{spec.preset}", executor, address, device=device)
    return [(d, bank) for (_, d), bank in zip(splits, banks)]


def ensure_bank(task: Task, spec: TaskSpec, data: TaskData, path: Path | None = None,
                workers: int = 1, executor: str = "local", address: str | None = None,
                subsets: slice | None = None, device: Device = CPU) -> GroundTruthBank:
    """The complete bank for ``spec``: imported when the preset uses published ground truth,
    built (or resumed) otherwise, on ``device`` (only ``subsets``, if given: then possibly
    incomplete)."""
    if spec.groundtruth.source == "finetune":
        return build_bank(spec, data, path, workers, executor, address, subsets, device)
    if subsets is not None:
        raise ConfigError("--subsets builds part of a bank by fine-tuning; published ground "
                          "truth is imported whole")
    if task.published_groundtruth is None:
        raise ConfigError(f"task {task.name!r} has no published ground truth; "
                          "use --set groundtruth.source=finetune")
    return import_bank(spec, data, task.published_groundtruth(spec, data), path)
