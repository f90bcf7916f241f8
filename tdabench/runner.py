"""One benchmark run: ground truth, fit, score, metrics, and the result record.

A command resolves its task, spec, method and config once (:func:`tdabench.checks.validate`
returns a :class:`~tdabench.checks.Resolved`) and hands it here with one
:class:`~tdabench.device.Compute` (workers, executor, the whole device) that every phase uses.
The protocol (split rule, evaluation) is in :mod:`tdabench.protocol`, the record in
:mod:`tdabench.record`; paired comparisons of records in :mod:`tdabench.reporting.compare`, the
reference set in :mod:`tdabench.reproduce`.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tdabench import metrics, record
from tdabench.checks import Resolved, validate
from tdabench.device import CPU_COMPUTE, Compute
from tdabench.errors import ConfigError
from tdabench.groundtruth import GroundTruthBank, ensure_bank, versions
from tdabench.method import FitContext, held_bytes, pooling
from tdabench.method.base import Method
from tdabench.protocol import (
    PROTOCOL_VERSION,
    RECALL_KS,
    bank_reliability,
    check_correlation,
    evaluate,
    paper_lds,
    protocol,
    protocol_hash,
    tuning_subsets,
)
from tdabench.spec import TaskSpec, spec_hash, stable_hash
from tdabench.store import atomic_write_bytes, cache_dir, dir_bytes
from tdabench.task import Task, TaskData
from tdabench.timing import measure
from tdabench.typed import hashed_fields


def load_task(task: str, preset: str = "tiny", spec_overrides: dict[str, str] | None = None
              ) -> tuple[Task, TaskSpec, TaskData]:
    """The task, its spec for ``preset`` (with dotted overrides) and its examples (for scripts
    and benchmarks; commands resolve through :func:`tdabench.checks.validate`)."""
    resolved = validate(task, preset, spec_overrides)
    return resolved.task, resolved.spec, resolved.data


def groundtruth(resolved: Resolved, compute: Compute = CPU_COMPUTE, bank_path: Path | None = None,
                subsets: slice | None = None) -> GroundTruthBank:
    """Build (or resume) a resolved task's ground-truth bank with ``compute``; ``subsets``: only
    these subset indices (a part of the bank, to merge with others)."""
    return ensure_bank(resolved.task, resolved.spec, resolved.data, bank_path, compute, subsets)


def _check_scores(name: str, array: Any, shape: tuple[int, int], method: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"method {method!r} returned {name} of shape {array.shape}, "
                         f"expected {shape} (targets x pool / targets x subsets)")
    if not np.isfinite(array).all():
        raise ValueError(f"method {method!r} returned non-finite {name}")
    return array


def _adapter(resolved: Resolved, seed: int, compute: Compute) -> tuple[Method, FitContext]:
    """The resolved method's adapter, and its context with a fresh work directory."""
    spec = resolved.spec
    workdir = cache_dir() / "methods" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}" / \
        f"{resolved.method}-{resolved.config_hash}-s{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    context = FitContext(spec=spec, data=resolved.data, workdir=workdir, seed=seed, compute=compute,
                         task=resolved.task)
    return resolved.method_cls(resolved.config), context


def train(resolved: Resolved, seed: int = 0, compute: Compute = CPU_COMPUTE) -> str:
    """Train a resolved learned method for its task (its ``train`` phase); returns where the
    result is."""
    adapter, context = _adapter(resolved, seed, compute)
    if not adapter.trains():
        raise ConfigError(f"method {resolved.method!r} has nothing to train")
    with compute.device.autocast():
        trained = adapter.train(context)
    return trained.artifact or str(context.workdir)


def attribute(adapter: Method, context: FitContext, membership: np.ndarray, method: str,
              group_score: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
    """Train (if the method trains), fit and score one adapter, timing each phase.

    Returns (scores (T, N), group scores (T, M) over every subset of ``membership``, costs,
    how the group scores were made). ``group_score``: ``None`` uses the method's own
    ``score_groups`` where it gives one, else the sum; a name in :data:`pooling.POOLINGS`
    forces that pooling for any method. A ``train`` that reports ``cached`` loaded what it
    trains: the phase is marked cached (its time is not the training cost), with the
    training's own account of its cost as ``original``.
    """
    if group_score is not None:
        pooling.check_group_score(group_score)
    data, where = context.data, context.device
    T, N = len(data.targets), len(data.pool)
    costs: dict[str, Any] = {"device": where.describe()}
    if adapter.trains():
        trained, train_cost = measure(lambda: adapter.train(context), device=where)
        costs["train"] = {**train_cost.to_dict(), "cached": trained.cached, "original": trained.cost}
    _, fit_cost = measure(lambda: adapter.fit(data.pool, context), device=where)
    raw, score_cost = measure(lambda: adapter.score(data.targets), device=where)
    scores = _check_scores("scores", raw, (T, N), method)
    costs.update({"fit": fit_cost.to_dict(), "score": score_cost.to_dict()})
    raw_groups, group_cost = (None, None) if group_score else measure(
        lambda: adapter.score_groups(data.targets, membership), device=where)
    if raw_groups is not None:
        group_scores = _check_scores("group scores", raw_groups, (T, len(membership)), method)
        costs["score_groups"] = group_cost.to_dict()
        aggregation = "method's own score_groups"
    else:
        pool, aggregation = pooling.POOLINGS[group_score or "sum"]
        group_scores = pool(scores, membership)
    costs["score_per_target_s"] = score_cost.wall_s / T
    costs["storage_bytes"] = {"disk": dir_bytes(context.workdir), "memory": held_bytes(adapter)}
    return scores, group_scores, costs, aggregation


def record_path(results_dir: Path | str, spec: TaskSpec, method: str, config_hash: str, seed: int,
                correlation: str = "spearman") -> Path:
    """Where a run's record goes: ``<results>/<task>/<preset>/`` + :func:`record.file_name`
    (method, config hash, spec hash, seed, correlation). Its group scores go beside it (.npz)."""
    return Path(results_dir) / spec.task / spec.preset / record.file_name(
        method, config_hash, spec_hash(spec), seed, correlation)


def _bank_info(bank: GroundTruthBank, data: TaskData, correlation: str) -> dict[str, Any]:
    gt = bank.spec.groundtruth
    return {"path": str(bank.path), "n_subsets": gt.n_subsets,
            "n_test_subsets": int((~tuning_subsets(len(bank.membership))).sum()),
            "n_seeds": gt.n_seeds, "fraction": gt.fraction, "source": gt.source,
            "subset_sizes": sorted(set(bank.membership.sum(axis=1).tolist())),
            "n_pool": len(data.pool), "n_targets": len(data.targets),
            "noise_ceiling": bank_reliability(bank.losses, correlation)}


def run(method: str, task: str, preset: str | None = None, seed: int = 0,
        config: dict[str, Any] | None = None, spec_overrides: dict[str, str] | None = None,
        compute: Compute = CPU_COMPUTE, results_dir: Path | str | None = None, **options: Any
        ) -> tuple[dict[str, Any], Path]:
    """Resolve and check ``method`` on ``task`` (:func:`tdabench.checks.validate`), then
    :func:`run_resolved` it; ``options``: its keyword arguments."""
    resolved = validate(task, preset, spec_overrides, method, config, evaluates=True)
    return run_resolved(resolved, seed, compute, results_dir, **options)


def run_resolved(resolved: Resolved, seed: int = 0, compute: Compute = CPU_COMPUTE,
                 results_dir: Path | str | None = None, bank_path: Path | None = None,
                 group_score: str | None = None, correlation: str = "spearman",
                 tuning: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Build or reuse the ground truth, run the resolved method on it, write and return the
    record (its JSON form; :func:`record.from_dict` types it) and where it was written.
    ``tuning``: how the config's values were chosen (what was tuned, on which subsets, over
    which grid), stored in the record as given.

    The record holds the metrics on the bank's test subsets, the costs and the protocol;
    beside it, ``<record>.npz`` holds the (T, M_test) group scores and labels, which
    ``tdabench compare`` resamples. ``results_dir``: default :func:`record.user_results_dir`
    (never the committed reference set), checked writable before any compute, as are the
    correlation and ``group_score`` (see :func:`attribute`). ``compute`` says where every phase
    runs (stated in the record's ``cost.device``).
    """
    the_protocol = protocol(correlation)
    if group_score is not None:
        pooling.check_group_score(group_score)
    results_dir = record.check_writable(results_dir or record.user_results_dir())
    code = record.code()  # the source that runs now, not what the checkout holds when the run ends
    spec, data, method = resolved.spec, resolved.data, resolved.method
    adapter, context = _adapter(resolved, seed, compute)
    bank = ensure_bank(resolved.task, spec, data, bank_path, compute)
    scores, group_scores, costs, aggregation = attribute(adapter, context, bank.membership, method,
                                                         group_score)
    config_dict = resolved.config_dict
    config_hash = resolved.config_hash
    if group_score:
        config_dict["group_score"] = group_score  # part of what was run, and of the file name
        config_hash = stable_hash({**hashed_fields(resolved.config), "group_score": group_score}, 8)
    labels = bank.labels()
    measured = evaluate(scores, group_scores, labels, np.array([ex.source for ex in data.pool]),
                        np.array([ex.source for ex in data.targets]), correlation)
    per_target = measured.pop("per_target_lds")
    the_protocol = {**the_protocol, "group_score": aggregation}
    if bank.spec.groundtruth.source == "published":  # the paper's figure is the headline
        authors = None if group_score else adapter.EVALUATION_POOLING
        paper_groups = (pooling.pooled_group_scores(scores, bank.membership, authors) if authors
                        else group_scores)
        measured["lds_all_subsets"] = paper_lds(
            paper_groups, labels, pooling.POOLINGS[authors][1] if authors else "as for the test part",
            correlation)
        published = resolved.task.published_lds.get(method)
        if published and authors:  # the authors' figure, beside the same computation's
            measured["lds_all_subsets"]["published"] = published
        measured["headline"] = "lds_all_subsets"
        the_protocol["headline"] = ("lds_all_subsets: all published subsets, the method authors' "
                                    "evaluation aggregation (comparable with the paper)")
    rec = record.from_dict({
        "schema": record.SCHEMA, "task": spec.task, "preset": resolved.preset, "spec_hash": spec_hash(spec),
        "spec": spec.to_dict(), "bank": _bank_info(bank, data, correlation),
        "method": method, "config": config_dict, "config_hash": config_hash, "seed": seed,
        "method_info": dataclasses.asdict(record.method_info(resolved.method_cls)),
        "resolved": adapter.resolved() or None,
        "protocol": the_protocol,
        "protocol_version": PROTOCOL_VERSION, "protocol_hash": protocol_hash(correlation),
        "metrics": measured, "per_target_lds": per_target, "cost": costs, "versions": versions(),
        "host": dataclasses.asdict(record.host()), "code": dataclasses.asdict(code),
        "created": record.now(), "tuning": tuning,
    })
    test = ~tuning_subsets(labels.shape[1])
    out = record.save(rec, record_path(results_dir, spec, method, config_hash, seed, correlation),
                      {"group_scores": group_scores[:, test], "labels": labels[:, test]})
    return rec.to_dict(), out


def tune(resolved: Resolved, grid: dict[str, list[str]], seed: int = 0, compute: Compute = CPU_COMPUTE,
         bank_path: Path | None = None, correlation: str = "spearman",
         results_dir: Path | str | None = None) -> tuple[list[dict[str, Any]], Path]:
    """Grid search of a resolved method's config on the bank's tuning subsets only.

    ``grid`` maps config fields to the values to try (every combination is run, on top of the
    resolved config). Returns the trials, best first, and the CSV file they were written to
    (``<results>/<task>/<preset>/tuning/<method>-<fields>-<hash>.csv``, the hash of the grid,
    config, seed and spec, so another experiment never overwrites it; default results: the user's, see
    :func:`record.user_results_dir`); no test-subset number is computed.
    """
    import pandas as pd

    check_correlation(correlation)
    results_dir = record.check_writable(results_dir or record.user_results_dir())
    bank = ensure_bank(resolved.task, resolved.spec, resolved.data, bank_path, compute)
    tuning = tuning_subsets(len(bank.membership))
    labels = bank.labels()[:, tuning]
    fields = list(grid)
    trials = []
    for values in itertools.product(*(grid[f] for f in fields)):
        trial = resolved.with_config(dict(zip(fields, values)))
        adapter, context = _adapter(trial, seed, compute)
        _, group_scores, costs, _ = attribute(adapter, context, bank.membership[tuning], trial.method)
        per_target = metrics.lds_per_target(group_scores, labels, correlation)
        low, high = metrics.bootstrap_ci(per_target)
        trials.append({**dict(zip(fields, values)), "tuning_lds": float(per_target.mean()),
                       "ci_low": low, "ci_high": high, "n_tuning_subsets": int(tuning.sum()),
                       "fit_s": costs["fit"]["wall_s"], "score_per_target_s": costs["score_per_target_s"],
                       "config_hash": trial.config_hash})
    trials.sort(key=lambda trial: trial["tuning_lds"], reverse=True)
    spec = resolved.spec
    # one file per grid, config and seed: another experiment never overwrites this one's trials
    experiment = stable_hash({"grid": grid, "config": resolved.config_dict, "seed": seed,
                              "spec": spec_hash(spec)}, 8)
    name = f"{resolved.method}-{'-'.join(fields) or 'config'}-{experiment}.csv"
    out = Path(results_dir) / spec.task / resolved.preset / "tuning" / name
    atomic_write_bytes(out, pd.DataFrame(trials).to_csv(index=False).encode())
    return trials, out


def _phase_line(name: str, p: record.Phase) -> str:
    if p.cached:
        return f"  {name:<6} cached: loaded in {p.wall_s:.2f} s (what it loaded was made earlier)"
    gpu = "" if p.cuda_peak_bytes is None else f"  peak GPU {p.cuda_peak_bytes / 2**20:.0f} MiB"
    return (f"  {name:<6} {p.wall_s:8.2f} s wall {p.cpu_s:8.2f} s CPU  "
            f"peak RSS {p.peak_rss_bytes / 2**20:7.0f} MiB (+{p.peak_rss_delta_bytes / 2**20:.0f} MiB){gpu}")


def summary(rec: record.Record | dict[str, Any]) -> str:
    """A few readable lines about one result record (typed, or its JSON form)."""
    r = rec if isinstance(rec, record.Record) else record.from_dict(rec)
    lds, c = r.metrics.lds, r.cost
    lines = [
        f"{r.method} on {r.task}/{r.preset} (spec {r.spec_hash}, {lds.n_subsets} test subsets x "
        f"{lds.n_targets} targets)",
        f"  LDS        {lds.mean:+.4f}  95% CI over targets [{lds.ci95[0]:+.4f}, {lds.ci95[1]:+.4f}]",
    ]
    paper = r.metrics.lds_all_subsets
    if paper is not None and r.metrics.headline == "lds_all_subsets":
        lines[1:2] = [f"  LDS (paper, all {paper.n_subsets} subsets; {paper.group_score})",
                      f"             {paper.mean:+.6f}  95% CI over targets [{paper.ci95[0]:+.4f}, "
                      f"{paper.ci95[1]:+.4f}]",
                      f"  LDS test part {lds.mean:+.4f}  95% CI over targets [{lds.ci95[0]:+.4f}, "
                      f"{lds.ci95[1]:+.4f}]"]
    if lds.ci95_subsets:
        lines.append(f"{'':<28} over subsets [{lds.ci95_subsets[0]:+.4f}, {lds.ci95_subsets[1]:+.4f}]")
    ceiling = r.bank.noise_ceiling
    if ceiling:
        clo, chi = ceiling.ceiling_ci95
        lines.append(f"  noise ceiling {ceiling.ceiling:.4f} [{clo:.4f}, {chi:.4f}] "
                     f"(split-half r {ceiling.split_half_r:.4f})")
    elif r.bank.n_seeds < 2:
        lines.append("  noise ceiling not measured: one training seed per subset "
                     "(--set groundtruth.n_seeds=2 measures it)")
    for k in RECALL_KS:
        recall = r.metrics.recall[k]
        lines.append(f"  recall@{k:<3} {recall.value:.3f}    (random ranking: {recall.chance:.3f})"
                     + ("; one source only: recall says nothing" if recall.chance >= 1 else ""))
    lines += [_phase_line(phase, c.phases[phase]) for phase in ("train", "fit", "score") if phase in c.phases]
    where = c.device or {}
    if where.get("gpu"):
        lines.append(f"  device     {where['device']} ({where['gpu']}), {where['dtype']}")
    lines.append(f"  per target {c.score_per_target_s * 1e3:.2f} ms; storage "
                 f"{c.storage.memory / 2**20:.2f} MiB in memory, {c.storage.disk / 2**20:.2f} MiB on disk")
    if r.tuning:
        lines.append(f"  tuned      {', '.join(r.tuning.get('tuned', []))} on "
                     f"{r.tuning.get('subsets', 'the tuning subsets')}")
    return "\n".join(lines)
