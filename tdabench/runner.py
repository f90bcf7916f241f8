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

from . import metrics
from .groundtruth import GroundTruthBank, ensure_bank, versions
from .method import FitContext, held_bytes, make_config
from .registry import get_method, get_task
from .spec import TaskSpec, override, spec_hash, stable_hash
from .store import atomic_write_json, cache_dir, dir_bytes, read_json
from .task import Task, TaskData
from .timing import measure

RECALL_KS = (1, 10)
PROTOCOL = {
    "model_output": "mean cross-entropy of the target's response tokens after fine-tuning",
    "label": "minus the loss, mean over training seeds (higher = subset helped)",
    "score_sign": "higher = more helpful (lowers the target's loss)",
    "correlation": "spearman over subsets, average ranks for ties, per target",
    "nan_policy": "an undefined correlation (constant scores or labels) counts as 0",
    "aggregate": "mean over targets; 95% percentile bootstrap over targets (2000 resamples)",
}


def load_task(task: str, preset: str = "tiny", spec_overrides: dict[str, str] | None = None
              ) -> tuple[Task, TaskSpec, TaskData]:
    """The task, its spec for ``preset`` (with dotted overrides) and its examples."""
    t = get_task(task)
    spec = override(t.spec(preset), spec_overrides or {})
    return t, spec, t.load(spec.data)


def groundtruth(task: str, preset: str = "tiny", spec_overrides: dict[str, str] | None = None,
                workers: int = 1, bank_path: Path | None = None) -> GroundTruthBank:
    t, spec, data = load_task(task, preset, spec_overrides)
    return ensure_bank(t, spec, data, bank_path, workers)


def evaluate(scores: np.ndarray, group_scores: np.ndarray, bank: GroundTruthBank,
             data: TaskData, n_boot: int = 2000) -> dict[str, Any]:
    """LDS (with its bootstrap interval) and recall@k of one method's scores on one bank."""
    per_target = metrics.lds_per_target(group_scores, bank.labels())
    low, high = metrics.bootstrap_ci(per_target, n_boot=n_boot)
    pool_src = np.array([ex.source for ex in data.pool])
    target_src = np.array([ex.source for ex in data.targets])
    out: dict[str, Any] = {
        "lds": {"mean": float(per_target.mean()), "ci95": [low, high],
                "n_targets": len(per_target), "n_subsets": int(group_scores.shape[1])},
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
                        config: dict[str, str] | None, workers: int) -> tuple[Any, dict, FitContext]:
    """The adapter with its config, and a fresh work directory for it."""
    method_cls = get_method(method)
    cfg = make_config(method_cls, config)
    config_dict = dataclasses.asdict(cfg)
    workdir = cache_dir() / "methods" / f"{spec.task}-{spec.preset}-{spec_hash(spec)}" / \
        f"{method}-{stable_hash(config_dict, 8)}-s{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    context = FitContext(spec=spec, data=data, workdir=workdir, seed=seed, workers=workers)
    return method_cls(cfg), config_dict, context


def train(method: str, task: str, preset: str = "tiny", seed: int = 0,
          config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
          workers: int = 1) -> str:
    """Train a learned method for a task (its ``train`` phase); returns where the result is."""
    _, spec, data = load_task(task, preset, spec_overrides)
    adapter, _, context = _method_and_context(method, spec, data, seed, config, workers)
    if not hasattr(adapter, "train"):
        raise ValueError(f"method {method!r} has nothing to train")
    adapter.train(context)
    return str(getattr(adapter, "checkpoint", context.workdir))


