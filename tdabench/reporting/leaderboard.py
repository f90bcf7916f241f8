"""Leaderboards from result records (``tdabench leaderboard``).

Every ``*.json`` file under the given directory trees is read through :mod:`tdabench.record`
(typed, older schemas upgraded); files that are not readable records are skipped and reported
with the reason. Records merge across machines by putting them in one tree. Everything a row
needs comes from its record (never from the installed methods): reference methods (a
datamodel) are shown after the ranked rows and never marked best, a phase loaded from a cache
shows "cached" and is never ranked, and each table says where its rows were made.

Records are grouped by (task, preset, spec hash, protocol hash): records made on different specs of a task (a
changed ground truth, model or data) are never compared. For each (task, preset) the spec hash
with the most recent record is shown and the others are reported as stale, unless ``--spec``
picks one. Within a group, several records of one (method, config hash, seed) are duplicates:
the newest is kept and the others are reported.

:func:`table` gives one row per shown record (numbers in base units: seconds, bytes);
:func:`render` formats it as markdown, csv or LaTeX with the best value per column marked.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdabench.errors import ConfigError
from tdabench.record import Entry, read_records
from tdabench.reporting import tiers

PHASES = ("train", "fit", "score", "score_groups")
FORMATS = ("markdown", "csv", "latex")
MIB = 2**20

# The columns of :func:`table`, in order (also the header of the csv output).
COLUMNS = [
    "task", "preset", "spec_hash", "protocol_hash", "label", "method", "config_hash", "seed",
    "reference", "family", "lds", "lds_ci_low", "lds_ci_high", "lds_ci_subsets_low", "lds_ci_subsets_high",
    "noise_ceiling", "noise_ceiling_low", "noise_ceiling_high", "recall_at_1", "recall_at_1_chance",
    "recall_at_10", "recall_at_10_chance", "train_s", "train_cached", "train_original", "fit_s",
    "score_per_target_s",
    "peak_rss_bytes", "cuda_peak_bytes", "storage_bytes", "storage_memory_bytes",
    "storage_disk_bytes", "n_targets", "n_subsets", "host", "commit", "commit_dirty", "created",
    "path", "best",
]
CACHED = "Cached training, as measured when it ran (`cost.train.original`): "
# Columns whose best value is marked within each (task, preset): higher or lower is better.
BEST = {
    "lds": "max", "recall_at_1": "max", "recall_at_10": "max", "train_s": "min", "fit_s": "min",
    "score_per_target_s": "min", "peak_rss_bytes": "min", "cuda_peak_bytes": "min",
    "storage_bytes": "min",
}



# ----------------------------------------------------------------------------- reading records

# ----------------------------------------------------------------------------- grouping

@dataclass
class Selection:
    """The records to show, grouped by (task, preset), and what was left out and why."""

    groups: dict[tuple[str, str], list[Entry]]
    spec_hashes: dict[tuple[str, str], str]
    # (task, preset) -> the other spec hashes seen, with their record counts and newest time
    stale: dict[tuple[str, str], list[tuple[str, int, dt.datetime]]] = field(default_factory=dict)
    duplicates: list[tuple[Entry, Entry]] = field(default_factory=list)  # (kept, dropped)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    labels: dict[Path, str] = field(default_factory=dict)  # record path -> row label
    hidden_configs: dict[Path, str] = field(default_factory=dict)  # non-default config, no label

    @property
    def records(self) -> list[Entry]:
        return [r for recs in self.groups.values() for r in recs]

    def warnings(self) -> list[str]:
        # other JSON files in a results tree (configs, benchmark figures) are not records: no word
        out = [f"skipped {path}: {reason}" for path, reason in self.skipped
               if not reason.startswith("not a tdabench result")]
        for (task, preset), others in self.stale.items():
            shown = self.spec_hashes[(task, preset)]
            for spec, n, newest in others:
                out.append(f"{task}/{preset}: stale spec {spec} ({n} record(s), newest "
                           f"{newest.isoformat()}) not shown; showing spec {shown} "
                           f"(pick another with --spec {spec})")
        for kept, dropped in self.duplicates:
            out.append(f"{kept.task}/{kept.preset} spec {kept.bank_key}: duplicate "
                       f"{kept.method} config {kept.config_hash} seed {kept.seed}: kept {kept.path} "
                       f"({kept.created.isoformat()}), ignored {dropped.path} "
                       f"({dropped.created.isoformat()})")
        return out


def _matches(record: Entry, tasks: Sequence[str]) -> bool:
    return any(t in (record.task, f"{record.task}/{record.preset}") for t in tasks)


def select(records: Sequence[Entry], tasks: Sequence[str] | None = None,
           specs: Sequence[str] | None = None,
           skipped: Sequence[tuple[Path, str]] = ()) -> Selection:
    """Group ``records`` by (task, preset, spec hash) and pick one spec hash per (task, preset):
    one of ``specs`` (hashes or their prefixes) where given, else the hash of the newest record.
    ``tasks`` (``task`` or ``task/preset``) restricts the tasks shown."""
    if tasks:
        kept = [r for r in records if _matches(r, tasks)]
        if not kept:
            have = sorted({f"{r.task}/{r.preset}" for r in records})
            raise ConfigError(f"no records for task(s) {', '.join(tasks)}; records exist for: "
                             f"{', '.join(have) or 'none'}")
        records = kept
    by_spec: dict[tuple[str, str], dict[str, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_spec[(r.task, r.preset)][r.bank_key].append(r)
    for spec in specs or ():
        if not any(h.startswith(spec) for hashes in by_spec.values() for h in hashes):
            raise ConfigError(f"no records with spec hash {spec!r} (for the tasks selected)")

    sel = Selection(groups={}, spec_hashes={}, skipped=list(skipped))
    for key in sorted(by_spec):
        hashes = by_spec[key]
        chosen = [h for h in hashes if any(h.startswith(s) for s in specs or ())]
        if len(chosen) > 1:
            raise ConfigError(f"--spec matches several spec hashes of {key[0]}/{key[1]}: "
                             f"{', '.join(sorted(chosen))}")
        shown = chosen[0] if chosen else max(hashes, key=lambda h: max(r.order for r in hashes[h]))
        sel.spec_hashes[key] = shown
        others = sorted(((h, len(rs), max(r.created for r in rs)) for h, rs in hashes.items()
                         if h != shown), key=lambda item: item[2], reverse=True)
        if others:
            sel.stale[key] = others
        newest: dict[tuple[str, str, int], Entry] = {}
        for r in sorted(hashes[shown], key=lambda r: r.order, reverse=True):
            ident = (r.method, r.config_hash, r.seed)
            if ident in newest:
                sel.duplicates.append((newest[ident], r))
            else:
                newest[ident] = r
        sel.groups[key] = list(newest.values())
    sel.labels, sel.hidden_configs = _labels(sel.groups)
    return sel


def load(roots: Iterable[Path | str], tasks: Sequence[str] | None = None,
         specs: Sequence[str] | None = None) -> Selection:
    """:func:`read_records` then :func:`select`; refuses when no record is found at all."""
    roots = list(roots)
    records, skipped = read_records(roots)
    missing = [str(root) for root in roots if not Path(root).exists()]
    if missing and len(missing) == len(roots):
        raise ConfigError(f"no such directory: {', '.join(missing)}; name a directory of result "
                          "records with --results-dir")
    if not records:
        raise ConfigError(f"no tdabench result records under {', '.join(map(str, roots))}"
                         + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    return select(records, tasks, specs, skipped)


# ----------------------------------------------------------------------------- row labels

def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _diff(known: tuple[list[str], dict[str, Any]] | None,
          config: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The fields of ``config`` that differ from the defaults in ``known`` (field names in
    order, defaults: stored in the record), in field order; fields the defaults lack count as
    differing. None where the record stores no defaults (schema 2)."""
    if known is None:
        return None
    names, defaults = known
    config = _plain(config)
    diff = [(k, config[k]) for k in names if k in config and config[k] != defaults[k]]
    return diff + [(k, config[k]) for k in sorted(config) if k not in defaults]


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _labels(groups: dict[tuple[str, str], list[Entry]]) -> tuple[dict[Path, str], dict[Path, str]]:
    """Row label of every record: the method name, with its non-default config fields when the
    method appears with several configs among the records shown (the same config gets the same
    label in every group), and the seed when one config was run with several seeds in a group.
    Also the non-default configs that a plain label hides, for a footnote."""
    records = sorted((r for recs in groups.values() for r in recs), key=lambda r: r.order)
    configs: dict[str, dict[str, dict]] = defaultdict(dict)  # method -> config hash -> config
    known: dict[str, tuple[list[str], dict[str, Any]] | None] = {}  # from the newest record
    for r in records:
        configs[r.method][r.config_hash] = r.record.config
        info = r.record.method_info
        known[r.method] = (info.config_fields, info.config_defaults) if info else None
    base: dict[tuple[str, str], str] = {}
    hidden: dict[tuple[str, str], str] = {}
    for method, by_hash in configs.items():
        names = {}
        for h, config in by_hash.items():
            diff = _diff(known[method], config)
            text = ", ".join(f"{k}={_format_value(v)}" for k, v in diff) if diff else ""
            if len(by_hash) == 1:
                names[h] = method
                if diff:
                    hidden[(method, h)] = text
            elif diff is None:
                names[h] = f"{method} (config {h})"
            else:
                names[h] = f"{method} ({text})" if text else method
        counts = defaultdict(int)
        for name in names.values():
            counts[name] += 1
        for h, name in names.items():  # two configs that look alike (an older Config version)
            base[(method, h)] = f"{name} [{h}]" if counts[name] > 1 else name

    labels, footnotes = {}, {}
    for recs in groups.values():
        seeds = defaultdict(set)
        for r in recs:
            seeds[(r.method, r.config_hash)].add(r.seed)
        for r in recs:
            label = base[(r.method, r.config_hash)]
            if len(seeds[(r.method, r.config_hash)]) > 1:
                label = f"{label[:-1]}, seed={r.seed})" if label.endswith(")") else \
                    f"{label} (seed={r.seed})"
            labels[r.path] = label
            if (r.method, r.config_hash) in hidden:
                footnotes[r.path] = hidden[(r.method, r.config_hash)]
    return labels, footnotes


