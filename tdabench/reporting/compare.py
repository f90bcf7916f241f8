"""Paired comparison of two records measured on the same bank and protocol (``tdabench compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tdabench import metrics, record
from tdabench.errors import ConfigError, UserError
from tdabench.record import Entry
from tdabench.reporting.leaderboard import block_title


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


def _pick(entries: list[Entry], labels: dict, name: str, where: str) -> tuple[Entry, str | None] | None:
    """The record of ``entries`` a user means by ``name``: the row labelled ``name``, else the
    records of method ``name``; where several match (configs or seeds), the one with the highest
    LDS, with a note saying which was taken and how to name another. None when none matches."""
    found = [r for r in entries if labels.get(r.path, r.method) == name]
    found = found or [r for r in entries if r.method == name]
    if not found:
        return None
    best = max(found, key=lambda r: r.record.metrics.lds.mean)
    if len(found) == 1:
        return best, None
    others = ", ".join(repr(labels.get(r.path, r.method)) for r in found if r is not best)
    return best, (f"{len(found)} records of {name!r} for {where}; taking the best, "
                  f"{labels.get(best.path, best.method)!r} (LDS {best.record.metrics.lds.mean:+.4f}); "
                  f"name another by its label: {others}")


def pick_pair(selection: Any, a: str, b: str) -> tuple[Entry, Entry, list[str]]:
    """The records a user means by ``a`` and ``b`` in a leaderboard ``selection`` of one task
    and preset (:func:`_pick` for each), from the first of its specs that has both: the main
    one, else a variant. Returns them and notes for the user (which config, and which spec when
    another also has both). UserError naming, per spec, the labels it has when none has both."""
    labels = selection.labels
    found, have = [], []
    for (task, preset, variant), entries in selection.groups.items():
        where = block_title(task, preset, variant)
        picks = [_pick(entries, labels, name, where) for name in (a, b)]
        spec = selection.bank_keys[(task, preset, variant)].split("/")[0]
        if None in picks:
            missing = " or ".join(repr(n) for n, p in zip((a, b), picks) if p is None)
            names = sorted({labels.get(r.path, r.method) for r in entries})
            have.append(f"no record of {missing} for {where}"
                        + (f" (spec {spec})" if len(selection.groups) > 1 else "")
                        + f"; choose one of: {', '.join(names)}")
        else:
            found.append((where, spec, picks, variant))
    if not found:
        raise UserError("; ".join(have) + ("" if len(have) == 1 else
                                           " (no spec has both; pick one with --spec)"))
    (where, _, ((entry_a, note_a), (entry_b, note_b)), variant), *others = found
    notes = [n for n in (note_a, note_b) if n]
    if others or variant:  # not the main spec, or not the only spec with both
        also = ", ".join(f"{w} (--spec {s})" for w, s, _, _ in others)
        notes.append(f"compared on {where}" + (f"; both also have records on {also}" if also else ""))
    return entry_a, entry_b, notes
