"""Figures from result records (``tdabench plot``), one panel per task, sized for a paper column.

* ``lds``: LDS per method with its 95% bootstrap interval;
* ``pareto``: LDS against inference time per target (log scale) with the Pareto front (the
  methods no other method beats on both LDS and time) as a step line, every point named by its
  short label (the method, and its config hash where it has several configs) and a table of
  those configs under the legend;
* ``per_target_lds``: the distribution over targets of the per-target LDS, per method;
* ``rank_agreement`` (only where some task has records in both tiers, ``tiny`` and ``small``):
  Kendall's tau between the tiers' method rankings per task with its bootstrap interval, then
  one panel per task of each method's LDS in the cheap tier against the realistic one, each
  point named by :func:`place_labels` clear of the other points and names.

Each method keeps one colour in every figure (sorted method names onto a qualitative
palette); configs of one method share its colour and are told apart by their row labels, and
in the Pareto figure by their markers. The
figures are drawn on matplotlib's Agg canvas (no pyplot, no global backend switch) and written
as PNG (200 dpi) and PDF.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tdabench.method import MissingDependency
from tdabench.reporting import leaderboard, tiers

try:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter
    from matplotlib.transforms import Bbox
except ImportError as err:  # pragma: no cover - depends on the installation
    raise MissingDependency("tdabench plot needs matplotlib, which is not installed: "
                            "pip install 'tdabench[plots]' -c constraints.txt") from err

WIDTH = 3.3  # inches: one column of a two-column paper
DPI = 200
FORMATS = ("png", "pdf")
STYLE = {
    "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "lines.linewidth": 0.9, "pdf.fonttype": 42, "savefig.dpi": DPI,
}
LABEL_WIDTH = 24  # characters per line of a row label


def method_colors(methods: Iterable[str]) -> dict[str, Any]:
    """One colour per method name: sorted names onto tab10 (tab20 beyond ten methods)."""
    names = sorted(set(methods))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point dominates (another point dominates when its cost
    is no higher and its value no lower, one of them strictly), by increasing cost. Points with
    a NaN are never on the front; identical points are both on it."""
    cost, value = np.asarray(cost, dtype=float), np.asarray(value, dtype=float)
    ok = ~(np.isnan(cost) | np.isnan(value))
    front = []
    for i in np.flatnonzero(ok):
        better_or_equal = ok & (cost <= cost[i]) & (value >= value[i])
        strictly = (cost < cost[i]) | (value > value[i])
        if not np.any(better_or_equal & strictly):
            front.append(i)
    return np.array(sorted(front, key=lambda i: (cost[i], -value[i])), dtype=int)


def wrap_label(label: str, width: int = LABEL_WIDTH) -> str:
    """A row label on lines of at most ``width`` characters: the method name, then its config."""
    if len(label) <= width:
        return label
    head, sep, rest = label.partition(" (")
    if not sep:
        return "\n".join(textwrap.wrap(label, width))
    return "\n".join([head, *textwrap.wrap("(" + rest, width)])


def _groups(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(leaderboard.block_title(*key), g) for key, g in df.groupby(leaderboard.GROUP, sort=False)]


LINE_IN = 0.115  # inches per line of a row label (7 pt text and its leading)
ROW_GAP_IN = 0.07  # inches between rows


def _row_positions(labels: Sequence[str]) -> tuple[np.ndarray, float]:
    """y centres (in inches from the bottom) of rows whose labels have these many lines, and
    the total height: a two-line label gets a taller row, so labels never overlap."""
    heights = np.array([LINE_IN * (label.count("\n") + 1) + ROW_GAP_IN for label in labels])
    return np.cumsum(heights) - heights / 2, float(heights.sum())