# ----------------------------------------------------------------------------- the table

def original_seconds(original: dict[str, Any] | None) -> str:
    """A cached phase's own account of what it cost when it ran (``Phase.original``), as its
    fields in seconds (names ending in ``_s``), e.g. ``"bank_build_s 335 s, train_s 772 s"``;
    "" when it keeps none."""
    return ", ".join(f"{k} {v:,.0f} s" for k, v in (original or {}).items()
                     if k.endswith("_s") and isinstance(v, (int, float)))


def row(entry: Entry, label: str | None = None) -> dict[str, Any]:
    """The leaderboard row of one record (base units: seconds and bytes)."""
    r = entry.record
    lds, c = r.metrics.lds, r.cost
    train = c.phases.get("train")
    by_subsets = lds.ci95_subsets or [math.nan, math.nan]
    ceiling = r.bank.noise_ceiling
    ceiling_ci = ceiling.ceiling_ci95 if ceiling else [math.nan, math.nan]
    cuda = [p.cuda_peak_bytes for p in c.phases.values() if p.cuda_peak_bytes is not None]
    return {
        "task": r.task, "preset": r.preset, "spec_hash": r.spec_hash, "protocol_hash": r.protocol_hash,
        "label": label or r.method, "method": r.method, "config_hash": r.config_hash, "seed": r.seed,
        "reference": bool(r.method_info and r.method_info.reference),
        "family": r.method_info.family if r.method_info else None,
        "lds": lds.mean, "lds_ci_low": lds.ci95[0], "lds_ci_high": lds.ci95[1],
        "lds_ci_subsets_low": by_subsets[0], "lds_ci_subsets_high": by_subsets[1],
        "noise_ceiling": ceiling.ceiling if ceiling else math.nan,
        "noise_ceiling_low": ceiling_ci[0], "noise_ceiling_high": ceiling_ci[1],
        "recall_at_1": r.metrics.recall[1].value, "recall_at_1_chance": r.metrics.recall[1].chance,
        "recall_at_10": r.metrics.recall[10].value, "recall_at_10_chance": r.metrics.recall[10].chance,
        "train_s": train.wall_s if train else math.nan, "train_cached": bool(train and train.cached),
        "train_original": original_seconds(train.original) if train and train.cached else "",
        "fit_s": c.phases["fit"].wall_s, "score_per_target_s": c.score_per_target_s,
        "peak_rss_bytes": float(max(p.peak_rss_bytes for p in c.phases.values())),
        "cuda_peak_bytes": float(max(cuda)) if cuda else math.nan,
        "storage_bytes": float(c.storage.memory + c.storage.disk),
        "storage_memory_bytes": float(c.storage.memory), "storage_disk_bytes": float(c.storage.disk),
        "n_targets": lds.n_targets, "n_subsets": lds.n_subsets,
        "host": r.host.hostname or r.host.platform, "commit": r.code.commit,
        "commit_dirty": r.code.dirty, "created": entry.created.isoformat(), "path": str(entry.path),
    }


