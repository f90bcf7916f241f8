"""Building ground-truth banks: the fine-tuning worker and its dispatch to an executor.

:class:`Trainer` is what each worker holds (the base model loaded once, pool and targets
tokenised once) and :meth:`Trainer.train` is one job: fine-tune on one subset with one
training seed and write the targets' losses. :func:`build_banks` fills every missing
(bank, subset, seed) of one or more banks on the local executor (this machine's processes)
or on Ray. A build holds a lock on each bank directory, so a second process building the same
bank waits and then finds it done instead of fine-tuning everything again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tdabench.device import CPU, Device
from tdabench.errors import ConfigError
from tdabench.groundtruth.bank import GroundTruthBank, load_loss, loss_path, open_bank, sample_subsets
from tdabench.groundtruth.executors import require_ray, run_local, run_ray
from tdabench.seeds import training_seed
from tdabench.spec import TaskSpec
from tdabench.store import atomic_write_npy, cache_dir
from tdabench.task import TaskData


@dataclass
class BankJob:
    """One bank to fill: its spec, where it lives, its (M, N) subsets, its targets."""

    spec: TaskSpec
    path: Path
    membership: np.ndarray
    targets: list


@dataclass
class Trainer:
    """Per-worker state: the base model loaded once, the pool and every bank's targets
    tokenised once (with partial fine-tuning, the frozen blocks run once too)."""

    lm: object
    initial_state: dict
    pool: list
    banks: list[BankJob]
    device: Device = CPU

    @classmethod
    def load(cls, data: TaskData, banks: list[BankJob], device: Device = CPU) -> Trainer:
        """Load the base model of ``banks[0].spec.model`` on ``device`` (this worker's GPU on
        CUDA) and prepare pool and targets."""
        from tdabench import lm

        device = device.for_worker()
        model_spec = banks[0].spec.model
        target_lm = lm.load_base_model(model_spec, data.warmup, data.pool)
        model, tok = target_lm.model.to(device.name), target_lm.tokenizer
        # a fine-tune changes only the trained weights: keep (and reset) just those
        trained = {id(p) for p in lm.trainable_parameters(model, model_spec)}
        state = {name: p.detach().clone() for name, p in model.named_parameters() if id(p) in trained}

        def prepare(examples: list) -> list:
            return lm.cache_frozen(model, model_spec, lm.encode(tok, examples, model_spec), tok.pad_token_id)

        prepared = [BankJob(b.spec, b.path, b.membership, prepare(b.targets)) for b in banks]
        return cls(target_lm, state, prepare(data.pool), prepared, device)

    def train(self, job: tuple[int, int, int]) -> np.ndarray:
        """Fine-tune on subset ``job[1]`` of bank ``job[0]`` with training seed ``job[2]``;
        write (atomically) and return the (T,) target losses."""
        from tdabench import lm

        b, subset, replicate = job
        bank = self.banks[b]
        model, pad = self.lm.model, self.lm.tokenizer.pad_token_id
        model.load_state_dict(self.initial_state, strict=False)  # the trained weights only
        with self.device.autocast():
            lm.finetune(model, lm.trainable_parameters(model, bank.spec.model),
                        [self.pool[i] for i in np.flatnonzero(bank.membership[subset])], bank.spec.finetune,
                        seed=training_seed(bank.spec, subset, replicate), pad_id=pad,
                        micro_batch=self.device.micro_batch)
            losses = lm.response_losses(model, bank.targets, pad)
        atomic_write_npy(loss_path(bank.path, subset, replicate), losses)
        return losses


EXECUTORS = ("local", "ray")


def finetune_resources(device: Device = CPU) -> dict[str, int]:
    """What one fine-tune asks of a Ray node: one CPU (one torch thread), and one GPU when the
    fine-tunes run on CUDA (Ray then makes that GPU the actor's only visible one, ``cuda:0``)."""
    return {"num_cpus": 1, "num_gpus": 1} if device.is_cuda else {"num_cpus": 1}


def check_executor(executor: str, address: str | None = None) -> None:
    """Refuse an unknown executor, a cluster address given to the local one, or Ray when it
    is not installed (MissingDependency)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; use one of {list(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConfigError("an address (--address) is only used by the Ray executor (--executor ray)")
    if executor == "ray":
        require_ray()  # a missing ray is said before any model is loaded


def _execute(executor: str, jobs: list, init: Callable, init_args: tuple, work: Callable,
             workers: int, desc: str, address: str | None,
             on_result: Callable[[tuple, np.ndarray], None], device: Device = CPU) -> None:
    if executor == "ray":
        run_ray(jobs, init, init_args, work, workers, desc, address=address,
                resources=finetune_resources(device), on_result=on_result)
    else:
        run_local(jobs, init, init_args, work, workers=workers, desc=desc)


def _subset_indices(n_subsets: int, subsets: slice | None) -> range:
    """The subset indices a (partial) build covers: all, or ``range(n_subsets)[subsets]``."""
    chosen = range(n_subsets) if subsets is None else range(n_subsets)[subsets]
    if not chosen:
        raise ConfigError(f"the subset range {subsets} selects none of the {n_subsets} subsets")
    return chosen


@contextlib.contextmanager
def bank_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the bank at ``path`` (``path/.lock``, released when this
    process ends, however it ends); a second builder waits here, saying so once."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"tdabench: the bank at {path} is being built by {holder}; waiting for it to "
                  "finish (its fine-tunes are then reused, not repeated)", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_together(items: list[tuple[TaskSpec, TaskData, Path | None]]) -> None:
    first_spec, first_data = items[0][0], items[0][1]
    for spec, data, _ in items:
        if spec.groundtruth.source != "finetune":
            raise ConfigError(f"{spec.task}/{spec.preset} uses published ground truth "
                              f"(groundtruth.source={spec.groundtruth.source!r}); it is imported, "
                              "not built. To regenerate it, use --set groundtruth.source=finetune")
        if spec.groundtruth.n_subsets < 1:
            raise ConfigError(f"{spec.task}/{spec.preset}: groundtruth.n_subsets="
                              f"{spec.groundtruth.n_subsets} builds nothing (0 means 'as published' "
                              "for imported ground truth); set it, e.g. --set groundtruth.n_subsets=100")
        if spec.model != first_spec.model or data.pool != first_data.pool or data.warmup != first_data.warmup:
            raise ValueError("banks built together must share the model, pool and warm-up set")
        sample_subsets(data, spec)  # a pool too small for the subsets is said before any model


def _base_model(spec: TaskSpec, data: TaskData):
    """The base model (a ``TargetLM``), saying so first when it has to be built (a minute at most)."""
    from tdabench import lm

    key = lm.base_model_key(spec.model, data.warmup, data.pool) if spec.model.init == "scratch" else None
    if key and not (cache_dir() / "models" / key / "tdabench_model.json").exists():
        print(f"building the base model ({spec.model.n_layers}-layer Llama, warm-up of "
              f"{spec.model.warmup_epochs} epoch(s) on {len(data.warmup)} examples); cached after "
              "this once", file=sys.stderr, flush=True)
    return lm.load_base_model(spec.model, data.warmup, data.pool)


def build_banks(items: list[tuple[TaskSpec, TaskData, Path | None]], workers: int = 1,
                desc: str = "ground truth", executor: str = "local", address: str | None = None,
                subsets: slice | None = None, device: Device = CPU) -> list[GroundTruthBank]:
    """Build (or resume) several banks over the same pool and base model in one worker pool:
    fine-tune every missing (bank, subset, seed).

    ``executor``: ``"local"`` (worker processes on this machine) or ``"ray"`` (a local Ray
    instance, or the cluster at ``address``). ``subsets``: build only these subset indices
    (e.g. ``slice(0, 50)``), leaving the bank incomplete; parts built elsewhere are joined
    with :func:`tdabench.groundtruth.merging.merge_banks`. Each bank is locked while it is built.
    ``device``: where the fine-tunes run; on CUDA the local executor starts one worker per GPU
    (``workers`` is then ignored) and every Ray job asks for a GPU.
    """
    from tdabench import lm
    from tdabench.groundtruth.bank import default_bank_path

    check_executor(executor, address)
    _check_together(items)
    paths = [Path(path) if path else default_bank_path(spec, device) for spec, _, path in items]
    with contextlib.ExitStack() as locks:
        for path in paths:
            locks.enter_context(bank_lock(path))
        base = _base_model(items[0][0], items[0][1])
        fingerprint = base.fingerprint
        banks = [open_bank(spec, data, fingerprint, path, device)
                 for (spec, data, _), path in zip(items, paths)]
        missing = [(b, m, r) for b, bank in enumerate(banks)
                   for m in _subset_indices(bank.losses.shape[0], subsets)
                   for r in range(bank.losses.shape[1]) if not np.isfinite(bank.losses[m, r]).all()]
        first_spec, first_data = items[0][0], items[0][1]
        cut = (lm.cut_warning(base.tokenizer, first_data.pool + first_data.targets, first_spec.model)
               if missing else None)
        if cut:
            print(f"tdabench: warning: {cut}", file=sys.stderr, flush=True)
        del base  # the workers load their own
        payload = [BankJob(spec, bank.path, bank.membership, data.targets)
                   for (spec, data, _), bank in zip(items, banks)]

        def keep(job: tuple[int, int, int], losses: np.ndarray) -> None:
            # A Ray worker on another node wrote its file there; without a shared file system the
            # bank here gets it from the returned losses (same bytes, written once).
            file = loss_path(banks[job[0]].path, job[1], job[2])
            if load_loss(file, len(losses)) is None:
                atomic_write_npy(file, losses)

        if device.is_cuda and executor == "local":
            workers = device.n_workers()
        _execute(executor, missing, Trainer.load, (items[0][1], payload, device), Trainer.train, workers,
                 desc, address, keep, device)
        return [open_bank(spec, data, fingerprint, path, device)
                for (spec, data, _), path in zip(items, paths)]


def build_bank(spec: TaskSpec, data: TaskData, path: Path | None = None, workers: int = 1,
               executor: str = "local", address: str | None = None,
               subsets: slice | None = None, device: Device = CPU) -> GroundTruthBank:
    """Build (or resume) the bank for ``spec``: fine-tune every missing (subset, seed) pair
    (of ``subsets`` only, if given). See :func:`build_banks` for the executors and ``device``."""
    return build_banks([(spec, data, path)], workers, f"ground truth {spec.task}/{spec.preset}",
                       executor, address, subsets, device)[0]
