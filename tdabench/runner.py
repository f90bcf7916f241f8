"""One benchmark run: ground truth, fit, score, metrics, and the result record.

The protocol (split rule, evaluation) is in :mod:`tdabench.protocol`, the record in
:mod:`tdabench.record`; paired comparisons of records in :mod:`tdabench.reporting.compare`, the reference
set in :mod:`tdabench.reproduce`.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tdabench import device as devices
from tdabench import metrics, record
from tdabench.device import CPU, Device
from tdabench.errors import ConfigError
from tdabench.groundtruth import GroundTruthBank, ensure_bank, versions
from tdabench.method import FitContext, held_bytes, make_config
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
from tdabench.registry import get_method, get_task
from tdabench.spec import TaskSpec, override, spec_hash, stable_hash
from tdabench.store import atomic_write_bytes, cache_dir, dir_bytes
from tdabench.task import Task, TaskData
from tdabench.timing import measure


def load_task(task: str, preset: str = "tiny", spec_overrides: dict[str, str] | None = None
              ) -> tuple[Task, TaskSpec, TaskData]:
    """The task, its spec for ``preset`` (with dotted overrides) and its examples."""
    t = get_task(task)
    spec = override(t.spec(preset), spec_overrides or {})
    return t, spec, t.load(spec.data)


def groundtruth(task: str, preset: str = "tiny", spec_overrides: dict[str, str] | None = None,
                workers: int = 1, bank_path: Path | None = None, executor: str = "local",
                address: str | None = None, subsets: slice | None = None,
                device: Device = CPU) -> GroundTruthBank:
    """Build (or resume) a task's ground-truth bank; ``executor`` ``"local"`` or ``"ray"``
    (``address``: a Ray cluster; None starts a local instance); ``subsets``: only these subset
    indices (a part of the bank, to merge with others); ``device``: where fine-tunes run."""
    t, spec, data = load_task(task, preset, spec_overrides)
    return ensure_bank(t, spec, data, bank_path, workers, executor, address, subsets, device)


def _check_scores(name: str, array: Any, shape: tuple[int, int], method: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"method {method!r} returned {name} of shape {array.shape}, "
                         f"expected {shape} (targets x pool / targets x subsets)")
    if not np.isfinite(array).all():
        raise ValueError(f"method {method!r} returned non-finite {name}")
    return array


def _method_and_context(method: str, spec: TaskSpec, data: TaskData, seed: int,
                        config: dict[str, str] | None, workers: int, executor: str = "local",
                        address: str | None = None, device: Device = CPU) -> tuple[Any, dict, FitContext]:
    """The adapter with its config, and a fresh work directory for it."""
    method_cls = get_method(method)
    cfg = make_config(method_cls, config)
    config_dict = dataclasses.asdict(cfg)
    workdir = cache_dir() / "methods" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}" / \
        f"{method}-{stable_hash(config_dict, 8)}-s{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    context = FitContext(spec=spec, data=data, workdir=workdir, seed=seed, workers=workers,
                         executor=executor, address=address, device=device.name, dtype=device.dtype)
    return method_cls(cfg), config_dict, context


def train(method: str, task: str, preset: str = "tiny", seed: int = 0,
          config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
          workers: int = 1, executor: str = "local", address: str | None = None,
          device: Device = CPU) -> str:
    """Train a learned method for a task (its ``train`` phase); returns where the result is."""
    _, spec, data = load_task(task, preset, spec_overrides)
    adapter, _, context = _method_and_context(method, spec, data, seed, config, workers, executor,
                                              address, device)
    if not hasattr(adapter, "train"):
        raise ConfigError(f"method {method!r} has nothing to train")
    with device.autocast():
        adapter.train(context)
    return str(getattr(adapter, "checkpoint", context.workdir))


def train_account(adapter: Any, cached: bool) -> dict[str, Any]:
    """The train phase's ``cached`` flag and, when the adapter keeps a ``train_cost`` (a dict:
    ``{"cached": False, ...measured now}`` or ``{"cached": True, "original": {...}}`` for a
    loaded model), that account as ``original``: the cost of the training, wherever it ran."""
    own = getattr(adapter, "train_cost", None)
    if own is None:
        return {"cached": cached}
    original = own.get("original") if own["cached"] else {k: v for k, v in own.items() if k != "cached"}
    return {"cached": bool(own["cached"]), "original": original}


def attribute(adapter: Any, context: FitContext, membership: np.ndarray, method: str,
              group_score: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
    """Train (if the method trains), fit and score one adapter, timing each phase.

    Returns (scores (T, N), group scores (T, M) over every subset of ``membership``, costs,
    how the group scores were made). ``group_score``: ``None`` uses the method's own
    ``score_groups`` if it has one, else the sum; a name in :data:`metrics.POOLINGS`
    forces that pooling for any method. A ``train`` that returns True loaded what it trains
    from a cache: the phase is marked ``cached`` (its time is not the training cost).
    """
    if group_score is not None:
        metrics.check_group_score(group_score)
    data, where = context.data, devices.of(context)
    T, N = len(data.targets), len(data.pool)
    costs: dict[str, Any] = {"device": where.describe()}
    if hasattr(adapter, "train"):
        cached, train_cost = measure(lambda: adapter.train(context), device=where)
        costs["train"] = {**train_cost.to_dict(), **train_account(adapter, cached is True)}
    _, fit_cost = measure(lambda: adapter.fit(data.pool, context), device=where)
    raw, score_cost = measure(lambda: adapter.score(data.targets), device=where)
    scores = _check_scores("scores", raw, (T, N), method)
    costs.update({"fit": fit_cost.to_dict(), "score": score_cost.to_dict()})
    if group_score is None and hasattr(adapter, "score_groups"):
        raw_groups, group_cost = measure(lambda: adapter.score_groups(data.targets, membership), device=where)
        group_scores = _check_scores("group scores", raw_groups, (T, len(membership)), method)
        costs["score_groups"] = group_cost.to_dict()
        aggregation = "method's own score_groups"
    else:
        pool, aggregation = metrics.POOLINGS[group_score or "sum"]
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


def run(method: str, task: str, preset: str = "tiny", seed: int = 0,
        config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
        workers: int = 1, results_dir: Path | str | None = None,
        bank_path: Path | None = None, group_score: str | None = None,
        correlation: str = "spearman", executor: str = "local",
        address: str | None = None, device: Device = CPU,
        tuning: dict[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """Build or reuse the ground truth, run ``method`` on it, write and return the record (its
    JSON form; :func:`record.from_dict` types it) and where it was written. ``tuning``: how the
    config's values were chosen (what was tuned, on which subsets, over which grid), stored in
    the record as given.

    The record holds the metrics on the bank's test subsets, the costs and the protocol;
    beside it, ``<record>.npz`` holds the (T, M_test) group scores and labels, which
    ``tdabench compare`` resamples. ``results_dir``: default :func:`record.user_results_dir`
    (never the committed reference set), checked writable before any compute, as are the
    method, its config, the correlation and ``group_score`` (see :func:`attribute`).
    ``executor`` and ``address`` say where fine-tunes run; ``device`` on what every phase runs
    (stated in the record's ``cost.device``).
    """
    the_protocol = protocol(correlation)
    if group_score is not None:
        metrics.check_group_score(group_score)
    results_dir = record.check_writable(results_dir or record.user_results_dir())
    code = record.code()  # the source that runs now, not what the checkout holds when the run ends
    t, spec, data = load_task(task, preset, spec_overrides)
    adapter, config_dict, context = _method_and_context(method, spec, data, seed, config, workers,
                                                        executor, address, device)
    info = record.method_info(type(adapter))
    bank = ensure_bank(t, spec, data, bank_path, workers, executor, address, device=device)
    scores, group_scores, costs, aggregation = attribute(adapter, context, bank.membership, method,
                                                         group_score)
    if group_score:
        config_dict["group_score"] = group_score  # part of what was run, and of the file name
    config_hash = stable_hash(config_dict, 8)
    labels = bank.labels()
    measured = evaluate(scores, group_scores, labels, np.array([ex.source for ex in data.pool]),
                        np.array([ex.source for ex in data.targets]), correlation)
    per_target = measured.pop("per_target_lds")
    the_protocol = {**the_protocol, "group_score": aggregation}
    if bank.spec.groundtruth.source == "published":  # the paper's figure is the headline
        pooling = None if group_score else getattr(adapter, "evaluation_pooling", None)
        measured["lds_all_subsets"] = paper_lds(scores, group_scores, bank.membership, labels, pooling,
                                                correlation)
        measured["headline"] = "lds_all_subsets"
        the_protocol["headline"] = ("lds_all_subsets: all published subsets, the method authors' "
                                    "evaluation aggregation (comparable with the paper)")
    rec = record.from_dict({
        "schema": record.SCHEMA, "task": spec.task, "preset": preset, "spec_hash": spec_hash(spec),
        "spec": spec.to_dict(), "bank": _bank_info(bank, data, correlation),
        "method": method, "config": config_dict, "config_hash": config_hash, "seed": seed,
        "method_info": dataclasses.asdict(info),
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


def tune(method: str, task: str, grid: dict[str, list[str]], preset: str = "tiny", seed: int = 0,
         config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
         workers: int = 1, bank_path: Path | None = None, correlation: str = "spearman",
         results_dir: Path | str | None = None, executor: str = "local",
         address: str | None = None, device: Device = CPU) -> tuple[list[dict[str, Any]], Path]:
    """Grid search of a method's config on the bank's tuning subsets only.

    ``grid`` maps config fields to the values to try (every combination is run, on top of
    ``config``). Returns the trials, best first, and the CSV file they were written to
    (``<results>/<task>/<preset>/tuning/<method>.csv``; default results: the user's, see
    :func:`record.user_results_dir`); no test-subset number is computed.
    """
    import pandas as pd

    check_correlation(correlation)
    results_dir = record.check_writable(results_dir or record.user_results_dir())
    t, spec, data = load_task(task, preset, spec_overrides)
    bank = ensure_bank(t, spec, data, bank_path, workers, executor, address, device=device)
    tuning = tuning_subsets(len(bank.membership))
    labels = bank.labels()[:, tuning]
    fields = list(grid)
    trials = []
    for values in itertools.product(*(grid[f] for f in fields)):
        trial_config = {**(config or {}), **dict(zip(fields, values))}
        adapter, config_dict, context = _method_and_context(method, spec, data, seed, trial_config,
                                                            workers, executor, address, device)
        _, group_scores, costs, _ = attribute(adapter, context, bank.membership[tuning], method)
        per_target = metrics.lds_per_target(group_scores, labels, correlation)
        low, high = metrics.bootstrap_ci(per_target)
        trials.append({**dict(zip(fields, values)), "tuning_lds": float(per_target.mean()),
                       "ci_low": low, "ci_high": high, "n_tuning_subsets": int(tuning.sum()),
                       "fit_s": costs["fit"]["wall_s"], "score_per_target_s": costs["score_per_target_s"],
                       "config_hash": stable_hash(config_dict, 8)})
    trials.sort(key=lambda trial: trial["tuning_lds"], reverse=True)
    out = Path(results_dir) / spec.task / preset / "tuning" / f"{method}.csv"
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
    for k in RECALL_KS:
        recall = r.metrics.recall[k]
        lines.append(f"  recall@{k:<3} {recall.value:.3f}    (random ranking: {recall.chance:.3f})")
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