def best_flags(df: pd.DataFrame) -> pd.DataFrame:
    """True where a row holds the best value of a :data:`BEST` column among the ranked rows of
    its (task, preset); ties are all marked. Reference rows and cached phases are never ranked.
    A column is marked only where at least two rows have a value and they are not all equal."""
    flags = pd.DataFrame(False, index=df.index, columns=list(BEST))
    ranked = df[~df["reference"].astype(bool)]
    for _, group in ranked.groupby(["task", "preset"], sort=False):
        for col, how in BEST.items():
            values = group[col].astype(float)
            if col == "train_s":
                values = values[~group["train_cached"].astype(bool)]
            values = values.dropna()
            if len(values) < 2 or np.isclose(values.min(), values.max(), rtol=1e-12, atol=0):
                continue
            best = values.max() if how == "max" else values.min()
            hit = values.index[np.isclose(values.to_numpy(), best, rtol=1e-12, atol=0)]
            flags.loc[hit, col] = True
    return flags


def table(selection: Selection) -> pd.DataFrame:
    """One row per shown record, sorted by task, preset (tiers cheap first), ranked before
    reference rows, and LDS (best first); ``best`` lists (``;``-separated) the columns in which
    the row is best within its task."""
    rows = [row(r, selection.labels.get(r.path)) for r in selection.records]
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df = df.sort_values(["task", "preset", "reference", "lds", "label"],
                        ascending=[True, True, True, False, True], kind="stable",
                        key=lambda col: col.map(tiers.tier_rank) if col.name == "preset" else col)
    df = df.reset_index(drop=True)
    flags = best_flags(df)
    df["best"] = [";".join(c for c in BEST if flags.at[i, c]) for i in df.index]
    return df


