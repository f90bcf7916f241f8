"""Leaderboards from result records (``tdabench leaderboard``).

Every ``*.json`` file under the given directory trees is read through :mod:`tdabench.record`
(typed, older schemas upgraded); files that are not readable records are skipped and reported
with the reason. Records merge across machines by putting them in one tree. Everything a row
needs comes from its record (never from the installed methods): reference methods (a
datamodel) are shown after the ranked rows and never marked best, a phase loaded from a cache
shows "cached" and is never ranked, and each table says where its rows were made.

Records are grouped by (task, preset, spec hash, protocol hash): records made on different specs
of a task (a changed ground truth, model or data, e.g. by ``--set``) or under another correlation
are never ranked together. Each (task, preset) has a main spec and protocol (the installed
task's default spec where records of it exist, else the one with the most methods); every other
one is shown beside it as a block of its own, labelled by what it changed
(``chatterbot/tiny (groundtruth.n_subsets=15)``). Only records made under an older protocol
version are left out, and reported. ``--spec`` restricts the specs shown. Within a group,
several records of one (method, config hash, seed) are duplicates: the newest is kept and the
others are reported.

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
    "task", "preset", "variant", "optional", "spec_hash", "protocol_hash", "label", "method", "config_hash",
    "seed",
    "reference", "family", "lds", "lds_ci_low", "lds_ci_high", "lds_ci_subsets_low", "lds_ci_subsets_high",
    "paper_lds", "paper_lds_ci_low", "paper_lds_ci_high", "published",
    "noise_ceiling", "noise_ceiling_low", "noise_ceiling_high", "recall_at_1", "recall_at_1_chance",
    "recall_at_10", "recall_at_10_chance", "train_s", "train_cached", "train_original", "fit_s",
    "score_per_target_s",
    "peak_rss_bytes", "cuda_peak_bytes", "storage_bytes", "storage_memory_bytes",
    "storage_disk_bytes", "n_targets", "n_subsets", "host", "commit", "commit_dirty", "created",
    "path", "best",
]
CACHED = "Cached training, as measured when it ran (`cost.train.original`): "
PUBLISHED = "Published by the methods' authors for this benchmark, their words, not measured here: "
# Columns whose best value is marked within each (task, preset): higher or lower is better.
BEST = {
    "lds": "max", "paper_lds": "max", "recall_at_1": "max", "recall_at_10": "max", "train_s": "min",
    "fit_s": "min",
    "score_per_target_s": "min", "peak_rss_bytes": "min", "cuda_peak_bytes": "min",
    "storage_bytes": "min",
}



# ----------------------------------------------------------------------------- reading records

# ----------------------------------------------------------------------------- grouping

GROUP = ["task", "preset", "variant"]  # the columns that make one block of the table


def block_title(task: str, preset: str, variant: str = "") -> str:
    """A block's name in titles and column headers: ``task/preset``, then its variant."""
    return f"{task}/{preset}" + (f" ({variant})" if variant else "")


