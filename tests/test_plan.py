"""``tdabench plan``: a short timed run scaled to the whole bank, leaving no bank behind."""

from __future__ import annotations

import math
import os

import pytest

from tdabench import cli
from tdabench.groundtruth import plan
from tdabench.store import cache_dir


def test_plan_scales_the_timed_fine_tunes_to_the_bank(micro):
    task, spec, _ = micro
    measured = plan.measure(spec, task.load, n_finetunes=2)
    assert len(measured.finetune_s) == 2 and all(0 < t < 60 for t in measured.finetune_s)
    assert measured.device == "cpu" and measured.worker_init_s > 0 and measured.data_s >= 0
    est = plan.estimate(spec, measured, n_subsets=100, n_seeds=2, workers=4)
    assert est.jobs == 200
    assert est.device_hours == pytest.approx(200 * measured.per_finetune_s / 3600)
    assert est.wall_s == pytest.approx(measured.worker_init_s + 50 * measured.per_finetune_s)
    one = plan.estimate(spec, measured, 100, 2, workers=1)
    assert one.device_hours == est.device_hours and one.wall_s > 3 * est.wall_s - 3 * measured.worker_init_s
    defaults = plan.estimate(spec, measured)
    assert (defaults.n_subsets, defaults.n_seeds) == (spec.groundtruth.n_subsets, spec.groundtruth.n_seeds)
    text = plan.render(est)
    assert "200 fine-tunes" in text and "core-hours" in text and "assumptions" in text
    with pytest.raises(ValueError, match="workers"):
        plan.estimate(spec, measured, workers=0)


def test_plan_cli_prints_an_estimate_and_builds_no_bank(micro, capsys):
    banks = cache_dir() / "groundtruth"
    before = sorted(banks.iterdir()) if banks.exists() else []
    assert cli.main(["plan", "--task", "micro", "--preset", "micro", "--subsets", "1000",
                     "--seeds", "1", "--workers", "64", "--fine-tunes", "1"]) == 0
    out = capsys.readouterr().out
    assert "1000 subsets x 1 seed(s) = 1000 fine-tunes" in out and "on 64 worker(s)" in out
    per = float(out.split(" s per fine-tune")[0].rsplit(" ", 1)[1])
    hours = float(out.split(" core-hours")[0].rsplit(" ", 1)[1])
    # both printed to 2-3 significant digits (a micro fine-tune takes a few hundredths of a second)
    assert math.isclose(hours * 3600 / 1000, per, rel_tol=0.1, abs_tol=0.006)
    if (os.cpu_count() or 1) < 64:
        assert "larger machine or a Ray cluster" in out
    after = sorted(banks.iterdir()) if banks.exists() else []
    assert after == before


# --- a method's cost (`tdabench plan --method M`) ----------------------------------------------

def test_a_cost_is_the_line_through_two_measurements_and_never_shrinks():
    from tdabench import costs

    assert costs.linear({64: 10.0, 128: 14.0}, 1000) == pytest.approx(6.0 + 1000 / 16)
    assert costs.linear({64: 10.0, 128: 9.0}, 1000) == 9.0  # noise: a falling line is floored
    with pytest.raises(ValueError):
        costs.linear({64: 1.0}, 100)


def test_plan_method_times_cuts_of_the_task_and_extrapolates_to_its_size(micro, capsys):
    """Issue 31: nothing said before a run what a method would cost at the task's size."""
    from tdabench import costs
    from tdabench.checks import validate

    resolved = validate("micro", "micro", None, "graddot", {"checkpoint": "base"})
    est = costs.estimate(resolved, sizes=(8, 16), n_targets=2)
    assert sorted(est.measured) == [8, 16] and est.n_pool == len(resolved.data.pool) > 16
    for q in costs.QUANTITIES:
        points = {n: m[q] for n, m in est.measured.items()}
        assert all(v >= 0 and math.isfinite(v) for v in points.values())
        assert est.predicted[q] == pytest.approx(costs.linear(points, est.n_pool))
    # graddot holds one exact gradient per pool example: its storage grows with N, as predicted
    held = {n: m["storage_bytes"] for n, m in est.measured.items()}
    assert held[16] > held[8] > 0 and est.predicted["storage_bytes"] > held[16]
    banks = cache_dir() / "groundtruth"
    before = sorted(banks.iterdir()) if banks.exists() else []
    assert cli.main(["plan", "--task", "micro", "--preset", "micro", "--method", "random"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("random on micro/micro (") and "assumed: each cost linear in N" in out
    assert (sorted(banks.iterdir()) if banks.exists() else []) == before  # no bank built
    assert cli.main(["plan", "--task", "micro", "--preset", "micro", "--method", "graddot",
                     "--config", "projection=kron:0"]) == 2  # refused before anything runs
    assert "projection must be 'auto', 'none' or 'kron:K'" in capsys.readouterr().err
