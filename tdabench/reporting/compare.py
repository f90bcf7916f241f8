"""Paired comparison of two records measured on the same bank and protocol (``tdabench compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tdabench import metrics, record
from tdabench.errors import ConfigError, UserError
from tdabench.record import Entry


def compare(record_a: Path, record_b: Path, n_boot: int = 2000) -> dict[str, Any]:
    """Paired bootstrap of LDS(A) - LDS(B) for two records on the same bank and protocol:
    over targets (from the records) and over subsets (from their .npz group scores)."""
    a, b = record.load(record_a), record.load(record_b)
    for key in ("spec_hash", "protocol_hash"):
        if getattr(a, key) != getattr(b, key):
            raise ConfigError(f"{record_a} and {record_b} differ in {key} ({getattr(a, key)} vs "
                             f"{getattr(b, key)}): they were not measured on the same bank and protocol")
    out: dict[str, Any] = {
        "a": a.method, "b": b.method, "lds_a": a.metrics.lds.mean, "lds_b": b.metrics.lds.mean,
        "over_targets": metrics.paired_bootstrap_targets(a.per_target_lds, b.per_target_lds, n_boot),
    }
    npz_a, npz_b = record.arrays_path(record_a), record.arrays_path(record_b)
    if npz_a.exists() and npz_b.exists():
        with np.load(npz_a) as fa, np.load(npz_b) as fb:
            if not np.array_equal(fa["labels"], fb["labels"]):
                raise ConfigError(f"{npz_a} and {npz_b} hold different ground-truth labels")
            out["over_subsets"] = metrics.paired_bootstrap_subsets(
                fa["group_scores"], fb["group_scores"], fa["labels"], a.correlation, n_boot // 2)
    return out


def pick(selection: Any, name: str, task: str) -> tuple[Entry, str | None]:
    """The record a user means by ``name`` among a leaderboard ``selection`` of one task and
    preset: the row labelled ``name``, else the records of method ``name``; where several match
    (configs or seeds), the one with the highest LDS, with a note saying which was taken and how
    to name another. UserError listing the labels when none matches."""
    labels = selection.labels
    found = [r for r in selection.records if labels.get(r.path, r.method) == name]
    found = found or [r for r in selection.records if r.method == name]
    if not found:
        have = sorted({labels.get(r.path, r.method) for r in selection.records})
        specs = ", ".join(f"{k[0]}/{k[1]} spec {h.split('/')[0]}" for k, h in selection.spec_hashes.items())
        others = sorted({h.split('/')[0] for stale in selection.stale.values() for h, _, _ in stale})
        where = f" (shown: {specs}; other specs: {', '.join(others)}, pick one with --spec)" if others else ""
        raise UserError(f"no record of {name!r} for {task}{where}; choose one of: {', '.join(have)}")
    best = max(found, key=lambda r: r.record.metrics.lds.mean)
    if len(found) == 1:
        return best, None
    others = ", ".join(repr(labels.get(r.path, r.method)) for r in found if r is not best)
    return best, (f"{len(found)} records of {name!r} for {task}; taking the best, "
                  f"{labels.get(best.path, best.method)!r} (LDS {best.record.metrics.lds.mean:+.4f}); "
                  f"name another by its label: {others}")
