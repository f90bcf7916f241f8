"""The evaluation protocol: what every LDS on one leaderboard shares, and how it is computed.

:data:`PROTOCOL_VERSION` is an integer that goes into every record's ``protocol_hash`` (with
the correlation); the English text in :data:`PROTOCOL` goes into the record for people to read
and is never hashed, so rewording it strands no record. Bump the version whenever a change here
(the split rule, the label, the intervals, the NaN policy, recall) changes a number a record
would hold; records of two versions are then never ranked together.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tdabench import metrics
from tdabench.errors import ConfigError
from tdabench.spec import stable_hash

PROTOCOL_VERSION = 1
RECALL_KS = (1, 10)
TUNING_EVERY = 5  # subsets m with m % 5 == 0 are the tuning part; the rest are the test part
# The tuning protocol: every method's declared grid (``Method.GRID``) holds at most this many
# configurations, each fitted and scored on the tuning subsets of the task and tier scored. The
# same number of configurations, not the same CPU time: the methods' costs differ some 10^4-fold
# (tfidf 0.1 s, TRAK 100 s a fit at tiny), so a time budget would give the lexical baselines
# thousands of trials and TRAK one; a count is what published comparisons report.
TUNING_BUDGET = 6
TUNING_VERSION = 1
PROTOCOL = {
    "model_output": "mean cross-entropy of the target's response tokens after fine-tuning",
    "label": "minus the loss, mean over training seeds (higher = subset helped)",
    "score_sign": "higher = more helpful (lowers the target's loss)",
    "nan_policy": "an undefined correlation (constant scores or labels) counts as 0",
    "aggregate": "mean over targets; 95% percentile bootstrap over targets (2000 resamples) and, "
                 "separately, over subsets (1000 resamples)",
    "subsets": f"LDS on the test part of the bank: subsets m with m % {TUNING_EVERY} != 0; "
               f"the tuning part (m % {TUNING_EVERY} == 0) is for hyperparameter search only",
    "noise_ceiling": "split-half reliability r between the training seeds' halves, "
                     "Spearman-Brown 2r/(1+r), ceiling sqrt of it, mean over targets",
}


def check_correlation(correlation: str) -> None:
    """Refuse an unknown correlation, naming the valid ones."""
    if correlation not in metrics.CORRELATIONS:
        raise ConfigError(f"unknown correlation {correlation!r}; "
                          f"use one of {', '.join(metrics.CORRELATIONS)}")


def protocol(correlation: str = "spearman") -> dict[str, str]:
    """The protocol's text for a record (what every LDS on one leaderboard shares)."""
    check_correlation(correlation)
    return {**PROTOCOL, "correlation": f"{correlation} over subsets, per target"
            + (", average ranks for ties" if correlation == "spearman" else "")}


def protocol_hash(correlation: str = "spearman", version: int = PROTOCOL_VERSION) -> str:
    """What records must share, besides the spec, to be ranked together: the protocol version
    and the correlation (8 hex digits)."""
    check_correlation(correlation)
    return stable_hash({"protocol_version": version, "correlation": correlation}, 8)


def tuning_subsets(n_subsets: int) -> np.ndarray:
    """(M,) bool: the bank's tuning part (a fixed rule, stable when a bank grows)."""
    return np.arange(n_subsets) % TUNING_EVERY == 0


def bank_reliability(losses: np.ndarray, correlation: str = "spearman") -> dict[str, Any] | None:
    """The noise ceiling of a bank's test part; ``losses`` (M, R, T). None with one seed."""
    if losses.shape[1] < 2:
        return None
    test = ~tuning_subsets(len(losses))
    r, ceiling = metrics.noise_ceiling(losses[test], correlation)
    return {"split_half_r": float(r.mean()), "ceiling": float(ceiling.mean()),
            "ceiling_ci95": list(metrics.bootstrap_ci(ceiling))}


def evaluate(scores: np.ndarray, group_scores: np.ndarray, labels: np.ndarray,
             pool_sources: np.ndarray, target_sources: np.ndarray, correlation: str = "spearman",
             n_boot: int = 2000) -> dict[str, Any]:
    """LDS on the test subsets (bootstrap intervals over targets and over subsets) and recall@k.

    ``scores`` (T, N) per-example; ``group_scores`` and ``labels`` (T, M) over all M subsets of
    the bank (labels: minus the losses); sources (N,) and (T,). Returns the record's
    ``metrics`` part plus ``per_target_lds`` (T,).
    """
    test = ~tuning_subsets(labels.shape[1])
    test_scores, test_labels = group_scores[:, test], labels[:, test]
    per_target = metrics.lds_per_target(test_scores, test_labels, correlation)
    out: dict[str, Any] = {
        "lds": {"mean": float(per_target.mean()),
                "ci95": list(metrics.bootstrap_ci(per_target, n_boot=n_boot)),
                "ci95_subsets": list(metrics.bootstrap_ci_subsets(test_scores, test_labels, correlation)),
                "n_targets": len(per_target), "n_subsets": int(test.sum())},
        "per_target_lds": per_target.tolist(),
    }
    for k in RECALL_KS:
        hits = metrics.recall_at_k(scores, pool_sources, target_sources, k)
        out[f"recall@{k}"] = {"value": float(hits.mean()),
                              "chance": metrics.recall_chance(pool_sources, target_sources, k)}
    return out


def paper_lds(group_scores: np.ndarray, labels: np.ndarray, aggregation: str,
              correlation: str = "spearman") -> dict[str, Any]:
    """The paper-comparable LDS of a published bank: over ALL its subsets (published ground truth
    has no tuning part), of ``group_scores`` made with the aggregation the method's authors
    evaluate with (described by ``aggregation``). ``group_scores``, ``labels``: (T, M)."""
    per_target = metrics.lds_per_target(group_scores, labels, correlation)
    return {"mean": float(per_target.mean()), "ci95": list(metrics.bootstrap_ci(per_target)),
            "n_targets": len(per_target), "n_subsets": labels.shape[1], "group_score": aggregation}
