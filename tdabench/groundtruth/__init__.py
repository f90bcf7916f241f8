"""A task's counterfactual ground truth: fine-tune the target LM on random pool subsets and
record the targets' losses (or import published ground truth).

The parts live in modules of their own, re-exported here as the ground-truth API:
:mod:`tdabench.groundtruth.bank` (a bank on disk: format, manifest, reading, checking, importing),
:mod:`tdabench.groundtruth.building` (the fine-tuning worker and its dispatch to the local or Ray
executor), :mod:`tdabench.seeds` (every seed derivation) and :mod:`tdabench.groundtruth.merging` (joining
banks built in parts). :func:`ensure_bank` gives the complete bank for a spec, built or
imported.
"""

from __future__ import annotations

from pathlib import Path

from tdabench.device import CPU, Device
from tdabench.errors import ConfigError
from tdabench.groundtruth.bank import (  # noqa: F401  (the ground-truth API)
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
from tdabench.groundtruth.building import EXECUTORS, Trainer, build_bank, build_banks, check_executor  # noqa: F401
from tdabench.groundtruth.merging import MERGE_ATOL, MergeReport, merge_banks  # noqa: F401
from tdabench.seeds import STREAMS, training_seed  # noqa: F401
from tdabench.spec import TaskSpec
from tdabench.task import Task, TaskData


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
