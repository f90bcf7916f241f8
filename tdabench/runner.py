"""One benchmark run: ground truth, fit, score, metrics, and the result record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import device as devices
from . import metrics
from .device import CPU, Device
from .groundtruth import GroundTruthBank, ensure_bank, versions
from .method import FitContext, held_bytes, make_config
from .registry import get_method, get_task
from .spec import TaskSpec, override, spec_hash, stable_hash
from .store import atomic_write_bytes, atomic_write_json, atomic_write_npz, cache_dir, dir_bytes, read_json
from .task import Task, TaskData
from .timing import measure

RECALL_KS = (1, 10)
TUNING_EVERY = 5  # subsets m with m % 5 == 0 are the tuning part; the rest are the test part
PROTOCOL = {
    "model_output": "mean cross-entropy of the target's response tokens after fine-tuning",
    "label": "minus the loss, mean over training seeds (higher = subset helped)",
    "score_sign": "higher = more helpful (lowers the target's loss)",
    "nan_policy": "an undefined correlation (constant scores or labels) counts as 0",
    "aggregate": "mean over targets; 95% percentile bootstrap over targets (2000 resamples) and, "
                 "separately, over subsets (1000 resamples)",
    "subsets": f"LDS on the test part of the bank: subsets m with m % {TUNING_EVERY} != 0; "
               f"the tuning part (m % {TUNING_EVERY} == 0) is for hyperparameter search only",
    "noise_ceiling": "split-half reliability r between the training seeds' halves, "
                     "Spearman-Brown 2r/(1+r), ceiling sqrt of it, mean over targets",
}


def protocol(correlation: str = "spearman") -> dict[str, str]:
    """The evaluation protocol of a record: what every LDS on one leaderboard shares."""
    if correlation not in metrics.CORRELATIONS:
        raise ValueError(f"unknown correlation {correlation!r}; use one of {', '.join(metrics.CORRELATIONS)}")
    return {**PROTOCOL, "correlation": f"{correlation} over subsets, per target"
            + (", average ranks for ties" if correlation == "spearman" else "")}


def tuning_subsets(n_subsets: int) -> np.ndarray:
    """(M,) bool: the bank's tuning part (a fixed rule, stable when a bank grows)."""
    return np.arange(n_subsets) % TUNING_EVERY == 0


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


def bank_reliability(bank: GroundTruthBank, correlation: str = "spearman") -> dict[str, Any] | None:
    """The bank's noise ceiling on its test part (None with a single training seed)."""
    if bank.losses.shape[1] < 2:
        return None
    test = ~tuning_subsets(len(bank.membership))
    r, ceiling = metrics.noise_ceiling(bank.losses[test], correlation)
    return {"split_half_r": float(r.mean()), "ceiling": float(ceiling.mean()),
            "ceiling_ci95": list(metrics.bootstrap_ci(ceiling))}


def evaluate(scores: np.ndarray, group_scores: np.ndarray, bank: GroundTruthBank,
             data: TaskData, correlation: str = "spearman", n_boot: int = 2000) -> dict[str, Any]:
    """LDS on the bank's test subsets (with bootstrap intervals over targets and over subsets)
    and recall@k of one method's scores. ``group_scores``: (T, M) over all M subsets."""
    test = ~tuning_subsets(len(bank.membership))
    labels = bank.labels()[:, test]
    test_scores = group_scores[:, test]
    per_target = metrics.lds_per_target(test_scores, labels, correlation)
    pool_src = np.array([ex.source for ex in data.pool])
    target_src = np.array([ex.source for ex in data.targets])
    out: dict[str, Any] = {
        "lds": {"mean": float(per_target.mean()),
                "ci95": list(metrics.bootstrap_ci(per_target, n_boot=n_boot)),
                "ci95_subsets": list(metrics.bootstrap_ci_subsets(test_scores, labels, correlation)),
                "n_targets": len(per_target), "n_subsets": int(test.sum())},
        "per_target_lds": per_target.tolist(),
    }
    for k in RECALL_KS:
        hits = metrics.recall_at_k(scores, pool_src, target_src, k)
        out[f"recall@{k}"] = {"value": float(hits.mean()),
                              "chance": metrics.recall_chance(pool_src, target_src, k)}
    return out


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
        raise ValueError(f"method {method!r} has nothing to train")
    with device.autocast():
        adapter.train(context)
    return str(getattr(adapter, "checkpoint", context.workdir))


