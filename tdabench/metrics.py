"""Metrics as pure array functions (numpy/scipy only; no models, no I/O).

Shapes: T targets, N pool examples, M subsets (a subset is a row of an (M, N) bool membership).
Sign convention (everywhere in tdabench): a higher score means the training example (or subset)
is more helpful to the target, i.e. lowers the target's loss. Ground-truth labels are therefore
minus the losses.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from scipy.stats import rankdata


def sum_group_scores(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """g(x, S_m) = sum of the per-example scores over S_m.

    scores: (T, N); membership: (M, N) bool or 0/1. Returns (T, M).
    """
    return np.asarray(scores, dtype=np.float64) @ np.asarray(membership, dtype=np.float64).T


def attention_pooled_group_scores(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """AirRep's pooling: g(x, S) = sum_{z in S} softmax_{z in S}(|s(x, z)|) * s(x, z).

    scores: (T, N); membership: (M, N) bool. Returns (T, M).
    """
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty((scores.shape[0], len(membership)))
    for m, members in enumerate(np.asarray(membership, dtype=bool)):  # subsets may differ in size
        s = scores[:, members]
        out[:, m] = (softmax(np.abs(s), axis=1) * s).sum(axis=1)
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation between matching rows of x and y (T, M), ties at average rank.

    A row where either side is constant has no defined correlation and gets 0.
    """
    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    num = (rx * ry).sum(axis=1)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    out = np.zeros(len(num))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def lds_per_target(group_scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-target LDS: Spearman over subsets between g(x, S_m) and -L_m(x).

    group_scores, labels: (T, M); labels are minus the losses. Returns (T,), NaN counted as 0.
    """
    group_scores, labels = np.asarray(group_scores), np.asarray(labels)
    if group_scores.shape != labels.shape:
        raise ValueError(f"group scores {group_scores.shape} and labels {labels.shape} differ")
    return spearman_rows(group_scores, labels)


def lds(group_scores: np.ndarray, labels: np.ndarray) -> float:
    """Linear datamodeling score: the mean over targets of :func:`lds_per_target`."""
    return float(lds_per_target(group_scores, labels).mean())


def bootstrap_ci(per_target: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling targets with replacement."""
    values = np.asarray(per_target, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def recall_at_k(scores: np.ndarray, pool_sources: np.ndarray, target_sources: np.ndarray,
                k: int) -> np.ndarray:
    """Whether each target's source is among the sources of its top-k scored pool examples.

    scores: (T, N); pool_sources: (N,); target_sources: (T,). Returns (T,) bool.
    Ties at the k-th score are broken arbitrarily (by ``np.argpartition``).
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (T, k), unordered
    return (np.asarray(pool_sources)[top] == np.asarray(target_sources)[:, None]).any(axis=1)


def recall_chance(pool_sources: np.ndarray, target_sources: np.ndarray, k: int) -> float:
    """Expected recall@k of a ranking drawn uniformly at random (hypergeometric), mean over
    targets: 1 - C(N - c, k) / C(N, k), c = pool examples sharing the target's source."""
    pool_sources, target_sources = np.asarray(pool_sources), np.asarray(target_sources)
    n, k = len(pool_sources), min(k, len(pool_sources))
    labels, counts = np.unique(pool_sources, return_counts=True)
    steps = np.arange(k)
    # P(no hit) = prod_{i<k} (N - c - i) / (N - i); it is 0 once N - c < k
    ratios = np.clip((n - counts[:, None] - steps) / (n - steps), 0.0, None)
    hit = dict(zip(labels.tolist(), (1.0 - ratios.prod(axis=1)).tolist()))
    return float(np.mean([hit.get(src, 0.0) for src in target_sources.tolist()]))