def lds_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """LDS as methods (row labels) x tasks (``task/preset``), rows by mean LDS over the tasks
    each was run on, reference methods after the ranked ones; a task's tiers side by side,
    cheap first (:data:`tdabench.reporting.tiers.TIERS`)."""
    wide = df.assign(column=df["task"] + "/" + df["preset"]).pivot_table(
        index="label", columns="column", values="lds", aggfunc="first")
    wide = wide[sorted(wide.columns, key=tiers.column_order)]
    reference = df.groupby("label")["reference"].any().reindex(wide.index)
    order = pd.DataFrame({"reference": reference, "mean": -wide.mean(axis=1)})
    return wide.loc[order.sort_values(["reference", "mean"], kind="stable").index]


def shown_label(label: str, reference: bool) -> str:
    """A row label as tables show it: reference rows say so."""
    return f"{label} (reference)" if reference else label


def _provenance(g: pd.DataFrame) -> str:
    """Where a block's rows were made: host, commit and dates, per (host, commit) group."""
    parts = []
    groups = list(g.groupby(["host", g["commit"].fillna("unknown"), g["commit_dirty"].fillna(False)],
                            sort=False))
    for (host, commit, dirty), rows in groups:
        dates = sorted({c[:10] for c in rows["created"]})
        when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        text = (f"{host}, commit {commit[:10]}{' + uncommitted changes' if dirty else ''}, {when}")
        if len(groups) > 1:
            text += ": " + ", ".join(rows["label"])
        parts.append(text)
    return "made on " + "; ".join(parts)


