"""Metrics as pure array functions (numpy/scipy only; no models, no I/O).

Shapes: T targets, N pool examples, M subsets (a subset is a row of an (M, N) bool membership).
Sign convention (everywhere in tdabench): a higher score means the training example (or subset)
is more helpful to the target, i.e. lowers the target's loss. Ground-truth labels are therefore
minus the losses.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def sum_group_scores(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """g(x, S_m) = sum of the per-example scores over S_m.

    scores: (T, N); membership: (M, N) bool or 0/1. Returns (T, M).
    """
    return np.asarray(scores, dtype=np.float64) @ np.asarray(membership, dtype=np.float64).T


CORRELATIONS = ("spearman", "kendall", "pearson")


def _pearson_centred(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    num = (x * y).sum(axis=1)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    out = np.zeros(len(num))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation between matching rows of x and y (T, M), ties at average rank.

    A row where either side is constant has no defined correlation and gets 0.
    """
    return _pearson_centred(rankdata(x, axis=1), rankdata(y, axis=1))


def kendall_rows(x: np.ndarray, y: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Kendall's tau-b between matching rows of x and y (T, M) (what ``scipy.stats.kendalltau``
    computes by default); a row where either side is constant gets 0. O(T M^2) memory per chunk."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = x.shape[1]
    pairs = m * (m - 1) / 2
    out = np.zeros(len(x))
    for start in range(0, len(x), chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        dx = np.sign(xs[:, :, None] - xs[:, None, :])  # (t, M, M); each pair counted twice
        dy = np.sign(ys[:, :, None] - ys[:, None, :])
        concordance = (dx * dy).sum(axis=(1, 2)) / 2
        untied_x = (dx != 0).sum(axis=(1, 2)) / 2  # pairs - pairs tied in x
        untied_y = (dy != 0).sum(axis=(1, 2)) / 2
        den = np.sqrt(untied_x * untied_y)
        ok = (den > 0) & (pairs > 0)
        out[start:start + chunk][ok] = concordance[ok] / den[ok]
    return out


def correlation_rows(x: np.ndarray, y: np.ndarray, kind: str = "spearman") -> np.ndarray:
    """Row-wise correlation of (T, M) arrays: ``spearman`` (default), ``kendall`` (tau-b) or
    ``pearson``; a row where either side is constant gets 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if kind == "spearman":
        return spearman_rows(x, y)
    if kind == "kendall":
        return kendall_rows(x, y)
    if kind == "pearson":
        return _pearson_centred(x, y)
    raise ValueError(f"unknown correlation {kind!r}; use one of {', '.join(CORRELATIONS)}")


def lds_per_target(group_scores: np.ndarray, labels: np.ndarray, correlation: str = "spearman") -> np.ndarray:
    """Per-target LDS: the correlation over subsets between g(x, S_m) and -L_m(x).

    group_scores, labels: (T, M); labels are minus the losses. Returns (T,), NaN counted as 0.
    """
    group_scores, labels = np.asarray(group_scores), np.asarray(labels)
    if group_scores.shape != labels.shape:
        raise ValueError(f"group scores {group_scores.shape} and labels {labels.shape} differ")
    return correlation_rows(group_scores, labels, correlation)


def lds(group_scores: np.ndarray, labels: np.ndarray, correlation: str = "spearman") -> float:
    """Linear datamodeling score: the mean over targets of :func:`lds_per_target`."""
    return float(lds_per_target(group_scores, labels, correlation).mean())


def _interval(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_ci(per_target: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling targets with replacement."""
    values = np.asarray(per_target, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return _interval(values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1), level)


def bootstrap_lds_subsets(group_scores: np.ndarray, labels: np.ndarray, correlation: str = "spearman",
                          n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """LDS recomputed on ``n_boot`` resamples of the subsets (columns, with replacement; the
    same resample for every target). Returns (n_boot,) mean LDS values."""
    group_scores, labels = np.asarray(group_scores), np.asarray(labels)
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, labels.shape[1], size=(n_boot, labels.shape[1]))
    return np.array([lds(group_scores[:, c], labels[:, c], correlation) for c in cols])


def bootstrap_ci_subsets(group_scores: np.ndarray, labels: np.ndarray, correlation: str = "spearman",
                         n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the LDS over subsets: how much the score would move
    with another draw of subsets of the same size (targets held fixed)."""
    return _interval(bootstrap_lds_subsets(group_scores, labels, correlation, n_boot, seed), level)


def paired_bootstrap(diffs: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Summary of bootstrap replicates of a difference A - B: mean, interval and the two-sided
    p-value of "no difference" (twice the smaller tail beyond 0, at least 1/n)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    low, high = _interval(diffs, level)
    tail = min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"mean": float(diffs.mean()), "ci_low": low, "ci_high": high,
            "p_value": float(min(1.0, max(2 * tail, 1 / len(diffs))))}


def paired_bootstrap_targets(per_target_a: np.ndarray, per_target_b: np.ndarray, n_boot: int = 2000,
                             level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over targets of LDS(A) - LDS(B), both on the same bank and targets."""
    d = np.asarray(per_target_a, dtype=np.float64) - np.asarray(per_target_b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return paired_bootstrap(d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1), level)


def paired_bootstrap_subsets(group_scores_a: np.ndarray, group_scores_b: np.ndarray, labels: np.ndarray,
                             correlation: str = "spearman", n_boot: int = 1000, level: float = 0.95,
                             seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over subsets of LDS(A) - LDS(B): both methods see the same resamples."""
    a = bootstrap_lds_subsets(group_scores_a, labels, correlation, n_boot, seed)
    b = bootstrap_lds_subsets(group_scores_b, labels, correlation, n_boot, seed)
    return paired_bootstrap(a - b, level)


def noise_ceiling(losses: np.ndarray, correlation: str = "spearman") -> tuple[np.ndarray, np.ndarray]:
    """Split-half reliability of the ground truth and the LDS ceiling it implies, per target.

    losses: (M, R, T), R >= 2 training seeds per subset. The seeds are split into two halves
    (first half, second half); r_t is the correlation over subsets between the two halves' mean
    losses for target t. The labels average all R seeds, so their reliability is the
    Spearman-Brown step-up rel_t = 2 r_t / (1 + r_t) (exact for two halves of equal size); no
    score can correlate with noisy labels better than sqrt(rel_t) (classical test theory;
    for rank correlations an approximation). Returns (r, ceiling), each (T,); rel <= 0 -> 0.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 3 or losses.shape[1] < 2:
        raise ValueError(f"a noise ceiling needs losses (M, R, T) with R >= 2 seeds, got {losses.shape}")
    half = losses.shape[1] // 2
    a, b = losses[:, :half].mean(axis=1).T, losses[:, half:].mean(axis=1).T  # (T, M)
    r = correlation_rows(a, b, correlation)
    reliability = np.clip(2 * r / (1 + np.clip(r, -0.999999, None)), 0.0, 1.0)
    return r, np.sqrt(reliability)


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
