"""What a ground-truth bank will cost: a short timed run on this machine, then arithmetic.

``tdabench plan`` loads the task's data and base model (timed apart: a one-off per machine or
worker), fine-tunes a couple of subsets exactly as a bank build would (one torch thread, losses
written into a temporary directory that is deleted afterwards, never into a cached bank), and
scales the mean time per fine-tune to the whole bank and a number of workers.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tdabench.device import CPU, Device, peak_memory
from tdabench.errors import ConfigError
from tdabench.spec import DataSpec, TaskSpec, override, spec_hash
from tdabench.task import TaskData


@dataclass
class Measurement:
    """Seconds measured on this machine for one task spec.

    ``data_s``: loading the task's examples; ``model_s``: loading the base model (building and
    caching it first when it is not cached yet, e.g. a scratch model's warm-up); ``worker_init_s``:
    what each worker pays once (model from the cache, pool and targets tokenised);
    ``finetune_s``: each timed fine-tune, target losses included; ``device``: where it ran
    (``"cpu"`` or ``"cuda"``); ``gpu``: the GPU's name and dtype; ``peak_gpu_bytes``: the most GPU
    memory a timed fine-tune allocated (None on the CPU).
    """

    data_s: float
    model_s: float
    worker_init_s: float
    finetune_s: list[float]
    device: str = "cpu"
    model_was_cached: bool = True
    gpu: str | None = None
    peak_gpu_bytes: int | None = None

    @property
    def per_finetune_s(self) -> float:
        return statistics.fmean(self.finetune_s)


@dataclass
class Estimate:
    """The cost of a bank of ``n_subsets`` x ``n_seeds`` fine-tunes on ``workers`` workers."""

    spec: TaskSpec
    measurement: Measurement
    n_subsets: int
    n_seeds: int
    workers: int
    assumptions: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return self.n_subsets * self.n_seeds

    @property
    def device_hours(self) -> float:
        """Core-hours (CPU, one thread per fine-tune) or GPU-hours of the fine-tunes alone."""
        return self.jobs * self.measurement.per_finetune_s / 3600

    @property
    def wall_s(self) -> float:
        """Wall time with ``workers`` workers: their one-off start, then rounds of fine-tunes."""
        m = self.measurement
        return m.worker_init_s + math.ceil(self.jobs / self.workers) * m.per_finetune_s


def measure(spec: TaskSpec, load_data, n_finetunes: int = 2, device: Device = CPU) -> Measurement:
    """Time the data load, the base model load, one worker's start and ``n_finetunes``
    fine-tunes of the bank's first subsets (in a temporary directory), on ``device``."""
    from tdabench import lm
    from tdabench.groundtruth.bank import sample_subsets
    from tdabench.groundtruth.building import BankJob, Trainer

    if n_finetunes < 1:
        raise ConfigError("plan needs at least one timed fine-tune (--fine-tunes 1 or more)")
    if spec.groundtruth.source != "finetune":
        raise ConfigError(f"{spec.task}/{spec.preset} imports published ground truth; to plan "
                         "regenerating it, add --set groundtruth.source=finetune")
    with lm.torch_threads(1):
        start = time.perf_counter()
        data = load_data(spec.data)
        data_s = time.perf_counter() - start
        cached = _model_cached(spec, data)
        start = time.perf_counter()
        lm.load_base_model(spec.model, data.warmup, data.pool)
        model_s = time.perf_counter() - start
        timed = override(spec, {"groundtruth.n_subsets": str(max(n_finetunes, spec.groundtruth.n_subsets))})
        membership = sample_subsets(data, timed)
        with tempfile.TemporaryDirectory(prefix="tdabench-plan-") as tmp:
            start = time.perf_counter()
            trainer = Trainer.load(data, [BankJob(timed, Path(tmp), membership, data.targets)], device)
            init_s = time.perf_counter() - start
            times = []
            with peak_memory(trainer.device) as gpu:
                for subset in range(n_finetunes):
                    start = time.perf_counter()
                    trainer.train((0, subset, 0))
                    trainer.device.synchronize()
                    times.append(time.perf_counter() - start)
    where = trainer.device.describe()
    gpu_name = f"{where['gpu']}, {where['dtype']}" if where["gpu"] else None
    return Measurement(data_s, model_s, init_s, times, "cuda" if device.is_cuda else "cpu", cached,
                       gpu_name, gpu["bytes"])


