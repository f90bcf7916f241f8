"""A task's counterfactual ground truth: fine-tune the target LM on random pool subsets and
record the targets' losses (or import published ground truth).

The parts live in modules of their own, re-exported here as the ground-truth API:
:mod:`~tdabench.groundtruth.bank` (a bank on disk: format, manifest, reading, checking,
importing), :mod:`~tdabench.groundtruth.building` (the fine-tuning worker and its dispatch),
:mod:`~tdabench.groundtruth.executors` (the local worker pool and Ray),
:mod:`~tdabench.groundtruth.merging` (joining banks built in parts) and
:mod:`~tdabench.groundtruth.plan` (timing a few fine-tunes to estimate a bank's cost); every
seed derivation is in :mod:`tdabench.seeds`. :func:`ensure_bank` gives the complete evaluation
bank for a spec, built or imported; :func:`own_banks` builds the banks a method learns from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tdabench.device import CPU_COMPUTE, Compute
from tdabench.errors import ConfigError
from tdabench.groundtruth.bank import (  # noqa: F401  (the ground-truth API)
    BankError,
    BankMismatch,
    CorruptBank,
    GroundTruthBank,
    PublishedGroundTruth,
    check_manifest,
    default_bank_path,
    finished_on_disk,
    import_bank,
    open_bank,
    own_bank_path,
    sample_subsets,
    versions,
)
from tdabench.groundtruth.building import EXECUTORS, Trainer, build_bank, build_banks, check_executor  # noqa: F401
from tdabench.groundtruth.merging import MERGE_ATOL, MergeReport, merge_banks  # noqa: F401
from tdabench.seeds import STREAMS, training_seed  # noqa: F401
from tdabench.spec import TaskSpec
from tdabench.task import Task, TaskData


def ensure_bank(task: Task, spec: TaskSpec, data: TaskData, path: Path | None = None,
                compute: Compute = CPU_COMPUTE, subsets: slice | None = None) -> GroundTruthBank:
    """The complete bank for ``spec``: imported when the preset uses published ground truth,
    built (or resumed) otherwise with ``compute`` (only ``subsets``, if given: then possibly
    incomplete)."""
    if spec.groundtruth.source == "finetune":
        return build_bank(spec, data, path, compute.workers, compute.executor, compute.address, subsets,
                          compute.device)
    if subsets is not None:
        raise ConfigError("--subsets builds part of a bank by fine-tuning; published ground "
                          "truth is imported whole")
    if task.published_groundtruth is None:
        raise ConfigError(f"task {task.name!r} has no published ground truth; "
                          "use --set groundtruth.source=finetune")
    return import_bank(spec, data, task.published_groundtruth(spec, data), path)


@dataclass
class OwnBanks:
    """Banks a method built for itself (:func:`own_banks`): one per part, and ``reused``:
    every one was complete before the call, so nothing was fine-tuned now."""

    banks: list[GroundTruthBank]
    reused: bool


def own_banks(parts: Sequence[tuple[TaskSpec, TaskData]], label: str,
              compute: Compute = CPU_COMPUTE) -> OwnBanks:
    """The harness's service to methods that learn from retraining (AirRep's training bank,
    the datamodel's bank): build (or resume) one bank per (spec, data) in one worker pool, with
    the run's ``compute``, under :func:`~tdabench.groundtruth.bank.own_bank_path`. Their specs
    carry a seed stream (:data:`tdabench.seeds.STREAMS`), so they share no fine-tuning seed with
    an evaluation bank."""
    paths = [own_bank_path(spec, data, compute.device) for spec, data in parts]
    reused = all(finished_on_disk(spec, path) for (spec, _), path in zip(parts, paths))
    banks = build_banks([(spec, data, path) for (spec, data), path in zip(parts, paths)],
                        compute.workers, label, compute.executor, compute.address, device=compute.device)
    return OwnBanks(banks, reused)