def attribute(adapter: Any, context: FitContext, membership: np.ndarray, method: str,
              group_score: str | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any], str]:
    """Train (if the method trains), fit and score one adapter, timing each phase.

    Returns (scores (T, N), group scores (T, M) over every subset of ``membership``, costs,
    how the group scores were made). ``group_score``: ``None`` uses the method's own
    ``score_groups`` if it has one, else the sum; ``"sum"`` or ``"attention"`` (AirRep's
    pooling) force that aggregation for any method.
    """
    if group_score not in (None, "sum", "attention"):
        raise ValueError(f"group_score must be 'sum' or 'attention', not {group_score!r}")
    data, where = context.data, devices.of(context)
    T, N = len(data.targets), len(data.pool)
    costs: dict[str, Any] = {"device": where.describe()}
    if hasattr(adapter, "train"):
        _, train_cost = measure(lambda: adapter.train(context), device=where)
        costs["train"] = train_cost.to_dict()
    _, fit_cost = measure(lambda: adapter.fit(data.pool, context), device=where)
    raw, score_cost = measure(lambda: adapter.score(data.targets), device=where)
    scores = _check_scores("scores", raw, (T, N), method)
    costs.update({"fit": fit_cost.to_dict(), "score": score_cost.to_dict()})
    if group_score == "attention":
        group_scores = metrics.attention_pooled_group_scores(scores, membership)
        aggregation = "attention pooling of per-example scores (softmax of |s| over the subset)"
    elif hasattr(adapter, "score_groups") and group_score is None:
        raw_groups, group_cost = measure(lambda: adapter.score_groups(data.targets, membership), device=where)
        group_scores = _check_scores("group scores", raw_groups, (T, len(membership)), method)
        costs["score_groups"] = group_cost.to_dict()
        aggregation = "method's own score_groups"
    else:
        group_scores = metrics.sum_group_scores(scores, membership)
        aggregation = "sum of per-example scores over the subset"
    costs["score_per_target_s"] = score_cost.wall_s / T
    costs["storage_bytes"] = {"disk": dir_bytes(context.workdir), "memory": held_bytes(adapter)}
    return scores, group_scores, costs, aggregation


def record_path(results_dir: Path | str, spec: TaskSpec, method: str, config_hash: str, seed: int,
                correlation: str = "spearman") -> Path:
    """Where a run's record goes: ``<results>/<task>/<preset>/<method>-<config>-s<seed>.json``
    (``-<correlation>`` appended when it is not Spearman). Its group scores go beside it (.npz)."""
    suffix = "" if correlation == "spearman" else f"-{correlation}"
    return Path(results_dir) / spec.task / spec.preset / f"{method}-{config_hash}-s{seed}{suffix}.json"