def run(method: str, task: str, preset: str = "tiny", seed: int = 0,
        config: dict[str, str] | None = None, spec_overrides: dict[str, str] | None = None,
        workers: int = 1, results_dir: Path | str = "results",
        bank_path: Path | None = None, group_score: str | None = None) -> tuple[dict[str, Any], Path]:
    """Build or reuse the ground truth, run ``method`` on it, write and return the record.

    ``group_score``: ``None`` uses the method's own ``score_groups`` if it has one, else the
    sum; ``"sum"`` or ``"attention"`` (AirRep's pooling) force that aggregation for any method,
    so that the pooling's effect can be told apart from the representation's.
    """
    if group_score not in (None, "sum", "attention"):
        raise ValueError(f"group_score must be 'sum' or 'attention', not {group_score!r}")
    t, spec, data = load_task(task, preset, spec_overrides)
    bank = ensure_bank(t, spec, data, bank_path, workers)
    adapter, config_dict, context = _method_and_context(method, spec, data, seed, config, workers)
    if group_score:
        config_dict["group_score"] = group_score  # part of what was run, and of the file name
    config_hash = stable_hash(config_dict, 8)
    workdir = context.workdir
    T, N = len(data.targets), len(data.pool)

    costs = {}
    if hasattr(adapter, "train"):
        _, train_cost = measure(lambda: adapter.train(context))
        costs["train"] = train_cost.to_dict()
    _, fit_cost = measure(lambda: adapter.fit(data.pool, context))
    raw, score_cost = measure(lambda: adapter.score(data.targets))
    scores = _check_scores("scores", raw, (T, N), method)
    costs.update({"fit": fit_cost.to_dict(), "score": score_cost.to_dict()})
    if group_score == "attention":
        group_scores = metrics.attention_pooled_group_scores(scores, bank.membership)
        aggregation = "attention pooling of per-example scores (softmax of |s| over the subset)"
    elif hasattr(adapter, "score_groups") and group_score is None:
        raw_groups, group_cost = measure(lambda: adapter.score_groups(data.targets, bank.membership))
        group_scores = _check_scores("group scores", raw_groups, (T, len(bank.membership)), method)
        costs["score_groups"] = group_cost.to_dict()
        aggregation = "method's own score_groups"
    else:
        group_scores = metrics.sum_group_scores(scores, bank.membership)
        aggregation = "sum of per-example scores over the subset"
    costs["score_per_target_s"] = score_cost.wall_s / T
    costs["storage_bytes"] = {"disk": dir_bytes(workdir), "memory": held_bytes(adapter)}

    gt = spec.groundtruth
    record = {
        "schema": 1,
        "task": spec.task, "preset": preset, "spec_hash": spec_hash(spec), "spec": spec.to_dict(),
        "bank": {"path": str(bank.path), "n_subsets": gt.n_subsets, "n_seeds": gt.n_seeds,
                 "fraction": gt.fraction, "source": gt.source,
                 "subset_sizes": sorted(set(bank.membership.sum(axis=1).tolist())),
                 "n_pool": N, "n_targets": T},
        "method": method, "config": config_dict, "config_hash": config_hash, "seed": seed,
        "protocol": {**PROTOCOL, "group_score": aggregation},
        "metrics": evaluate(scores, group_scores, bank, data),
        "cost": costs,
        "versions": versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record["per_target_lds"] = record["metrics"].pop("per_target_lds")
    out = Path(results_dir) / spec.task / preset / f"{method}-{config_hash}-s{seed}.json"
    atomic_write_json(out, record)
    return record, out


def summary(record: dict[str, Any]) -> str:
    """A few readable lines about one result record."""
    m, c = record["metrics"], record["cost"]
    lo, hi = m["lds"]["ci95"]
    lines = [
        f"{record['method']} on {record['task']}/{record['preset']} "
        f"(spec {record['spec_hash']}, {m['lds']['n_subsets']} subsets x "
        f"{m['lds']['n_targets']} targets)",
        f"  LDS        {m['lds']['mean']:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]",
    ]
    for k in RECALL_KS:
        r = m[f"recall@{k}"]
        lines.append(f"  recall@{k:<3} {r['value']:.3f}    (random ranking: {r['chance']:.3f})")
    for phase in ("train", "fit", "score"):
        if phase not in c:
            continue
        p = c[phase]
        lines.append(f"  {phase:<6} {p['wall_s']:8.2f} s wall {p['cpu_s']:8.2f} s CPU  "
                     f"peak RSS {p['peak_rss_bytes'] / 2**20:7.0f} MiB "
                     f"(+{p['peak_rss_delta_bytes'] / 2**20:.0f} MiB)")
    storage = c["storage_bytes"]
    lines.append(f"  per target {c['score_per_target_s'] * 1e3:.2f} ms; storage "
                 f"{storage['memory'] / 2**20:.2f} MiB in memory, {storage['disk'] / 2**20:.2f} MiB on disk")
    return "\n".join(lines)


def reproduce(preset: str = "tiny", tasks: list[str] | None = None, methods: list[str] | None = None,
              configs: dict[str, dict[str, str]] | None = None, results_dir: Path | str = "results",
              workers: int = 1) -> list[Path]:
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
            out = Path(results_dir) / spec.task / preset / \
                f"{method}-{stable_hash(dataclasses.asdict(cfg), 8)}-s0.json"
            if out.exists() and read_json(out).get("spec_hash") == spec_hash(spec):
                print(f"exists: {out}")
                continue
            try:
                record, out = run(method, task_name, preset, config=configs.get(method),
                                  workers=workers, results_dir=results_dir)
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            print(summary(record))
            written.append(out)
    return written
