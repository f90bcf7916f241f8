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

Builds run on the local executor (this machine's processes) or on Ray (``executor="ray"``: a
local Ray instance or a cluster). A bank can be built in parts (``subsets=slice(0, 50)`` on one
machine, ``slice(50, None)`` on another) and the parts joined by :func:`merge_banks`, which
checks that they were built for the same spec and that a fine-tune computed twice agrees.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import examples_fingerprint
from .executors import require_ray, run_local, run_ray
from .spec import TaskSpec, spec_differences, spec_hash, stable_hash
from .store import atomic_write_json, atomic_write_npy, cache_dir, read_json
from .task import Task, TaskData

# seed streams of banks that are not evaluation banks (those use none): a method's training
# bank, the datamodel reference's own bank
STREAMS = {"training": 7_001, "datamodel": 7_002}


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


def _load_loss(file: Path, n_targets: int) -> np.ndarray | None:
    """A finished subset's losses, or None if the file is missing, truncated or corrupt."""
    try:
        arr = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    return arr if arr.shape == (n_targets,) and np.isfinite(arr).all() else None


def _read_loss(file: Path, n_targets: int) -> np.ndarray | None:
    """A finished subset's losses, or None (removing the file) if it is truncated or corrupt."""
    if not file.exists():
        return None
    arr = _load_loss(file, n_targets)
    if arr is None:
        file.unlink(missing_ok=True)
    return arr


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
    model, tok = target_lm.model, target_lm.tokenizer
    # a fine-tune changes only the trained weights: keep (and reset) just those
    trained = {id(p) for p in lm.trainable_parameters(model, model_spec)}
    state = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) in trained}

    def prepare(examples: list) -> list:  # with partial fine-tuning, the frozen blocks run once
        return lm.cache_frozen(model, model_spec, lm.encode(tok, examples, model_spec), tok.pad_token_id)

    return _SubsetTrainer(target_lm, state, prepare(data.pool),
                          [_Job(spec, path, membership, prepare(targets))
                           for spec, path, membership, targets in banks])


def _train_subset(state: _SubsetTrainer, job: tuple[int, int, int]) -> np.ndarray:
    """Fine-tune on one subset with one seed; write (atomically) and return the targets' losses."""
    from . import lm

    b, subset, replicate = job
    bank = state.banks[b]
    model, pad = state.lm.model, state.lm.tokenizer.pad_token_id
    model.load_state_dict(state.initial_state, strict=False)  # the trained weights only
    lm.finetune(model, lm.trainable_parameters(model, bank.spec.model),
                [state.pool[i] for i in np.flatnonzero(bank.membership[subset])], bank.spec.finetune,
                seed=training_seed(bank.spec, subset, replicate), pad_id=pad)
    losses = lm.response_losses(model, bank.targets, pad)
    atomic_write_npy(_loss_path(bank.path, subset, replicate), losses)
    return losses


EXECUTORS = ("local", "ray")
# What one fine-tune asks of a Ray node: one CPU (lm fine-tunes on the CPU, one torch thread).
# Ask for a GPU here ({"num_gpus": 1}) once the fine-tune runs on one.
FINETUNE_RESOURCES = {"num_cpus": 1}


