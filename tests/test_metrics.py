"""LDS, recall and group scores against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import comb, softmax
from scipy.stats import spearmanr

from tdabench import metrics
from tdabench.method import pooling


def scipy_lds_per_target(group_scores, labels):
    """The reference: scipy's spearmanr target by target, NaN counted as 0."""
    out = []
    for g, y in zip(group_scores, labels):
        rho = spearmanr(g, y).statistic
        out.append(0.0 if np.isnan(rho) else rho)
    return np.array(out)


def test_lds_matches_scipy_with_ties_and_constant_rows():
    rng = np.random.default_rng(0)
    T, M = 50, 30
    scores = rng.integers(0, 5, size=(T, M)).astype(float)  # many ties
    labels = rng.normal(size=(T, M)).round(1)  # ties on the label side too
    scores[3] = 7.0  # constant scores: undefined correlation
    labels[4] = -1.5  # constant labels
    scores[5] = labels[5] * 2 + 1  # perfectly monotone: 1
    scores[6] = -labels[6]  # perfectly anti-monotone: -1
    ours = metrics.lds_per_target(scores, labels)
    ref = scipy_lds_per_target(scores, labels)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours[3] == 0 and ours[4] == 0
    assert ours[5] == pytest.approx(1) and ours[6] == pytest.approx(-1)
    assert metrics.lds(scores, labels) == pytest.approx(ref.mean(), abs=1e-12)


def test_lds_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        metrics.lds(np.zeros((3, 4)), np.zeros((4, 3)))


def test_sign_convention_true_effects_score_one():
    """Losses made by a loop over each subset's members (no matrix product), through a
    monotone but non-linear loss: scores equal to each example's true loss reduction rank the
    subsets exactly as the labels do (LDS 1); negated, -1; unrelated scores, about 0."""
    rng = np.random.default_rng(1)
    T, N, M, k = 8, 40, 25, 10
    effect = rng.normal(size=(T, N))  # how much example n lowers target t's loss
    subsets = [rng.choice(N, k, replace=False) for _ in range(M)]
    losses = np.array([[np.exp(-0.1 * sum(effect[t, n] for n in s)) for s in subsets] for t in range(T)])
    labels = -losses  # more helpful examples -> lower loss -> higher label
    ind = np.zeros((M, N), dtype=bool)
    for m, s in enumerate(subsets):
        ind[m, s] = True
    assert metrics.lds(metrics.sum_group_scores(effect, ind), labels) == pytest.approx(1.0)
    assert metrics.lds(metrics.sum_group_scores(-effect, ind), labels) == pytest.approx(-1.0)
    unrelated = metrics.lds(metrics.sum_group_scores(rng.normal(size=(T, N)), ind), labels)
    assert abs(unrelated) < 0.3


def test_sum_and_attention_pooled_group_scores_match_loops():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(4, 20))
    subsets = np.stack([rng.choice(20, 5, replace=False) for _ in range(6)])
    ind = np.zeros((6, 20))
    np.put_along_axis(ind, subsets, 1.0, axis=1)
    summed = metrics.sum_group_scores(scores, ind)
    pooled = pooling.pooled_group_scores(scores, ind.astype(bool), "attention")
    for t in range(4):
        for m in range(6):
            s = scores[t, subsets[m]]
            assert summed[t, m] == pytest.approx(s.sum())
            assert pooled[t, m] == pytest.approx((softmax(np.abs(s)) * s).sum())


def test_recall_at_k_matches_a_direct_loop():
    rng = np.random.default_rng(3)
    T, N = 30, 100
    scores = rng.normal(size=(T, N))
    pool_src = rng.choice(list("abcdef"), size=N)
    target_src = rng.choice(list("abcdefg"), size=T)  # "g" never in the pool
    for k in (1, 10):
        ours = metrics.recall_at_k(scores, pool_src, target_src, k)
        for t in range(T):
            top = np.argsort(-scores[t])[:k]
            assert ours[t] == (target_src[t] in set(pool_src[top]))
    assert not metrics.recall_at_k(scores, pool_src, target_src, 10)[target_src == "g"].any()


def test_recall_chance_is_the_hypergeometric_probability():
    pool_src = np.array(["a"] * 10 + ["b"] * 30 + ["c"] * 60)
    target_src = np.array(["a", "b", "c", "z"])
    for k in (1, 10):
        expected = np.mean([1 - comb(100 - c, k) / comb(100, k) for c in (10, 30, 60, 0)])
        assert metrics.recall_chance(pool_src, target_src, k) == pytest.approx(expected)
    # and a random ranking's recall converges to it
    rng = np.random.default_rng(4)
    hits = metrics.recall_at_k(rng.normal(size=(20000, 100)), pool_src,
                               np.resize(target_src, 20000), 10)
    assert hits.mean() == pytest.approx(metrics.recall_chance(pool_src, target_src, 10), abs=0.01)


def test_bootstrap_interval_brackets_the_mean_and_depends_only_on_resampling_noise():
    values = np.random.default_rng(5).normal(0.3, 0.2, size=200)
    low, high = metrics.bootstrap_ci(values)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.2)
    other = metrics.bootstrap_ci(values, seed=1)
    assert other != (low, high)  # the seed is used
    np.testing.assert_allclose(other, (low, high), atol=0.005)  # resampling noise only