@dataclass
class Selection:
    """The records to show, grouped by (task, preset, variant), and what was left out and why.

    A *variant* is one spec and protocol of a (task, preset) other than its main one, named by
    what differs (``"groundtruth.n_subsets=15, groundtruth.n_seeds=1"``, ``"correlation=kendall"``);
    the main one's variant is ``""``."""

    groups: dict[tuple[str, str, str], list[Entry]]
    bank_keys: dict[tuple[str, str, str], str]  # group -> its ``SPEC/PROTOCOL`` hashes
    # (task, preset) -> the bank keys left out (made under an older protocol version), with
    # their record counts, protocol version and newest time
    stale: dict[tuple[str, str], list[tuple[str, int, int, dt.datetime]]] = field(default_factory=dict)
    duplicates: list[tuple[Entry, Entry]] = field(default_factory=list)  # (kept, dropped)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    labels: dict[Path, str] = field(default_factory=dict)  # record path -> row label
    hidden_configs: dict[Path, str] = field(default_factory=dict)  # non-default config, no label

    @property
    def records(self) -> list[Entry]:
        return [r for recs in self.groups.values() for r in recs]

    @property
    def mains(self) -> dict[tuple[str, str], list[Entry]]:
        """The records of each (task, preset)'s main spec and protocol."""
        return {(task, preset): recs for (task, preset, variant), recs in self.groups.items()
                if not variant}

    def warnings(self) -> list[str]:
        # other JSON files in a results tree (configs, benchmark figures) are not records: no word
        out = [f"skipped {path}: {reason}" for path, reason in self.skipped
               if not reason.startswith("not a tdabench result")]
        for (task, preset), others in self.stale.items():
            for key, n, version, newest in others:
                out.append(f"{task}/{preset}: {n} record(s) of spec {key.split('/')[0]} made under "
                           f"protocol version {version} (newest {newest.isoformat()}) not shown: the "
                           f"protocol has changed since; rerun them (tdabench reproduce)")
        for kept, dropped in self.duplicates:
            out.append(f"{kept.task}/{kept.preset} spec {kept.bank_key}: duplicate "
                       f"{kept.method} config {kept.config_hash} seed {kept.seed}: kept {kept.path} "
                       f"({kept.created.isoformat()}), ignored {dropped.path} "
                       f"({dropped.created.isoformat()})")
        return out


def _matches(record: Entry, tasks: Sequence[str]) -> bool:
    return any(t in (record.task, f"{record.task}/{record.preset}") for t in tasks)


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested spec as dotted keys, the way ``--set`` names them (``groundtruth.n_subsets``)."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _variant(entry: Entry, main: Entry) -> str:
    """What ``entry``'s spec and protocol set to another value than ``main``'s, as
    ``key=value`` in ``--set`` spelling, then the correlation where it differs."""
    mine, theirs = _flatten(entry.record.spec), _flatten(main.record.spec)
    diff = [f"{k}={_format_value(mine.get(k))}" for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)]
    if entry.record.correlation != main.record.correlation:
        diff.append(f"correlation={entry.record.correlation}")
    return ", ".join(diff)


def _default_spec_hash(task: str, preset: str) -> str | None:
    """The spec hash ``tdabench run`` uses for ``task`` at ``preset`` without ``--set``, where the
    task is installed and has that preset (used only to choose which spec is the main one)."""
    from tdabench import registry
    from tdabench.spec import spec_hash

    if task not in registry.task_names():
        return None
    registered = registry.get_task(task)
    return spec_hash(registered.spec(preset)) if preset in registered.presets else None


def optional_reason(task: str) -> str:
    """Why an installed task is optional (its data needs a file placed by hand), "" otherwise:
    its records are shown in tables of their own, out of the overview."""
    from tdabench import registry

    return registry.get_task(task).optional if task in registry.task_names() else ""


def _main_key(task: str, preset: str, banks: dict[str, list[Entry]]) -> str:
    """The main bank key of a (task, preset): the installed task's default spec under the
    default (Spearman) protocol where records of it exist, else the one with the most methods
    (ties: the newest record)."""
    default = _default_spec_hash(task, preset)

    def weight(key: str) -> tuple:
        recs = banks[key]
        spec = key.split("/")[0]
        return (spec == default, recs[0].record.correlation == "spearman" if spec == default else 0,
                len({r.method for r in recs}), max(r.order for r in recs))

    return max(banks, key=weight)


