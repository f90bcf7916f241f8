"""``tdabench selftest --device D --task T --method M``: a reduced end-to-end on device D,
checked against the CPU.

On a micro version of task T (its data: 60 pool examples, 12 targets, a 1-layer d=32 Llama,
20 subsets of 20% x 2 training seeds = 40 fine-tunes) it builds the ground-truth bank and
method M's scores (for a gradient method: reference fine-tune, per-example gradients) once on D
and once on the CPU in fp32, each in a private cache, and compares:

* the bank's losses: largest absolute difference <= ``loss_atol``;
* M's (T, N) scores: Spearman correlation of all T x N values >= ``score_corr``;
* LDS (all 20 subsets, sum group score) of each device's scores on its own bank:
  absolute difference <= ``lds_diff``.

The bounds (:data:`TOLERANCES`) were set before any GPU run, not fitted to one: fp32 allows for
other reduction orders (float32 rounding, about 1e-6 relative per op, carried through 2 epochs
of AdamW); bf16 for bfloat16's 8-bit mantissa (about 4e-3 relative per matmul). On the CPU
(``--device cpu``) the two runs must agree exactly, and they are checked to. 17 s for the
whole CPU-against-CPU run on a 2-core machine; a GPU run should stay well under 5 minutes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tdabench.device import CPU, Device
from tdabench.task import Task


def micro_task(source: Task, preset: str = "tiny") -> Task:
    """``source``'s data and ``preset``'s recipe at a size that builds a bank in seconds: 60 pool,
    12 targets, 120 warm-up examples, a 1-layer d=32 Llama, 6 subsets of 20% x 2 seeds; named
    ``micro`` (preset ``micro``)."""
    from tdabench.spec import DataSpec, GroundTruthSpec, ModelSpec

    def load(spec: DataSpec):
        data = source.load(spec)
        return replace(data, warmup=data.warmup[:120])

    spec = replace(
        source.spec(preset), task="micro", preset="micro",
        data=DataSpec(n_pool=60, n_targets=12, seed=0),
        model=ModelSpec(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=512,
                        max_prompt_tokens=16, max_response_tokens=16, warmup_epochs=1),
        groundtruth=GroundTruthSpec(n_subsets=6, fraction=0.2, n_seeds=2, seed=0))
    return Task(name="micro", description=f"test-sized {source.name}", presets={"micro": spec},
                load=load)


@dataclass(frozen=True)
class Tolerance:
    loss_atol: float  # largest |loss difference| between the two banks (nats)
    score_corr: float  # smallest Spearman correlation between the two score matrices
    lds_diff: float  # largest |LDS difference|


TOLERANCES = {"fp32": Tolerance(1e-3, 0.999, 0.02), "bf16": Tolerance(0.1, 0.95, 0.1)}
N_SUBSETS = 20


@dataclass
class Side:
    """One device's results: bank losses (M, R, T), the method's scores (T, N), LDS, seconds."""

    device: Device
    losses: np.ndarray
    scores: np.ndarray
    lds: float
    seconds: float
    peak_gpu_bytes: int | None


@dataclass
class Check:
    name: str
    value: float
    bound: float
    passed: bool


@dataclass
class Report:
    device: Device
    sides: list[Side]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def render(self) -> str:
        where = self.device.describe()
        gpu = f" ({where['gpu']})" if where["gpu"] else ""
        lines = [f"selftest on {where['device']}{gpu}, {self.device.dtype}, against the CPU in fp32 "
                 f"(micro task, {N_SUBSETS} subsets x 2 seeds)"]
        for side in self.sides:
            gpu = "" if side.peak_gpu_bytes is None else f", peak GPU {side.peak_gpu_bytes / 2**20:.0f} MiB"
            lines.append(f"  {side.device.name:<8} {side.device.dtype}: bank + scores {side.seconds:.1f} s, "
                         f"LDS {side.lds:+.4f}{gpu}")
        for c in self.checks:
            lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.value:.3g} (bound {c.bound:g})")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


@contextlib.contextmanager
def _private_cache(path: Path) -> Iterator[None]:
    old = os.environ.get("TDABENCH_CACHE")
    os.environ["TDABENCH_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TDABENCH_CACHE", None)
        else:
            os.environ["TDABENCH_CACHE"] = old


def run_side(device: Device, root: Path, task_name: str, method: str) -> Side:
    """Build the micro bank of ``task_name`` and ``method``'s scores on ``device``, in the
    cache at ``root``."""
    from tdabench import groundtruth, metrics
    from tdabench.device import Compute
    from tdabench.method import FitContext, make_config
    from tdabench.registry import get_method, get_task
    from tdabench.timing import measure

    task = micro_task(get_task(task_name))
    spec = task.spec("micro")
    spec = replace(spec, groundtruth=replace(spec.groundtruth, n_subsets=N_SUBSETS))
    data = task.load(spec.data)
    start = time.perf_counter()
    with _private_cache(root):
        bank, bank_cost = measure(lambda: groundtruth.build_bank(
            spec, data, root / "bank", workers=1, device=device), device=device)
        method_cls = get_method(method)
        adapter = method_cls(make_config(method_cls, {}))
        context = FitContext(spec=spec, data=data, workdir=root / method, seed=0,
                             compute=Compute(device=device))
        context.workdir.mkdir(parents=True)
        _, fit_cost = measure(lambda: adapter.fit(data.pool, context), device=device)
        scores, score_cost = measure(lambda: adapter.score(data.targets), device=device)
    lds = metrics.lds(metrics.sum_group_scores(scores, bank.membership), bank.labels())
    peaks = [c.cuda_peak_bytes for c in (bank_cost, fit_cost, score_cost) if c.cuda_peak_bytes is not None]
    return Side(device, bank.losses, scores, float(lds), time.perf_counter() - start,
                max(peaks) if peaks else None)


def compare(device: Device, cpu: Side, other: Side) -> Report:
    """Check ``other`` (on ``device``) against ``cpu`` with the tolerances of its dtype (exact
    agreement when ``device`` is the CPU)."""
    from scipy.stats import spearmanr

    exact = device == CPU
    tol = Tolerance(0.0, 1.0, 0.0) if exact else TOLERANCES[device.dtype]
    loss_diff = float(np.max(np.abs(cpu.losses - other.losses)))
    corr = float(spearmanr(cpu.scores.ravel(), other.scores.ravel())[0])
    lds_diff = abs(cpu.lds - other.lds)
    checks = [Check("bank losses, max |difference|", loss_diff, tol.loss_atol, loss_diff <= tol.loss_atol),
              Check("scores, Spearman r", corr, tol.score_corr, corr >= tol.score_corr),
              Check("LDS, |difference|", lds_diff, tol.lds_diff, lds_diff <= tol.lds_diff)]
    if exact:
        same = bool(np.array_equal(cpu.scores, other.scores))
        checks.append(Check("scores, max |difference|",
                            float(np.max(np.abs(cpu.scores - other.scores))), 0.0, same))
    return Report(device, [cpu, other], checks)


def run(device: Device, task: str, method: str) -> Report:
    """Run the micro end-to-end of ``task`` and ``method`` on the CPU (fp32) and on ``device``;
    compare them."""
    with tempfile.TemporaryDirectory(prefix="tdabench-selftest-") as tmp:
        cpu = run_side(CPU, Path(tmp) / "cpu", task, method)
        other = run_side(device, Path(tmp) / "device", task, method)
    return compare(device, cpu, other)
