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
