"""What a method will cost at a task's size, before it runs (``tdabench plan --method M``).

The method runs, as ``tdabench run`` runs it (train, fit, score, each phase timed with its peak
memory, :func:`tdabench.runner.attribute`), on small cuts of the task's data: the first
``n_targets`` targets and pools of the first ``sizes`` examples, in one child process that first
runs it once, untimed, on a cut of :data:`WARM_UP` examples (so that importing its libraries,
which a run pays before its fit, is not counted as fit time; a reference fine-tune each cut
needs is built and counted in its run). Each cost is then taken to be linear in the pool's
size, a + b N, through the two measurements, and read at the task's N (and T targets):

* fit seconds (the train phase's included where it trains): per-example gradients, features and
  reference fine-tunes grow with N; loading the model is the constant;
* scoring seconds per target: a target's own gradient or encoding, plus one dot product per pool
  example;
* peak memory and storage (what the method holds): the model, plus features growing with N.

Assumptions, printed with the estimate: costs linear in N (true of every built-in method's fit
and scoring; a method whose fit solves an N x N or P x P system grows faster, which the two
sizes may not show), the same machine, device and settings, a cut of the task's examples like
the whole. A method that trains an encoder on its own banks (AirRep) pays that once per task:
the train phase's fine-tunes grow with its config, not with N, and are estimated as measured.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tdabench.checks import Resolved
from tdabench.device import CPU_COMPUTE, Compute
from tdabench.errors import ConfigError
from tdabench.groundtruth.executors import die_with_parent

SIZES = (64, 128)  # pool sizes of the two timed runs (enough for the per-example cost to show)
WARM_UP = 4  # pool examples of the untimed first run
# targets of the timed runs: a target's cost depends on how many share a batch (a tiny-tier
# graddot's was 51 ms a target with 4, 4.5 ms with 100), so the task's own count, up to 100
N_TARGETS = 100
# the quantities estimated, from a run's costs (``runner.attribute``)
QUANTITIES = ("fit_s", "score_per_target_s", "peak_rss_bytes", "storage_bytes")


@dataclass
class Estimate:
    """A method's cost at ``n_pool`` pool examples and ``n_targets`` targets, from runs at
    ``measured`` (pool size -> the run's quantities) and the linear model a + b N of each."""

    method: str
    task: str
    preset: str
    device: str
    n_pool: int
    n_targets: int
    measured: dict[int, dict[str, float]]
    predicted: dict[str, float]

    @property
    def total_s(self) -> float:
        """Fit plus scoring every target."""
        return self.predicted["fit_s"] + self.predicted["score_per_target_s"] * self.n_targets


def linear(points: dict[int, float], n: int) -> float:
    """The value at ``n`` of the least-squares line through ``points`` (pool size -> value),
    never below the smallest measured value (a cost does not shrink as the pool grows; a line
    falling through noise is floored there)."""
    sizes = sorted(points)
    if len(sizes) < 2:
        raise ValueError("a line needs two measurements")
    slope, intercept = np.polyfit(sizes, [points[s] for s in sizes], 1)
    return float(max(intercept + slope * n, min(points.values())))


def estimate(resolved: Resolved, compute: Compute = CPU_COMPUTE, sizes: tuple[int, ...] = SIZES,
             n_targets: int = N_TARGETS, seed: int = 0) -> Estimate:
    """Time ``resolved``'s method on cuts of its task's data at ``sizes`` pool examples and
    return its cost at the whole task (see the module docstring)."""
    data = resolved.data
    N, T = len(data.pool), len(data.targets)
    if N <= max(sizes):  # a small pool: a quarter and a half of it
        sizes = (N // 4, N // 2)
    sizes = tuple(sorted({s for s in sizes if s >= 2}))
    if len(sizes) < 2:
        raise ConfigError(f"the pool of {N} examples is too small to time at two sizes; run the "
                          "method instead (`tdabench run`): it costs about as much as this would")
    measured = _measure_in_child(resolved, compute, sizes, min(n_targets, T), seed)
    predicted = {q: linear({n: m[q] for n, m in measured.items()}, N) for q in QUANTITIES}
    where = compute.device.describe()
    device = where["device"] + (f" ({where['gpu']}, {where['dtype']})" if where["gpu"] else "")
    return Estimate(resolved.method, resolved.spec.task, resolved.preset, device, N, T, measured, predicted)


def measure_cut(resolved: Resolved, compute: Compute, n_pool: int, n_targets: int, seed: int = 0
                ) -> dict[str, float]:
    """Run the method on the first ``n_pool`` pool examples and ``n_targets`` targets in a
    scratch work directory; the run's quantities (:data:`QUANTITIES`)."""
    from tdabench import runner
    from tdabench.method import FitContext

    data = resolved.data
    cut = dataclasses.replace(data, pool=data.pool[:n_pool], targets=data.targets[:n_targets])
    workdir = Path(tempfile.mkdtemp(prefix="tdabench-plan-"))
    try:
        adapter = resolved.method_cls(resolved.config)
        context = FitContext(resolved.spec, cut, workdir, seed, compute, resolved.task)
        membership = np.random.default_rng(seed).random((4, n_pool)) < 0.5  # a few groups to score
        _, _, costs, _ = runner.attribute(adapter, context, membership, resolved.method)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    train = costs.get("train") or {}
    trained_here = train and not train.get("cached")
    phases = [costs[p] for p in ("train", "fit", "score", "score_groups") if p in costs]
    return {"fit_s": costs["fit"]["wall_s"] + (train["wall_s"] if trained_here else 0.0),
            "score_per_target_s": costs["score_per_target_s"],
            "peak_rss_bytes": float(max(p["peak_rss_bytes"] for p in phases)),
            "storage_bytes": float(sum(costs["storage_bytes"].values()))}


def _measure_in_child(resolved: Resolved, compute: Compute, sizes: tuple[int, ...], n_targets: int,
                      seed: int) -> dict[int, dict[str, float]]:
    """:func:`measure_cut` at each of ``sizes`` after an untimed warm-up, in a forked child that
    dies with this process; its error raised here."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, os.getpid(), resolved, compute, sizes, n_targets, seed))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        ok, value = False, RuntimeError(f"the timed runs died (exit code {child.exitcode}); run the "
                                        "method with `tdabench run` to see why")
    finally:
        child.join()
    if not ok:
        raise value
    return value


def _child(send: Any, parent: int, resolved: Resolved, compute: Compute, sizes: tuple[int, ...],
           n_targets: int, seed: int) -> None:
    die_with_parent(parent)
    try:
        measure_cut(resolved, compute, min(WARM_UP, sizes[0]), min(n_targets, WARM_UP), seed)
        send.send((True, {n: measure_cut(resolved, compute, n, n_targets, seed) for n in sizes}))
    except BaseException as err:  # sent to the parent, which raises it
        try:
            send.send((False, err))
        except Exception:
            send.send((False, RuntimeError(f"{type(err).__name__}: {err}")))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:,.1f} s"


def render(e: Estimate) -> str:
    """The estimate, its measurements and its assumptions, as lines of text."""
    gib = 2**30
    hours = "GPU-hours" if "cuda" in e.device else "hours on this machine"
    p = e.predicted
    lines = [f"{e.method} on {e.task}/{e.preset} ({e.n_pool:,} pool examples, {e.n_targets:,} targets), "
             f"on {e.device}:",
             f"  fit        {_duration(p['fit_s'])}",
             f"  score      {p['score_per_target_s'] * 1e3:,.1f} ms per target, "
             f"{_duration(p['score_per_target_s'] * e.n_targets)} for all",
             f"  total      {_duration(e.total_s)} ({e.total_s / 3600:,.2f} {hours})",
             f"  peak RSS   {p['peak_rss_bytes'] / gib:,.2f} GiB; holds {p['storage_bytes'] / gib:,.3f} GiB"]
    lines.append("  measured on cuts of the task (first pool examples and targets):")
    for n, m in sorted(e.measured.items()):
        lines.append(f"    N = {n:>4}: fit {m['fit_s']:,.1f} s, {m['score_per_target_s'] * 1e3:,.1f} ms per "
                     f"target, peak RSS {m['peak_rss_bytes'] / gib:,.2f} GiB, holds "
                     f"{m['storage_bytes'] / 2**20:,.1f} MiB")
    lines.append("  assumed: each cost linear in N through those two runs (a + b N); the same machine, "
                 "device and settings; the cut like the whole")
    if not math.isfinite(e.total_s):
        lines.append("  (no estimate: a measurement was not finite)")
    return "\n".join(lines)