# ----------------------------------------------------------------------------- rendering

def _fmt(x: float, scale: float = 1.0) -> str:
    """A cost in a readable number of digits; a dash where there is none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    x = x / scale
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 0.01:
        return f"{x:#.3g}"
    return f"{x:.2g}"


@dataclass
class _Shown:
    """One (task, preset) block as text cells, before markup."""

    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]
    bold: list[list[bool]]
    footnotes: list[str]
    speed: str | None = None  # the speed claim's line (tdabench.reporting.tiers.speed_claims)
    cached: list[str] = field(default_factory=list)  # cached trainings' original cost


def _blocks(df: pd.DataFrame, selection: Selection | None) -> list[_Shown]:
    flags = best_flags(df)
    speed = tiers.speed_claims(df)
    blocks = []
    for (task, preset), g in df.groupby(["task", "preset"], sort=False):
        # (header, column in df or None, formatter)
        cols: list[tuple[str, str | None, Any]] = [
            ("method", None, None),
            ("LDS", "lds", lambda x: f"{x:+.3f}"),
            ("95% CI", None, None),
        ]
        if g["lds_ci_subsets_low"].notna().any():
            cols.append(("CI over subsets", None, None))
        cols += [
            ("recall@1", "recall_at_1", lambda x: f"{x:.2f}"),
            ("recall@10", "recall_at_10", lambda x: f"{x:.2f}"),
        ]
        if g["train_s"].notna().any():
            cols.append(("train (s)", "train_s", _fmt))
        cols += [("fit (s)", "fit_s", _fmt),
                 ("per target (ms)", "score_per_target_s", lambda x: _fmt(x, 1e-3)),
                 ("peak RSS (MiB)", "peak_rss_bytes", lambda x: _fmt(x, MIB))]
        if g["cuda_peak_bytes"].notna().any():
            cols.append(("peak GPU (MiB)", "cuda_peak_bytes", lambda x: _fmt(x, MIB)))
        cols.append(("storage (MiB)", "storage_bytes", lambda x: _fmt(x, MIB)))

        rows, bold, footnotes, cached = [], [], [], []
        for i, r in g.iterrows():
            cells, marks = [], []
            for header, col, fmt in cols:
                if header == "method":
                    cells.append(shown_label(r["label"], r["reference"]))
                elif col == "train_s" and r["train_cached"]:
                    cells.append("cached")
                elif header == "95% CI":
                    cells.append(f"[{r['lds_ci_low']:+.3f}, {r['lds_ci_high']:+.3f}]")
                elif header == "CI over subsets":
                    cells.append("–" if math.isnan(r["lds_ci_subsets_low"]) else
                                 f"[{r['lds_ci_subsets_low']:+.3f}, {r['lds_ci_subsets_high']:+.3f}]")
                else:
                    cells.append(fmt(r[col]))
                marks.append(bool(col in BEST and flags.at[i, col]))
            rows.append(cells)
            bold.append(marks)
            hidden = selection.hidden_configs.get(Path(r["path"])) if selection else None
            if hidden:
                footnotes.append(f"{r['label']}: {hidden}")
            if r["train_cached"] and r["train_original"]:
                cached.append(f"{r['label']}: {r['train_original']}")
        first = g.iloc[0]
        note = (f"spec {first['spec_hash']}; {first['n_subsets']} test subsets x {first['n_targets']} "
                f"targets; random ranking: recall@1 {first['recall_at_1_chance']:.3f}, "
                f"recall@10 {first['recall_at_10_chance']:.3f}")
        if not math.isnan(first["noise_ceiling"]):
            note += (f"; noise ceiling (highest LDS the ground truth allows) {first['noise_ceiling']:.3f} "
                     f"[{first['noise_ceiling_low']:.3f}, {first['noise_ceiling_high']:.3f}]")
        note += "; " + _provenance(g)
        claim = speed.get((task, preset))
        blocks.append(_Shown(f"{task}/{preset}", note, [c[0] for c in cols], rows, bold, footnotes,
                             claim.describe() if claim else None, cached))
    return blocks


def _agreement_table(agreements: list[tiers.RankAgreement]) -> _Shown:
    """Kendall's tau between the tiers' rankings, one row per task."""
    rows = [[a.task, str(len(a.labels)), f"{a.tau:+.2f}", f"[{a.ci95[0]:+.2f}, {a.ci95[1]:+.2f}]",
             "shared, paired" if a.paired else "independent"] for a in agreements]
    cheap, real = agreements[0].tiers
    note = (f"Does the cheap tier predict the realistic one? Kendall's tau (tau-b) between the "
            f"{cheap} and {real} rankings of the methods ranked in both, with a 95% bootstrap "
            f"interval over targets ({agreements[0].n_boot} replicates; a replicate resamples "
            "each tier's targets for all its methods at once and reranks).")
    headers = ["task", "methods", "Kendall's tau", "95% CI", "targets"]
    return _Shown(f"{cheap} vs {real}: rank agreement", note, headers, rows,
                  [[False] * len(headers) for _ in rows], [])


def _side_by_side(agreement: tiers.RankAgreement) -> _Shown:
    """One task's methods with their LDS and rank in both tiers."""
    df = tiers.side_by_side(agreement)
    headers = ["method"]
    for tier in agreement.tiers:
        headers += [f"LDS {tier}", f"rank {tier}"]
    rows = [[r["label"]] + [cell for tier in agreement.tiers
                            for cell in (f"{r[f'lds_{tier}']:+.3f}", str(r[f"rank_{tier}"]))]
            for _, r in df.iterrows()]
    return _Shown(f"{agreement.task}: {' vs '.join(agreement.tiers)}", tiers.describe(agreement),
                  headers, rows, [[False] * len(headers) for _ in rows], [])