def _model_cached(spec: TaskSpec, data) -> bool:
    """Whether the base model is already built (scratch models are built on first use)."""
    from tdabench import lm
    from tdabench.store import cache_dir

    if spec.model.init != "scratch":
        return True
    key = lm.base_model_key(spec.model, data.warmup, data.pool)
    return (cache_dir() / "models" / key / "tdabench_model.json").exists()


def estimate(spec: TaskSpec, m: Measurement, n_subsets: int | None = None,
             n_seeds: int | None = None, workers: int = 1) -> Estimate:
    """Scale a measurement to a bank of ``n_subsets`` x ``n_seeds`` (default: the spec's)."""
    if workers < 1:
        raise ConfigError("workers must be at least 1")
    gt = spec.groundtruth
    est = Estimate(spec, m, n_subsets or gt.n_subsets, n_seeds or gt.n_seeds, workers)
    unit = "GPU" if m.device == "cuda" else "core (one torch thread)"
    est.assumptions = [
        f"every fine-tune costs the mean of the {len(m.finetune_s)} timed here "
        f"({', '.join(f'{t:.2f}' for t in m.finetune_s)} s), target losses included: same "
        "subset size, recipe and targets as the bank",
        f"one {unit} per fine-tune; the {workers} worker(s) each have one to themselves and run "
        "in parallel without slowing each other (shared memory bandwidth and other load "
        "lower the real speed-up)",
        "each worker starts once, in parallel with the others: the model load and "
        "tokenisation measured here, plus a new process's imports (torch, transformers: a few "
        "seconds, not measured here)",
        "the data load and a first build of the base model happen once per machine (cached "
        "after), and are not in the totals",
    ]
    cores = os.cpu_count() or 1
    if m.device == "cpu" and workers > cores:
        est.assumptions.append(f"this machine has {cores} cores: {workers} workers need a "
                               "larger machine or a Ray cluster (--executor ray --address ...)")
    return est


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(est: Estimate) -> str:
    """The estimate and its assumptions, as printed by ``tdabench plan``."""
    m, spec = est.measurement, est.spec
    unit = "GPU-hours" if m.device == "cuda" else "core-hours"
    built = "" if m.model_was_cached else " (built and cached now: later runs only load it)"
    where = f"{m.device} ({m.gpu})" if m.gpu else f"{m.device}, one torch thread"
    gpu = "" if m.peak_gpu_bytes is None else f"; peak GPU memory {m.peak_gpu_bytes / 2**20:.0f} MiB"
    lines = [
        f"plan for {spec.task}/{spec.preset} (spec {spec_hash(spec)}; measured on this machine, {where})",
        f"  measured: data load {m.data_s:.1f} s; base model {m.model_s:.1f} s{built}; "
        f"worker start (load + tokenise) {m.worker_init_s:.1f} s; "
        f"{m.per_finetune_s:.2f} s per fine-tune (mean of {len(m.finetune_s)}){gpu}",
        f"  bank: {est.n_subsets} subsets x {est.n_seeds} seed(s) = {est.jobs} fine-tunes",
        f"  cost: {est.device_hours:.3g} {unit} of fine-tuning",
        f"  wall: {_duration(est.wall_s)} on {est.workers} worker(s)",
        "  assumptions:",
    ]
    lines += [f"    - {a}" for a in est.assumptions]
    return "\n".join(lines)


def plan(spec: TaskSpec, load: Callable[[DataSpec], TaskData], n_subsets: int | None = None,
         n_seeds: int | None = None, workers: int = 1, n_finetunes: int = 2, device: Device = CPU
         ) -> Estimate:
    """Measure a resolved ``spec`` on this machine (``load`` reads its task's examples; on
    ``device``: GPU-hours on a GPU) and estimate its bank's cost."""
    return estimate(spec, measure(spec, load, n_finetunes, device), n_subsets, n_seeds, workers)