def run(method: str, task: str, preset: str = "tiny", seed: int = 0,
        config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
        workers: int = 1, results_dir: Path | str = "results",
        bank_path: Path | None = None, group_score: str | None = None,
        correlation: str = "spearman", executor: str = "local",
        address: str | None = None, device: Device = CPU) -> tuple[dict[str, Any], Path]:
    """Build or reuse the ground truth, run ``method`` on it, write and return the record.

    The record (JSON) holds the metrics on the bank's test subsets, the costs and the protocol;
    beside it, ``<record>.npz`` holds the (T, M_test) group scores and labels, which
    ``tdabench compare`` resamples. See :func:`attribute` for ``group_score``; ``executor`` and
    ``address`` say where fine-tunes run (this bank's and a method's own banks); ``device`` on
    what every phase runs (stated in the record's ``cost.device``).
    """
    the_protocol = protocol(correlation)
    t, spec, data = load_task(task, preset, spec_overrides)
    bank = ensure_bank(t, spec, data, bank_path, workers, executor, address, device=device)
    adapter, config_dict, context = _method_and_context(method, spec, data, seed, config, workers,
                                                        executor, address, device)
    scores, group_scores, costs, aggregation = attribute(adapter, context, bank.membership, method,
                                                         group_score)
    if group_score:
        config_dict["group_score"] = group_score  # part of what was run, and of the file name
    config_hash = stable_hash(config_dict, 8)

    gt = spec.groundtruth
    test = ~tuning_subsets(len(bank.membership))
    record = {
        "schema": 2,
        "task": spec.task, "preset": preset, "spec_hash": spec_hash(spec), "spec": spec.to_dict(),
        "bank": {"path": str(bank.path), "n_subsets": gt.n_subsets, "n_test_subsets": int(test.sum()),
                 "n_seeds": gt.n_seeds, "fraction": gt.fraction, "source": gt.source,
                 "subset_sizes": sorted(set(bank.membership.sum(axis=1).tolist())),
                 "n_pool": len(data.pool), "n_targets": len(data.targets),
                 "noise_ceiling": bank_reliability(bank, correlation)},
        "method": method, "config": config_dict, "config_hash": config_hash, "seed": seed,
        "protocol": {**the_protocol, "group_score": aggregation},
        "protocol_hash": stable_hash(the_protocol, 8),
        "metrics": evaluate(scores, group_scores, bank, data, correlation),
        "cost": costs,
        "versions": versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record["per_target_lds"] = record["metrics"].pop("per_target_lds")
    out = record_path(results_dir, spec, method, config_hash, seed, correlation)
    atomic_write_npz(out.with_suffix(".npz"), group_scores=group_scores[:, test],
                     labels=bank.labels()[:, test])
    atomic_write_json(out, record)
    return record, out


def tune(method: str, task: str, grid: dict[str, list[str]], preset: str = "tiny", seed: int = 0,
         config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
         workers: int = 1, bank_path: Path | None = None, correlation: str = "spearman",
         results_dir: Path | str = "results", executor: str = "local",
         address: str | None = None, device: Device = CPU) -> tuple[list[dict[str, Any]], Path]:
    """Grid search of a method's config on the bank's tuning subsets only.

    ``grid`` maps config fields to the values to try (every combination is run, on top of
    ``config``). Returns the trials, best first, and the CSV file they were written to
    (``<results>/<task>/<preset>/tuning/<method>.csv``); no test-subset number is computed.
    """
    import itertools

    import pandas as pd

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


def compare(record_a: Path, record_b: Path, n_boot: int = 2000) -> dict[str, Any]:
    """Paired bootstrap of LDS(A) - LDS(B) for two records on the same bank and protocol:
    over targets (from the records) and over subsets (from their .npz group scores)."""
    a, b = read_json(record_a), read_json(record_b)
    for key in ("spec_hash", "protocol_hash"):
        if a.get(key) != b.get(key):
            raise ValueError(f"{record_a} and {record_b} differ in {key} ({a.get(key)} vs {b.get(key)}): "
                             "they were not measured on the same bank and protocol")
    out: dict[str, Any] = {
        "a": a["method"], "b": b["method"],
        "lds_a": a["metrics"]["lds"]["mean"], "lds_b": b["metrics"]["lds"]["mean"],
        "over_targets": metrics.paired_bootstrap_targets(a["per_target_lds"], b["per_target_lds"], n_boot),
    }
    npz_a, npz_b = Path(record_a).with_suffix(".npz"), Path(record_b).with_suffix(".npz")
    if npz_a.exists() and npz_b.exists():
        with np.load(npz_a) as fa, np.load(npz_b) as fb:
            if not np.array_equal(fa["labels"], fb["labels"]):
                raise ValueError(f"{npz_a} and {npz_b} hold different ground-truth labels")
            correlation = a["protocol"]["correlation"].split()[0]
            out["over_subsets"] = metrics.paired_bootstrap_subsets(
                fa["group_scores"], fb["group_scores"], fa["labels"], correlation, n_boot // 2)
    return out


def summary(record: dict[str, Any]) -> str:
    """A few readable lines about one result record."""
    m, c = record["metrics"], record["cost"]
    lo, hi = m["lds"]["ci95"]
    lines = [
        f"{record['method']} on {record['task']}/{record['preset']} "
        f"(spec {record['spec_hash']}, {m['lds']['n_subsets']} test subsets x "
        f"{m['lds']['n_targets']} targets)",
        f"  LDS        {m['lds']['mean']:+.4f}  95% CI over targets [{lo:+.4f}, {hi:+.4f}]",
    ]
    if "ci95_subsets" in m["lds"]:
        slo, shi = m["lds"]["ci95_subsets"]
        lines.append(f"{'':<28} over subsets [{slo:+.4f}, {shi:+.4f}]")
    ceiling = record.get("bank", {}).get("noise_ceiling")
    if ceiling:
        clo, chi = ceiling["ceiling_ci95"]
        lines.append(f"  noise ceiling {ceiling['ceiling']:.4f} [{clo:.4f}, {chi:.4f}] "
                     f"(split-half r {ceiling['split_half_r']:.4f})")
    for k in RECALL_KS:
        r = m[f"recall@{k}"]
        lines.append(f"  recall@{k:<3} {r['value']:.3f}    (random ranking: {r['chance']:.3f})")
    for phase in ("train", "fit", "score"):
        if phase not in c:
            continue
        p = c[phase]
        gpu = "" if p.get("cuda_peak_bytes") is None else f"  peak GPU {p['cuda_peak_bytes'] / 2**20:.0f} MiB"
        lines.append(f"  {phase:<6} {p['wall_s']:8.2f} s wall {p['cpu_s']:8.2f} s CPU  "
                     f"peak RSS {p['peak_rss_bytes'] / 2**20:7.0f} MiB "
                     f"(+{p['peak_rss_delta_bytes'] / 2**20:.0f} MiB){gpu}")
    where = c.get("device") or {}
    if where.get("gpu"):
        lines.append(f"  device     {where['device']} ({where['gpu']}), {where['dtype']}")
    storage = c["storage_bytes"]
    lines.append(f"  per target {c['score_per_target_s'] * 1e3:.2f} ms; storage "
                 f"{storage['memory'] / 2**20:.2f} MiB in memory, {storage['disk'] / 2**20:.2f} MiB on disk")
    return "\n".join(lines)


def current(record: dict[str, Any], spec: TaskSpec) -> bool:
    """Whether ``record`` was made for ``spec`` under this version's (Spearman) protocol."""
    return (record.get("spec_hash") == spec_hash(spec)
            and record.get("protocol_hash") == stable_hash(protocol(), 8))


def reproduce(preset: str = "tiny", tasks: list[str] | None = None, methods: list[str] | None = None,
              configs: dict[str, dict[str, str]] | None = None, results_dir: Path | str = "results",
              workers: int = 1, device: Device = CPU) -> list[Path]:
    """Run every method on every offline task that has ``preset``, skipping records that exist
    for the current spec (so it resumes). ``configs`` maps a method to its config overrides.
    Methods whose optional dependency is missing are skipped with a message."""
    from .method import MissingDependency
    from .registry import method_names, task_names

    configs = configs or {}
    written = []
    for task_name in tasks or task_names():
        task = get_task(task_name)
        if preset not in task.presets or (tasks is None and task.needs_hub):
            continue
        spec = task.spec(preset)
        for method in methods or method_names():
            try:
                cfg = make_config(get_method(method), configs.get(method))
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            out = record_path(results_dir, spec, method, stable_hash(dataclasses.asdict(cfg), 8), 0)
            if out.exists() and current(read_json(out), spec):
                print(f"exists: {out}")
                continue
            try:
                record, out = run(method, task_name, preset, config=configs.get(method),
                                  workers=workers, results_dir=results_dir, device=device)
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            print(summary(record))
            written.append(out)
    return written
