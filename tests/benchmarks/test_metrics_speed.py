"""Metric speed (pytest-benchmark): 1000 targets x 100 subsets, pool of 10,000, one thread.

Each vectorised metric is timed against a per-target loop, the way peers compute it: scipy's
``spearmanr`` per target for LDS, a full ``argsort`` per target for recall@k, and both (with
the target's group scores, ``membership @ scores[t]``) for a whole evaluation. The ratios are
in the summary at the end of the run; the loops (seconds each) run once, the vectorised
metrics as often as pytest-benchmark calibrates. The default test run executes each benchmark once, as a
test, without timing (and checks that both sides agree).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tdabench import metrics

T, M, N, K = 1000, 100, 10_000, 1000
N_SOURCES = 50
KS = (1, 10)
PAIRS = {  # figure -> (vectorised benchmark, per-target loop benchmark)
    "LDS": ("lds vectorised", "lds scipy loop"),
    "recall@10": ("recall@10 vectorised", "recall@10 loop"),
    "evaluation (group scores, LDS, recall@1 and @10)": ("evaluation vectorised", "evaluation loop"),
}


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


@pytest.fixture(scope="module")
def sources():
    return np.arange(N) % N_SOURCES, np.arange(T) % N_SOURCES


@pytest.fixture(scope="module")
def seconds(perf):
    """Median seconds of each timed benchmark; the module's end reports the ratios."""
    found: dict[str, float] = {}
    yield found
    for figure, (fast, slow) in PAIRS.items():
        if fast in found and slow in found:
            ratio = found[slow] / found[fast]
            perf.add("metrics", figure,
                     f"{figure} on {T} targets x {M} subsets x {N:,} pool: {found[fast] * 1e3:.0f} ms "
                     f"vectorised vs {found[slow] * 1e3:.0f} ms per-target loop = {ratio:.0f}x faster "
                     "[aim >= 20x]",
                     vectorised_s=found[fast], per_target_loop_s=found[slow], speedup=ratio)


def recall_loop(scores: np.ndarray, pool_sources: np.ndarray, target_sources: np.ndarray,
                k: int) -> np.ndarray:
    """recall@k target by target: sort all pool scores, look at the top k."""
    return np.array([target_sources[t] in pool_sources[np.argsort(-scores[t])[:k]]
                     for t in range(len(scores))])


def evaluate_vectorised(scores, indicator, labels, pool_sources, target_sources) -> tuple[float, ...]:
    groups = metrics.sum_group_scores(scores, indicator)
    return (metrics.lds(groups, labels),
            *(float(metrics.recall_at_k(scores, pool_sources, target_sources, k).mean()) for k in KS))


def evaluate_loop(scores, indicator, labels, pool_sources, target_sources) -> tuple[float, ...]:
    """A whole evaluation target by target: group scores, Spearman, a sort for recall@k."""
    lds, hits = [], {k: [] for k in KS}
    members = indicator.astype(np.float64)
    for t in range(len(scores)):
        lds.append(spearmanr(members @ scores[t].astype(np.float64), labels[t]).statistic)
        ranked = pool_sources[np.argsort(-scores[t])]
        for k in KS:
            hits[k].append(target_sources[t] in ranked[:k])
    return (float(np.mean(lds)), *(float(np.mean(hits[k])) for k in KS))


@pytest.mark.benchmark(group="lds 1000x100")
def test_lds_vectorised(benchmark, inputs, seconds, timed):
    _, _, groups, labels = inputs
    value, seconds["lds vectorised"] = timed(benchmark, lambda: metrics.lds(groups, labels))
    assert -0.05 < value < 0.05


@pytest.mark.benchmark(group="lds 1000x100")
def test_lds_scipy_loop_reference(benchmark, inputs, seconds, timed):
    """What peers do: scipy's spearmanr target by target."""
    _, _, groups, labels = inputs
    value, seconds["lds scipy loop"] = timed(
        benchmark, lambda: float(np.mean([spearmanr(g, y).statistic for g, y in zip(groups, labels)])), 1)
    assert value == pytest.approx(metrics.lds(groups, labels), abs=1e-9)


@pytest.mark.benchmark(group="group scores 1000x10000 -> 1000x100")
def test_sum_group_scores(benchmark, inputs):
    scores, indicator, groups, _ = inputs
    out = benchmark(metrics.sum_group_scores, scores, indicator)
    np.testing.assert_allclose(out, groups)


@pytest.mark.benchmark(group="recall@10 1000x10000")
def test_recall_at_10(benchmark, inputs, sources, seconds, timed):
    hits, seconds["recall@10 vectorised"] = timed(
        benchmark, lambda: metrics.recall_at_k(inputs[0], *sources, 10))
    assert 0.1 < hits.mean() < 0.3  # chance is about 0.18


@pytest.mark.benchmark(group="recall@10 1000x10000")
def test_recall_at_10_loop_reference(benchmark, inputs, sources, seconds, timed):
    """recall@10 target by target with a full sort, as peers' evaluation scripts do."""
    hits, seconds["recall@10 loop"] = timed(benchmark, lambda: recall_loop(inputs[0], *sources, 10), 1)
    np.testing.assert_array_equal(hits, metrics.recall_at_k(inputs[0], *sources, 10))


@pytest.mark.benchmark(group="evaluation 1000x100x10000")
def test_evaluation_vectorised(benchmark, inputs, sources, seconds, timed):
    scores, indicator, _, labels = inputs
    values, seconds["evaluation vectorised"] = timed(
        benchmark, lambda: evaluate_vectorised(scores, indicator, labels, *sources))
    assert -0.05 < values[0] < 0.05


@pytest.mark.benchmark(group="evaluation 1000x100x10000")
def test_evaluation_loop_reference(benchmark, inputs, sources, seconds, timed):
    scores, indicator, _, labels = inputs
    values, seconds["evaluation loop"] = timed(
        benchmark, lambda: evaluate_loop(scores, indicator, labels, *sources), 1)
    np.testing.assert_allclose(values, evaluate_vectorised(scores, indicator, labels, *sources), atol=1e-6)