def check_executor(executor: str, address: str | None = None) -> None:
    """Refuse an unknown executor, a cluster address given to the local one, or Ray when it
    is not installed (MissingDependency)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; use one of {list(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ValueError("an address (--address) is only used by the Ray executor (--executor ray)")
    if executor == "ray":
        require_ray()  # a missing ray is said before any model is loaded


def _execute(executor: str, jobs: list, init: Callable, init_args: tuple, work: Callable,
             workers: int, desc: str, address: str | None,
             on_result: Callable[[tuple, np.ndarray], None]) -> None:
    if executor == "ray":
        run_ray(jobs, init, init_args, work, workers, desc, address=address,
                resources=FINETUNE_RESOURCES, on_result=on_result)
    else:
        run_local(jobs, init, init_args, work, workers=workers, desc=desc)


def _subset_indices(n_subsets: int, subsets: slice | None) -> range:
    """The subset indices a (partial) build covers: all, or ``range(n_subsets)[subsets]``."""
    chosen = range(n_subsets) if subsets is None else range(n_subsets)[subsets]
    if not chosen:
        raise ValueError(f"the subset range {subsets} selects none of the {n_subsets} subsets")
    return chosen


def build_banks(items: list[tuple[TaskSpec, TaskData, Path | None]], workers: int = 1,
                desc: str = "ground truth", executor: str = "local", address: str | None = None,
                subsets: slice | None = None) -> list[GroundTruthBank]:
    """Build (or resume) several banks over the same pool and base model in one worker pool:
    fine-tune every missing (bank, subset, seed).

    ``executor``: ``"local"`` (worker processes on this machine) or ``"ray"`` (a local Ray
    instance, or the cluster at ``address``). ``subsets``: build only these subset indices
    (e.g. ``slice(0, 50)``), leaving the bank incomplete; parts built elsewhere are joined
    with :func:`merge_banks`.
    """
    from . import lm

    check_executor(executor, address)
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
    missing = [(b, m, r) for b, bank in enumerate(banks)
               for m in _subset_indices(bank.losses.shape[0], subsets)
               for r in range(bank.losses.shape[1]) if not np.isfinite(bank.losses[m, r]).all()]
    payload = [(spec, bank.path, bank.membership, data.targets)
               for (spec, data, _), bank in zip(items, banks)]

    def keep(job: tuple[int, int, int], losses: np.ndarray) -> None:
        # A Ray worker on another node wrote its file there; without a shared file system the
        # bank here gets it from the returned losses (same bytes, written once).
        file = _loss_path(banks[job[0]].path, job[1], job[2])
        if _load_loss(file, len(losses)) is None:
            atomic_write_npy(file, losses)

    _execute(executor, missing, _init_trainer, (first_data, payload), _train_subset, workers,
             desc, address, keep)
    return [open_bank(spec, data, fingerprint, bank.path) for (spec, data, _), bank in zip(items, banks)]


def build_bank(spec: TaskSpec, data: TaskData, path: Path | None = None, workers: int = 1,
               executor: str = "local", address: str | None = None,
               subsets: slice | None = None) -> GroundTruthBank:
    """Build (or resume) the bank for ``spec``: fine-tune every missing (subset, seed) pair
    (of ``subsets`` only, if given). See :func:`build_banks` for the executors."""
    return build_banks([(spec, data, path)], workers, f"ground truth {spec.task}/{spec.preset}",
                       executor, address, subsets)[0]


def ensure_bank(task: Task, spec: TaskSpec, data: TaskData, path: Path | None = None,
                workers: int = 1, executor: str = "local", address: str | None = None,
                subsets: slice | None = None) -> GroundTruthBank:
    """The complete bank for ``spec``: imported when the preset uses published ground truth,
    built (or resumed) otherwise (only ``subsets``, if given: then possibly incomplete)."""
    if spec.groundtruth.source == "finetune":
        return build_bank(spec, data, path, workers, executor, address, subsets)
    if subsets is not None:
        raise ValueError("--subsets builds part of a bank by fine-tuning; published ground "
                         "truth is imported whole")
    if spec.groundtruth.source != "published":
        raise ValueError(f"unknown groundtruth.source {spec.groundtruth.source!r}; "
                         "use 'finetune' or 'published'")
    if task.published_groundtruth is None:
        raise ValueError(f"task {task.name!r} has no published ground truth; "
                         "use --set groundtruth.source=finetune")
    return import_bank(spec, data, task.published_groundtruth(spec, data), path)


# --- merging banks built in parts ------------------------------------------------------------

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
            raise BankMismatch(f"{file} lies outside the bank's {n_subsets} subsets x {n_seeds} seeds")
        losses = _load_loss(file, n_targets)
        if losses is not None:
            out[key] = losses
    return out


def _read_part(path: Path) -> tuple[dict, np.ndarray]:
    """A source bank's manifest and membership (both must exist)."""
    if not (path / "manifest.json").exists():
        raise ValueError(f"{path} is not a ground-truth bank (no manifest.json)")
    if not (path / "membership.npy").exists():
        raise ValueError(f"{path} is not a complete ground-truth bank (no membership.npy)")
    return read_json(path / "manifest.json"), np.load(path / "membership.npy")


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
        raise ValueError("merge-banks needs at least one source bank other than the destination")
    if not (into / "manifest.json").exists() and any((into / "losses").glob("*.npy")):
        raise BankMismatch(f"{into} holds loss files but no manifest.json; refusing to merge into it")
    reference, membership = _read_part(places[0])
    report = MergeReport(into, places)
    versions_seen = {stable_hash(reference.get("versions"))}
    shape = reference["shape"]
    found: dict[tuple[int, int], list[np.ndarray]] = {}
    for place in places:
        manifest, members = _read_part(place)
        check_manifest(manifest, reference, place)
        if not np.array_equal(members, membership):
            raise BankMismatch(f"{place}/membership.npy differs from {places[0]}/membership.npy")
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
            atomic_write_npy(_loss_path(into, m, r), copies[0])
            report.written += 1
    if places[0] != into:
        atomic_write_json(into / "manifest.json", reference)  # last: the bank is valid from here
    return report
