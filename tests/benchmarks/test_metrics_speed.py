"""Metric speed (pytest-benchmark): 1000 targets x 100 subsets, pool of 10,000.

Run with ``pytest tests/benchmarks --benchmark-enable``; the default test run executes each
benchmark once, as a test, without timing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tdabench import metrics

T, M, N, K = 1000, 100, 10_000, 1000


@pytest.fixture(scope="module")
def inputs():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(T, N)).astype(np.float32)
    subsets = np.stack([rng.choice(N, K, replace=False) for _ in range(M)])
    indicator = np.zeros((M, N), dtype=np.float32)
    np.put_along_axis(indicator, subsets, 1.0, axis=1)
    labels = rng.normal(size=(T, M))
    return scores, indicator, metrics.sum_group_scores(scores, indicator), labels


@pytest.mark.benchmark(group="lds 1000x100")
def test_lds_vectorised(benchmark, inputs):
    _, _, groups, labels = inputs
    value = benchmark(metrics.lds, groups, labels)
    assert -0.05 < value < 0.05


@pytest.mark.benchmark(group="lds 1000x100")
def test_lds_scipy_loop_reference(benchmark, inputs):
    """What peers do: scipy's spearmanr target by target."""
    _, _, groups, labels = inputs
    value = benchmark(lambda: float(np.mean([spearmanr(g, y).statistic for g, y in zip(groups, labels)])))
    assert value == pytest.approx(metrics.lds(groups, labels), abs=1e-9)


@pytest.mark.benchmark(group="group scores 1000x10000 -> 1000x100")
def test_sum_group_scores(benchmark, inputs):
    scores, indicator, groups, _ = inputs
    out = benchmark(metrics.sum_group_scores, scores, indicator)
    np.testing.assert_allclose(out, groups)


@pytest.mark.benchmark(group="recall@10 1000x10000")
def test_recall_at_10(benchmark, inputs):
    scores = inputs[0]
    sources = np.arange(N) % 50
    hits = benchmark(metrics.recall_at_k, scores, sources, np.arange(T) % 50, 10)
    assert 0.1 < hits.mean() < 0.3  # chance is about 0.18