def _tier_blocks(selection: Selection | None) -> list[_Shown]:
    """The rank-agreement table and each task's side-by-side table (none with one tier)."""
    agreements = tiers.rank_agreements(selection) if selection else []
    if not agreements:
        return []
    return [_agreement_table(agreements), *(_side_by_side(a) for a in agreements)]


def _overview(df: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    wide = lds_matrix(df)
    ci = {(t, lab): (lo, hi) for t, lab, lo, hi in zip(
        df["task"] + "/" + df["preset"], df["label"], df["lds_ci_low"], df["lds_ci_high"])}
    reference = df.groupby("label")["reference"].any()
    ranked = wide[~reference.reindex(wide.index).to_numpy()]
    best = {c: ranked[c].max() for c in wide.columns}
    rows, bold = [], []
    for label, values in wide.iterrows():
        cells, marks = [shown_label(label, reference[label])], [False]
        for column, value in values.items():
            if math.isnan(value):
                cells.append("–")
                marks.append(False)
            else:
                lo, hi = ci[(column, label)]
                cells.append(f"{value:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                marks.append(bool(not reference[label] and ranked[column].notna().sum() > 1
                                  and value == best[column]))
        rows.append(cells)
        bold.append(marks)
    ceilings = df.assign(column=df["task"] + "/" + df["preset"]).groupby("column").first()
    if ceilings["noise_ceiling"].notna().any():  # the reference every row is measured against
        cells = ["(noise ceiling)"]
        for column in wide.columns:
            value, lo, hi = ceilings.loc[column, ["noise_ceiling", "noise_ceiling_low", "noise_ceiling_high"]]
            cells.append("–" if math.isnan(value) else f"{value:.3f} [{lo:.3f}, {hi:.3f}]")
        rows.append(cells)
        bold.append([False] * len(cells))
    return ["method", *wide.columns], rows, bold