def _rows_figure(df: pd.DataFrame) -> tuple[Figure, list[Any], list[tuple[str, pd.DataFrame, np.ndarray]]]:
    """A column-wide figure with one panel per task, each tall enough for its (wrapped) rows;
    rows sorted by LDS, best at the top. Returns the panels and each one's rows and y."""
    groups, heights = [], []
    for title, g in _groups(df):
        g = g.sort_values("lds", kind="stable")
        y, height = _row_positions([wrap_label(lab) for lab in g["label"]])
        groups.append((title, g, y))
        heights.append(height)
    fig = Figure(figsize=(WIDTH, sum(heights) + 0.42 * len(groups) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (title, g, y), height in zip(axes, groups, heights):
        ax.set_yticks(y, [wrap_label(lab) for lab in g["label"]])
        ax.set_ylim(0, height)
        ax.tick_params(axis="y", length=0)
        ax.set_title(title, loc="left", fontweight="bold")
        ax.axvline(0, color="0.55", lw=0.6, ls=":", zorder=0)
        ax.grid(axis="x", lw=0.3, alpha=0.5)
    return fig, list(axes), groups


def plot_lds(df: pd.DataFrame, colors: dict[str, Any]) -> Figure:
    """LDS per method with its 95% interval, one panel per task."""
    fig, axes, groups = _rows_figure(df)
    for ax, (_, g, ys) in zip(axes, groups):
        for y, (_, r) in zip(ys, g.iterrows()):
            ax.errorbar(r["lds"], y, xerr=[[r["lds"] - r["lds_ci_low"]], [r["lds_ci_high"] - r["lds"]]],
                        fmt="o", ms=3.5, color=colors[r["method"]], capsize=1.8, elinewidth=0.9)
    axes[-1].set_xlabel("LDS (mean over targets, 95% CI)")
    return fig


def plot_per_target(df: pd.DataFrame, per_target: dict[str, Sequence[float]],
                    colors: dict[str, Any]) -> Figure:
    """Box plots of the per-target LDS per method (white dot: the mean, i.e. the LDS)."""
    fig, axes, groups = _rows_figure(df)
    horizontal = ({"orientation": "horizontal"}
                  if "orientation" in inspect.signature(axes[0].boxplot).parameters else {"vert": False})
    for ax, (_, g, ys) in zip(axes, groups):
        data = [np.asarray(per_target[p], dtype=float) for p in g["path"]]
        boxes = ax.boxplot(data, positions=ys, widths=0.12, patch_artist=True,
                           showmeans=True, manage_ticks=False, **horizontal,
                           medianprops={"color": "black", "lw": 0.9},
                           meanprops={"marker": "o", "markerfacecolor": "white",
                                      "markeredgecolor": "black", "markersize": 2.5, "mew": 0.5},
                           flierprops={"marker": ".", "markersize": 2, "alpha": 0.6},
                           whiskerprops={"lw": 0.7}, capprops={"lw": 0.7},
                           boxprops={"lw": 0.7})
        for patch, method in zip(boxes["boxes"], g["method"]):
            patch.set_facecolor(colors[method])
            patch.set_alpha(0.75)
    axes[-1].set_xlabel("per-target LDS (Spearman over subsets)")
    fig.supxlabel("box: quartiles; bar: median; white dot: mean (= LDS)", fontsize=7)
    return fig


# Markers of a method's configs, in config hash order: the first filled, the others hollow, so
# that a point drawn over another at the same place leaves both visible.
CONFIG_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def config_keys(df: pd.DataFrame) -> dict[str, tuple[str, str, bool]]:
    """Per row ``path`` of a leaderboard table: its short label, its marker and whether the
    marker is filled. The short label is the method name where the method has one config in
    ``df``, else ``method hash`` (its 8-digit config hash), with ``sN`` where a config was run
    with several seeds; each config of a method gets its own marker (:data:`CONFIG_MARKERS`)."""
    out = {}
    for method, g in df.groupby("method", sort=True):
        hashes = sorted(set(g["config_hash"]))
        for _, r in g.iterrows():
            k = hashes.index(r["config_hash"])
            short = method if len(hashes) == 1 else f"{method} {r['config_hash']}"
            if g[g["config_hash"] == r["config_hash"]]["seed"].nunique() > 1:
                short += f" s{r['seed']}"
            out[r["path"]] = (short, CONFIG_MARKERS[k % len(CONFIG_MARKERS)], k == 0)
    return out


def _config_text(label: str, method: str) -> str:
    """A row label without its method name: the config fields that set it apart."""
    if label == method:
        return "the default config"
    head, sep, rest = label.partition(" (")
    return rest.rstrip(")") if head == method and sep else label


def plot_pareto(df: pd.DataFrame, colors: dict[str, Any]) -> Figure:
    """LDS against inference time per target on a log axis, one panel per task; the Pareto
    front (maximise LDS, minimise time) is a step line through ringed points. Every point is in
    its method's colour with its config's marker (:func:`config_keys`) and is named by its short
    label, placed clear of the other points and names (:func:`place_labels`). Above the
    panels, a table gives the config of every short label that carries a hash. Reference methods
    (a datamodel: its cost is retraining) are dashed horizontal lines, off the front."""
    groups = _groups(df)
    keys = config_keys(df)
    fig = Figure(figsize=(WIDTH, 2.5 * len(groups) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    references = set(df.loc[df["reference"].astype(bool), "method"])
    points = []
    for ax, (title, g) in zip(axes, groups):
        for _, r in g[g["method"].isin(references)].iterrows():  # no inference cost to place
            ax.axhline(r["lds"], color=colors[r["method"]], lw=0.9, ls="--", zorder=1)
        g = g[~g["method"].isin(references)]
        ms = g["score_per_target_s"].to_numpy() * 1e3
        # a time below the clock's resolution (0) is drawn at a floor, not dropped off a log axis
        positive = ms[ms > 0]
        ms = np.maximum(ms, positive.min() / 2 if positive.size else 1e-3)
        lds = g["lds"].to_numpy()
        for k, (x, (_, r)) in enumerate(zip(ms, g.iterrows())):
            color = colors[r["method"]]
            _, marker, filled = keys[r["path"]]
            ax.errorbar(x, r["lds"], yerr=[[r["lds"] - r["lds_ci_low"]], [r["lds_ci_high"] - r["lds"]]],
                        fmt="none", ecolor=color, elinewidth=0.6, alpha=0.45, zorder=2)
            ax.plot(x, r["lds"], marker, ms=3.5, color=color, mfc=color if filled else "white",
                    mew=0.8, zorder=4 + (not filled) + k * 1e-3)
        ax.set_xscale("log")
        lo, hi = np.nanmin(ms), np.nanmax(ms)
        ax.set_xlim(lo / 4, hi * 3)
        front = pareto_front(ms, lds)
        ax.step(np.append(ms[front], hi * 3), np.append(lds[front], lds[front][-1]), where="post",
                color="black", lw=0.8, zorder=3)
        ax.plot(ms[front], lds[front], "o", ms=6.5, mfc="none", mec="black", mew=0.7, zorder=6)
        ax.set_xlabel("time per target (ms, log scale)")
        ax.axhline(0, color="0.55", lw=0.6, ls=":", zorder=0)
        ax.set_title(title, loc="left", fontweight="bold")
        ax.set_ylabel("LDS")
        ax.grid(lw=0.3, alpha=0.5)
        points.append((ax, [keys[p][0] for p in g["path"]], ms, lds))
    shown = sorted(set(df["method"]))
    handles = [Line2D([], [], ls="--", lw=0.9, color=colors[m], label=f"{m} (reference)") if m in references
               else Line2D([], [], ls="", marker="o", ms=3.5, color=colors[m], label=m) for m in shown]
    handles.append(Line2D([], [], color="black", lw=0.8, marker="o", ms=6, mfc="none", mec="black",
                          mew=0.7, label="Pareto front"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False,
               handletextpad=0.3, columnspacing=1.0)
    configs = df[[keys[p][0] != m for p, m in zip(df["path"], df["method"])]]
    configs = configs.drop_duplicates(["method", "config_hash"]).sort_values(["method", "config_hash"])
    if len(configs):  # the legend table: short label -> the config it stands for
        rows = []
        for _, r in configs.iterrows():
            short, marker, filled = keys[r["path"]]
            text = "\n".join(textwrap.wrap(f"{short.split(' s')[0]}: {_config_text(r['label'], r['method'])}",
                                           58, subsequent_indent="   "))
            rows.append(Line2D([], [], ls="", marker=marker, ms=3.5, color=colors[r["method"]],
                               mfc=colors[r["method"]] if filled else "white", mew=0.8, label=text))
        fig.legend(handles=rows, loc="outside upper center", ncols=1, frameon=False, fontsize=5.5,
                   handletextpad=0.3, title="configs", title_fontsize=6, alignment="left")
    fig.canvas.draw()  # lay the panels out first: labels are placed in display coordinates
    for ax, labels, x, y in points:
        place_labels(ax, labels, x, y, fontsize=5)
    return fig


def plot_rank_agreement(agreements: Sequence[tiers.RankAgreement], colors: dict[str, Any]) -> Figure:
    """Top: Kendall's tau per task with its 95% bootstrap interval; below, one panel per task:
    each method's LDS in the cheap tier (x) against the realistic tier (y), in its colour, with
    the identity line dotted."""
    fig = Figure(figsize=(WIDTH, 1.0 + 0.25 * len(agreements) + 2.4 * len(agreements)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ratios = [0.4 + 0.25 * len(agreements)] + [2.2] * len(agreements)
    axes = fig.subplots(len(agreements) + 1, 1, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    top = axes[0]
    ys = np.arange(len(agreements))[::-1]
    for y, a in zip(ys, agreements):
        lo, hi = a.ci95
        top.errorbar(a.tau, y, xerr=[[a.tau - lo], [hi - a.tau]], fmt="o", ms=3.5, color="black",
                     capsize=1.8, elinewidth=0.9)
    top.set_yticks(ys, [a.task for a in agreements])
    top.set_xlim(-1.05, 1.05)
    top.set_ylim(-0.6, len(agreements) - 0.4)
    top.axvline(0, color="0.55", lw=0.6, ls=":", zorder=0)
    top.set_xlabel(f"Kendall's tau, {agreements[0].tiers[0]} vs {agreements[0].tiers[1]} ranking (95% CI)")
    top.grid(axis="x", lw=0.3, alpha=0.5)
    for ax, a in zip(axes[1:], agreements):
        x, y = a.lds
        for label, xi, yi in zip(a.labels, x, y):
            ax.plot(xi, yi, "o", ms=3.5, color=colors[label])  # a tier's methods, by name
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        pad = 0.05 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="0.55", lw=0.6, zorder=0)
        ax.set_title(f"{a.task}: tau {a.tau:+.2f} [{a.ci95[0]:+.2f}, {a.ci95[1]:+.2f}]",
                     loc="left", fontweight="bold")
        ax.set_xlabel(f"LDS, {a.tiers[0]}")
        ax.set_ylabel(f"LDS, {a.tiers[1]}")
        ax.grid(lw=0.3, alpha=0.5)
    fig.canvas.draw()  # lay the panels out first: labels are placed in display coordinates
    for ax, a in zip(axes[1:], agreements):
        place_labels(ax, list(a.labels), *a.lds, fontsize=5)
    return fig


# Where a point's label may go, in order of preference: (dx, dy) in points from the point, and
# the text's alignment there. Near offsets first, then the same directions further out, where a
# thin leader line ties the label to its point.
LABEL_SPOTS = [((dx * r, dy * r), ha, va) for r in (1, 3, 5)
               for (dx, dy), ha, va in [((2, 2), "left", "bottom"), ((2, -2), "left", "top"),
                                        ((-2, 2), "right", "bottom"), ((-2, -2), "right", "top"),
                                        ((3, 0), "left", "center"), ((-3, 0), "right", "center"),
                                        ((0, 3), "center", "bottom"), ((0, -3), "center", "top")]]
LEADER = {"arrowstyle": "-", "lw": 0.3, "color": "0.45", "shrinkA": 0, "shrinkB": 2}


def place_labels(ax: Any, labels: Sequence[str], x: Sequence[float], y: Sequence[float],
                 fontsize: float = 5) -> list[Any]:
    """Name each point (x[i], y[i]) of ``ax`` with labels[i], at the first of
    :data:`LABEL_SPOTS` where the text overlaps no label placed before and no other point, has
    its own point nearest its middle and stays inside the axes (else where it breaks these
    least, by area); a label away from its point gets a leader line. Greedy, so it needs the
    panel laid out (``fig.canvas.draw()``) before; returns the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    centres = ax.transData.transform(np.column_stack([x, y]))
    half = 2.0 * ax.figure.dpi / 72  # a 3.5 pt marker's half width and a margin, in pixels
    placed: list[Any] = []
    annotations = []
    for i, label in enumerate(labels):
        others = [Bbox.from_extents(*(c - half), *(c + half))
                  for j, c in enumerate(centres) if j != i]
        best = None
        for offset, ha, va in LABEL_SPOTS:
            far = max(abs(offset[0]), abs(offset[1])) > 3
            text = ax.annotate(label, (x[i], y[i]), xytext=offset, textcoords="offset points",
                               ha=ha, va=va, fontsize=fontsize, arrowprops=LEADER if far else None)
            box = text.get_window_extent(renderer)
            clash = sum(_overlap(box, b) for b in placed + others)
            clash += box.width * box.height - _overlap(box, inside)  # the part outside the axes
            middle = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
            nearest = np.hypot(*(centres - middle).T).argmin()
            if nearest != i:  # its middle nearer another point: it would read as that one's
                clash += box.width * box.height
            if best is not None and clash >= best[0]:
                text.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (clash, text, box)
            if clash == 0:
                break
        placed.append(best[2])
        annotations.append(best[1])
    return annotations


def _overlap(a: Bbox, b: Bbox) -> float:
    """Area shared by two display-space boxes."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def plot_all(selection: leaderboard.Selection, out_dir: Path | str) -> list[Path]:
    """Draw the figures for the records in ``selection`` (``rank_agreement`` only where some
    task has records in both tiers); returns the files written."""
    df = leaderboard.table(selection)
    per_target = {str(r.path): r.record.per_target_lds for r in selection.records}
    colors = method_colors(df["method"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(STYLE):
        figures = {"lds": plot_lds(df, colors), "pareto": plot_pareto(df, colors),
                   "per_target_lds": plot_per_target(df, per_target, colors)}
        agreements = tiers.rank_agreements(selection)
        if agreements:
            figures["rank_agreement"] = plot_rank_agreement(agreements, colors)
        for name, fig in figures.items():
            for fmt in FORMATS:
                path = out_dir / f"{name}.{fmt}"
                fig.savefig(path, dpi=DPI, metadata={"Date": None} if fmt == "pdf" else None)
                written.append(path)
    return written


def plot_scaling(scaling: dict[str, Any]) -> Figure:
    """Fit and score time against pool size on log-log axes, one panel each: one line per
    method (its colour in every figure), the gradient methods' reference fine-tune (which grows
    with the pool too) dashed in black on the fit panel, and a grey dotted guide of slope 1
    (time proportional to the pool).

    ``scaling``: ``{"sizes": [N, ...], "methods": {name: {"fit_s": [...], "score_s": [...]}},
    "reference_s": [...] (optional), "n_targets": T}``, as the scaling benchmark writes it.
    """
    sizes = np.asarray(scaling["sizes"], dtype=float)
    methods = scaling["methods"]
    colors = method_colors(methods)
    fig = Figure(figsize=(WIDTH, 2.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (("fit_s", "fit"), ("score_s", f"score ({scaling.get('n_targets', '?')} targets)"))
    for ax, (phase, title) in zip(axes, panels):
        lines = [np.asarray(methods[name][phase], dtype=float) for name in sorted(methods)]
        for name, seconds in zip(sorted(methods), lines):
            ax.plot(sizes, seconds, "o-", ms=3, color=colors[name], label=name)
        if phase == "fit_s" and scaling.get("reference_s"):
            ax.plot(sizes, scaling["reference_s"], "s--", ms=3, color="black", label="reference fine-tune")
        start = float(np.exp(np.mean([np.log(s[0]) for s in lines if s[0] > 0])))
        ax.plot(sizes, start * sizes / sizes[0], ":", color="0.55", lw=0.8, label="proportional to pool")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{n:,.0f}" for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, loc="left", fontweight="bold")
        ax.set_xlabel("pool size")
        ax.grid(lw=0.3, alpha=0.5)
    axes[0].set_ylabel("seconds (wall)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False,
               handletextpad=0.3, columnspacing=1.0)
    return fig


def write_scaling_figure(scaling: dict[str, Any], out_dir: Path | str, name: str = "scaling") -> list[Path]:
    """Draw :func:`plot_scaling` and write it as ``out_dir/<name>.png`` and ``.pdf``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(STYLE):
        fig = plot_scaling(scaling)
        for fmt in FORMATS:
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, dpi=DPI, metadata={"Date": None} if fmt == "pdf" else None)
            written.append(path)
    return written