def select(records: Sequence[Entry], tasks: Sequence[str] | None = None,
           specs: Sequence[str] | None = None,
           skipped: Sequence[tuple[Path, str]] = ()) -> Selection:
    """Group ``records`` by (task, preset) and, within, by spec and protocol: the main one
    (:func:`_main_key`) and every other one beside it as a variant labelled by what differs.
    Records made under an older protocol version than the newest of their (task, preset) are
    left out and reported. ``tasks`` (``task`` or ``task/preset``) and ``specs`` (spec hashes or
    their prefixes) restrict what is shown."""
    if tasks:
        kept = [r for r in records if _matches(r, tasks)]
        if not kept:
            have = sorted({f"{r.task}/{r.preset}" for r in records})
            raise ConfigError(f"no records for task(s) {', '.join(tasks)}; records exist for: "
                             f"{', '.join(have) or 'none'}")
        records = kept
    for spec in specs or ():
        if not any(r.spec_hash.startswith(spec) for r in records):
            have = sorted({f"{r.task}/{r.preset} {r.spec_hash}" for r in records})
            raise ConfigError(f"no records with spec hash {spec!r} (for the tasks selected); "
                             f"specs: {', '.join(have)}")
    if specs:
        records = [r for r in records if any(r.spec_hash.startswith(s) for s in specs)]
    by_task: dict[tuple[str, str], dict[str, list[Entry]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[(r.task, r.preset)][r.bank_key].append(r)

    sel = Selection(groups={}, bank_keys={}, skipped=list(skipped))
    for (task, preset) in sorted(by_task):
        banks = by_task[(task, preset)]
        version = max(r.record.protocol_version for recs in banks.values() for r in recs)
        old = {k: rs for k, rs in banks.items() if rs[0].record.protocol_version < version}
        if old:
            sel.stale[(task, preset)] = sorted(
                ((k, len(rs), rs[0].record.protocol_version, max(r.created for r in rs))
                 for k, rs in old.items()), key=lambda item: item[3], reverse=True)
        current = {k: rs for k, rs in banks.items() if k not in old}
        main = _main_key(task, preset, current)
        newest_first = sorted(current, key=lambda k: max(r.order for r in current[k]), reverse=True)
        for key in [main] + [k for k in newest_first if k != main]:
            variant = "" if key == main else _variant(current[key][0], current[main][0])
            if key != main and (not variant or (task, preset, variant) in sel.groups):
                variant = ", ".join(filter(None, [variant, f"spec {key.split('/')[0][:8]}"]))
            sel.bank_keys[(task, preset, variant)] = key
            sel.groups[(task, preset, variant)] = _newest_per_run(current[key], sel.duplicates)
    sel.labels, sel.hidden_configs = _labels(sel.groups)
    return sel


def _newest_per_run(records: list[Entry], duplicates: list[tuple[Entry, Entry]]) -> list[Entry]:
    """The newest record of each (method, config hash, seed); the others go to ``duplicates``."""
    newest: dict[tuple[str, str, int], Entry] = {}
    for r in sorted(records, key=lambda r: r.order, reverse=True):
        ident = (r.method, r.config_hash, r.seed)
        if ident in newest:
            duplicates.append((newest[ident], r))
        else:
            newest[ident] = r
    return list(newest.values())


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


def _labels(groups: dict[tuple[str, str, str], list[Entry]]) -> tuple[dict[Path, str], dict[Path, str]]:
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


def row(entry: Entry, label: str | None = None, variant: str = "") -> dict[str, Any]:
    """The leaderboard row of one record (base units: seconds and bytes) in the block of
    ``variant`` (:class:`Selection`)."""
    r = entry.record
    lds, c = r.metrics.lds, r.cost
    train = c.phases.get("train")
    by_subsets = lds.ci95_subsets or [math.nan, math.nan]
    ceiling = r.bank.noise_ceiling
    ceiling_ci = ceiling.ceiling_ci95 if ceiling else [math.nan, math.nan]
    cuda = [p.cuda_peak_bytes for p in c.phases.values() if p.cuda_peak_bytes is not None]
    paper = r.metrics.lds_all_subsets
    return {
        "task": r.task, "preset": r.preset, "variant": variant, "optional": "", "spec_hash": r.spec_hash,
        "protocol_hash": r.protocol_hash,
        "label": label or r.method, "method": r.method, "config_hash": r.config_hash, "seed": r.seed,
        "reference": bool(r.method_info and r.method_info.reference),
        "family": r.method_info.family if r.method_info else None,
        "lds": lds.mean, "lds_ci_low": lds.ci95[0], "lds_ci_high": lds.ci95[1],
        "lds_ci_subsets_low": by_subsets[0], "lds_ci_subsets_high": by_subsets[1],
        "paper_lds": paper.mean if paper else math.nan,
        "paper_lds_ci_low": paper.ci95[0] if paper else math.nan,
        "paper_lds_ci_high": paper.ci95[1] if paper else math.nan,
        "published": (paper.published or "") if paper else "",
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
    its block (task, preset, variant); ties are all marked. Reference rows and cached phases are never ranked.
    A column is marked only where at least two rows have a value and they are not all equal."""
    flags = pd.DataFrame(False, index=df.index, columns=list(BEST))
    ranked = df[~df["reference"].astype(bool)]
    for _, group in ranked.groupby(GROUP, sort=False):
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
    """One row per shown record, sorted by task, preset (tiers cheap first), variant (the main
    spec first), ranked before reference rows, and LDS (best first); ``best`` lists
    (``;``-separated) the columns in which the row is best within its block."""
    optional = {task: optional_reason(task) for task, _, _ in selection.groups}
    rows = [{**row(r, selection.labels.get(r.path), variant), "optional": optional[task]}
            for (task, _, variant), recs in selection.groups.items() for r in recs]
    df = pd.DataFrame(rows, columns=COLUMNS[:-1])
    df = df.sort_values(["task", "preset", "variant", "reference", "lds", "label"],
                        ascending=[True, True, True, True, False, True], kind="stable",
                        key=lambda col: col.map(tiers.tier_rank) if col.name == "preset" else col)
    df = df.reset_index(drop=True)
    flags = best_flags(df)
    df["best"] = [";".join(c for c in BEST if flags.at[i, c]) for i in df.index]
    return df


def lds_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """LDS as methods (row labels) x blocks (:func:`block_title`), rows by mean LDS over the
    blocks each was run in, reference methods after the ranked ones; a task's tiers side by
    side, cheap first (:data:`tdabench.reporting.tiers.TIERS`), each followed by its variants."""
    wide = _with_column(df).pivot_table(index="label", columns="column", values="lds", aggfunc="first")
    order = {title: (task, tiers.tier_rank(preset), variant)
             for task, preset, variant, title in _with_column(df)[[*GROUP, "column"]].itertuples(index=False)}
    wide = wide[sorted(wide.columns, key=order.__getitem__)]
    reference = df.groupby("label")["reference"].any().reindex(wide.index)
    order = pd.DataFrame({"reference": reference, "mean": -wide.mean(axis=1)})
    return wide.loc[order.sort_values(["reference", "mean"], kind="stable").index]


def _with_column(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``column`` of each row's :func:`block_title`."""
    return df.assign(column=[block_title(*key) for key in df[GROUP].itertuples(index=False)])


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
    published: list[str] = field(default_factory=list)  # the methods' authors' own figures


def _blocks(df: pd.DataFrame, selection: Selection | None) -> list[_Shown]:
    flags = best_flags(df)
    speed = tiers.speed_claims(df)
    blocks = []
    for (task, preset, variant), g in df.groupby(GROUP, sort=False):
        # (header, column in df or None, formatter)
        cols: list[tuple[str, str | None, Any]] = [
            ("method", None, None),
            ("LDS", "lds", lambda x: f"{x:+.3f}"),
            ("95% CI", None, None),
        ]
        if g["lds_ci_subsets_low"].notna().any():
            cols.append(("CI over subsets", None, None))
        paper = bool(g["paper_lds"].notna().any())
        if paper:  # published ground truth: the paper's own figure beside the test part's
            cols += [("paper's LDS", "paper_lds", lambda x: "–" if math.isnan(x) else f"{x:+.3f}"),
                     ("its 95% CI", None, None)]
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

        rows, bold, footnotes, cached, published = [], [], [], [], []
        for i, r in g.iterrows():
            cells, marks = [], []
            for header, col, fmt in cols:
                if header == "method":
                    cells.append(shown_label(r["label"], r["reference"]))
                elif col == "train_s" and r["train_cached"]:
                    cells.append("cached")
                elif header == "95% CI":
                    cells.append(f"[{r['lds_ci_low']:+.3f}, {r['lds_ci_high']:+.3f}]")
                elif header == "its 95% CI":
                    cells.append("–" if math.isnan(r["paper_lds"]) else
                                 f"[{r['paper_lds_ci_low']:+.3f}, {r['paper_lds_ci_high']:+.3f}]")
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
            if r["published"]:
                published.append(f"{r['label']}: {r['published']}")
        first = g.iloc[0]
        note = (f"Optional task: {first['optional']}; its records are not in the overview. "
                if first["optional"] else "")
        note += (f"spec {first['spec_hash']}; {first['n_subsets']} test subsets x {first['n_targets']} "
                f"targets; random ranking: recall@1 {first['recall_at_1_chance']:.3f}, "
                f"recall@10 {first['recall_at_10_chance']:.3f}")
        if not math.isnan(first["noise_ceiling"]):
            note += (f"; noise ceiling (highest LDS the ground truth allows) {first['noise_ceiling']:.3f} "
                     f"[{first['noise_ceiling_low']:.3f}, {first['noise_ceiling_high']:.3f}]")
        else:
            note += "; no noise ceiling (it needs two training seeds per subset, groundtruth.n_seeds >= 2)"
        if paper:
            note += ("; LDS: the test part (80 subsets, each method's own group score), comparable with "
                     "the other tiers; paper's LDS: every published subset with the group score the "
                     "method's authors evaluate with, the paper's figure")
        note += "; " + _provenance(g)
        claim = speed.get((task, preset, variant))
        blocks.append(_Shown(block_title(task, preset, variant), note, [c[0] for c in cols], rows, bold,
                             footnotes, claim.describe() if claim else None, cached, published))
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
    titled = _with_column(df)
    ci = {(t, lab): (lo, hi) for t, lab, lo, hi in zip(
        titled["column"], df["label"], df["lds_ci_low"], df["lds_ci_high"])}
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
    ceilings = titled.groupby("column").first()
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
    headline = df[df["optional"] == ""] if (df["optional"] == "").any() else df
    left_out = sorted(set(df["task"]) - set(headline["task"]))
    aside = (f"Not in this overview: {', '.join(left_out)} (optional: its data needs a file placed by "
             "hand); its tables are below." if left_out else "")
    if fmt == "markdown":
        if len(blocks) > 1:
            out += ["## LDS by task (95% CI)", "", *_md_table(*_overview(headline)), ""]
            out += [aside, ""] if aside else []
        for b in tier_blocks:
            out += [f"## {b.title}", "", b.note, "", *_md_table(b.headers, b.rows, b.bold), ""]
        for b in blocks:
            out += [f"## {b.title}", "", b.note, "", *_md_table(b.headers, b.rows, b.bold), ""]
            if b.footnotes:
                out += ["Non-default configs: " + "; ".join(b.footnotes), ""]
            if b.cached:
                out += [CACHED + "; ".join(b.cached), ""]
            if b.published:
                out += [PUBLISHED + "; ".join(b.published), ""]
            if b.speed:
                out += [f"Speed: {b.speed}.", ""]
        out.append(textwrap.fill(costs, 100))
    else:
        out.append("% tdabench leaderboard; needs \\usepackage{booktabs}. " + costs)
        if len(blocks) > 1:
            out += ["", "% LDS by task (95% CI)", *_tex_table(*_overview(headline))]
            out += [f"% {aside}"] if aside else []
        for b in tier_blocks + blocks:
            out += ["", f"% {b.title}: {b.note}", *_tex_table(b.headers, b.rows, b.bold)]
            if b.footnotes:
                out.append("% non-default configs: " + "; ".join(b.footnotes))
            if b.cached:
                out.append("% " + CACHED + "; ".join(b.cached))
            if b.published:
                out.append("% " + PUBLISHED + "; ".join(b.published))
            if b.speed:
                out.append(f"% speed: {b.speed}")
    return "\n".join(out) + "\n"
