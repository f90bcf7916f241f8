"""AirRep training cost on chatterbot/tiny: seconds per optimisation step for each encoder
regime (``none``, ``top:2``, ``all``) and seconds per fine-tune of its training bank.

A step is timed as training runs it (``Trainer.step``: sample dev examples and subsets, encode
without gradients, the RankNet loss's gradient, re-encode with gradients, clip, AdamW), on a
split of the bank's shape (100 dev examples, 100 subsets of 10% of the rest of the pool) with
random labels: a step's work does not depend on the label values. The frozen layers' one-off
cache (once per training) is reported apart. Full size: the whole pool (800) and the default
32 subsets per step, median of 3 steps; smoke size: 40 pool examples, 8 dev, 4 subsets.

A training fine-tune is timed through ``build_training_bank`` (one split of 8 subsets at full
size, 2 at smoke size, one worker); the figure is the build's wall time per fine-tune, the
worker's start (load the model, tokenise) included once.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from tdabench import lm
from tdabench.method import FitContext, make_config, text_view
from tdabench.methods.airrep import AirRep, training
from tdabench.runner import load_task

REGIMES = ("none", "top:2", "all")


@pytest.fixture(scope="module")
def task(perf):
    _, spec, data = load_task("chatterbot", "tiny")
    if not perf.full:
        data = dataclasses.replace(data, pool=data.pool[:40], targets=data.targets[:8])
    lm.load_base_model(spec.model, data.warmup, data.pool)  # built once per cache, not timed
    return spec, data


def random_split(n_pool: int, n_dev: int, n_subsets: int) -> training.Split:
    rng = np.random.default_rng(0)
    dev = np.sort(rng.choice(n_pool, n_dev, replace=False))
    rest = np.setdiff1d(np.arange(n_pool), dev)
    membership = np.zeros((n_subsets, n_pool), dtype=bool)
    for row in membership:
        row[rng.choice(rest, max(1, round(0.1 * len(rest))), replace=False)] = True
    return training.Split(dev, membership, rng.normal(size=(n_dev, n_subsets)))


@pytest.mark.parametrize("regime", REGIMES)
def test_seconds_per_step(benchmark, perf, timed, task, tmp_path, regime):
    spec, data = task
    sizes = {"subsets_per_step": "32"} if perf.full else {"subsets_per_step": "4", "batch_size": "16"}
    method = AirRep(make_config(AirRep, {"train_encoder": regime, **sizes}))
    method._view = text_view(method.config.text, FitContext(spec, data, tmp_path))
    texts = method._texts(data.pool)
    split = random_split(len(texts), 100 if perf.full else 8, 100 if perf.full else 6)
    start = time.perf_counter()
    trainer = training.make_trainer(method, texts, [split])
    setup_s = time.perf_counter() - start
    loss, step_s = timed(benchmark, lambda: trainer.step(0, split), rounds=3 if perf.full else 1)
    assert np.isfinite(loss) and loss > 0
    perf.add("airrep_training", f"step {regime}",
             f"AirRep step, train_encoder={regime}: {step_s:.3f} s ({len(texts)} pool texts, "
             f"{method.config.subsets_per_step} subsets/step); 1,000 steps = {1000 * step_s / 60:.1f} min; "
             f"setup (load, frozen-layer cache) {setup_s:.1f} s",
             s_per_step=step_s, setup_s=setup_s, n_pool=len(texts))


def test_seconds_per_training_fine_tune(benchmark, perf, timed, task, tmp_path):
    spec, data = task
    n = 8 if perf.full else 2
    tb = training.TrainingBankSpec(n_splits=1, n_dev=100 if perf.full else 8, n_subsets=n)
    context = FitContext(spec, data, tmp_path)
    bank, wall = timed(benchmark, lambda: training.build_training_bank(context, tb), rounds=1)
    assert bank[0][1].complete
    perf.add("airrep_training", "fine-tune",
             f"AirRep training bank: {wall / n:.2f} s per fine-tune ({n} on one worker, its start "
             f"included); 4,000 = {4000 * wall / n / 60:.0f} min on one worker",
             s_per_fine_tune=wall / n, n=n)