def _md_table(headers: list[str], rows: list[list[str]], bold: list[list[bool]]) -> list[str]:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    for cells, marks in zip(rows, bold):
        lines.append("| " + " | ".join(f"**{esc(c)}**" if b else esc(c)
                                       for c, b in zip(cells, marks)) + " |")
    return lines


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "–": "--"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_table(headers: list[str], rows: list[list[str]], bold: list[list[bool]]) -> list[str]:
    lines = [r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule"]
    for cells, marks in zip(rows, bold):
        lines.append(" & ".join(rf"\textbf{{{_tex(c)}}}" if b else _tex(c)
                                for c, b in zip(cells, marks)) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def render(df: pd.DataFrame, fmt: str = "markdown", selection: Selection | None = None) -> str:
    """The leaderboard ``df`` (from :func:`table`) as markdown (one table per task, after an
    LDS overview when there are several), csv (every column, full precision) or LaTeX
    (booktabs tables). Best values are bold; the csv's ``best`` column names them."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    blocks = _blocks(df, selection)
    tier_blocks = _tier_blocks(selection)
    out: list[str] = []
    costs = ("Costs are wall-clock times and memory on the machine that wrote each record; "
             "storage is what the method holds in memory plus writes to disk. Best per column "
             "in bold. Reference rows (a datamodel: its cost is retraining) are set apart and never "
             "ranked; a cached phase loaded what an earlier run made, so its time is not shown "
             "or ranked.")
    if fmt == "markdown":
        if len(blocks) > 1:
            out += ["## LDS by task (95% CI)", "", *_md_table(*_overview(df)), ""]
        for b in tier_blocks:
            out += [f"## {b.title}", "", b.note, "", *_md_table(b.headers, b.rows, b.bold), ""]
        for b in blocks:
            out += [f"## {b.title}", "", b.note, "", *_md_table(b.headers, b.rows, b.bold), ""]
            if b.footnotes:
                out += ["Non-default configs: " + "; ".join(b.footnotes), ""]
            if b.cached:
                out += [CACHED + "; ".join(b.cached), ""]
            if b.speed:
                out += [f"Speed: {b.speed}.", ""]
        out.append(textwrap.fill(costs, 100))
    else:
        out.append("% tdabench leaderboard; needs \\usepackage{booktabs}. " + costs)
        if len(blocks) > 1:
            out += ["", "% LDS by task (95% CI)", *_tex_table(*_overview(df))]
        for b in tier_blocks + blocks:
            out += ["", f"% {b.title}: {b.note}", *_tex_table(b.headers, b.rows, b.bold)]
            if b.footnotes:
                out.append("% non-default configs: " + "; ".join(b.footnotes))
            if b.cached:
                out.append("% " + CACHED + "; ".join(b.cached))
            if b.speed:
                out.append(f"% speed: {b.speed}")
    return "\n".join(out) + "\n"
