"""Pooling, one implementation each: token states into one vector (mean pooling), and per-example
scores into a group score (sum or attention pooling).

Shapes: T targets, N pool examples, M subsets ((M, N) bool membership). Higher group score =
the subset is more helpful to the target (the sign convention of :mod:`tdabench.metrics`).

* :func:`mean_pool`: (B, L, d) hidden states, (B, L) attention mask -> (B, d), the mean over the
  masked-in positions: padding zeroed, summed in the states' dtype, divided by the integer
  token count (as the AirRep authors' ``mean_pooling``; in fp32 the same bits as a multiply by
  the mask). Used by AirRep's encoder (scoring and training) and RepSim.
* :func:`attention_pool`: AirRep's group score g(x, S) = sum_{z in S} softmax_{z in S}(w(s)) * s,
  w = |.| as the authors train (``"attention"``) or the identity as their evaluation script
  computes the published LDS (``"attention-eval"``). In torch, so that training differentiates
  through it; :data:`POOLINGS` wraps it for numpy score matrices. Subsets are pooled one at a
  time (they may differ in size), so memory stays (T, N), never (T, M, N).
* ``"sum"``: :func:`tdabench.metrics.sum_group_scores`, every per-example method's default.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tdabench.errors import ConfigError
from tdabench.metrics import sum_group_scores


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, d) states and (B, L) 0/1 mask -> (B, d) mean over the masked-in positions."""
    hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
    return hidden.sum(1) / mask.sum(1)[..., None]


def attention_pool(scores: torch.Tensor, membership: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """(T, N) scores, (M, N) bool membership -> (T, M): sum_{z in S} softmax_{z in S}(w(s)) * s
    with w = |.| (``absolute``) or the identity; differentiable."""
    columns = []
    for members in membership:
        s = scores[:, members]
        columns.append((torch.softmax(s.abs() if absolute else s, dim=1) * s).sum(dim=1))
    return torch.stack(columns, dim=1)


def group_pool(scores: torch.Tensor, membership: torch.Tensor, pooling: str) -> torch.Tensor:
    """(T, M) group scores of torch ``scores`` by the pooling named ``pooling``."""
    check_group_score(pooling)
    if pooling == "sum":
        return scores @ membership.T.to(scores.dtype)
    return attention_pool(scores, membership, absolute=pooling == "attention")


def _numpy_attention(absolute: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def pool(scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
        s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        members = torch.from_numpy(np.asarray(membership, dtype=bool))
        return attention_pool(s, members, absolute).numpy()

    return pool


# Group-score poolings of numpy (T, N) scores by name: name -> (function of (scores,
# membership) -> (T, M) float64, what it computes).
POOLINGS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]] = {
    "sum": (sum_group_scores, "sum of per-example scores over the subset"),
    "attention": (_numpy_attention(absolute=True),
                  "attention pooling of per-example scores (softmax of |s| over the subset)"),
    "attention-eval": (_numpy_attention(absolute=False),
                       "attention pooling of per-example scores (softmax of s over the subset, "
                       "as in the AirRep authors' evaluation script)"),
}


def check_group_score(name: str) -> None:
    """Refuse a pooling that :data:`POOLINGS` does not name, listing those it does."""
    if name not in POOLINGS:
        raise ConfigError(f"group_score must be one of {', '.join(POOLINGS)}, not {name!r}")


def pooled_group_scores(scores: np.ndarray, membership: np.ndarray, pooling: str) -> np.ndarray:
    """(T, M) group scores of numpy ``scores`` by the pooling named ``pooling``."""
    check_group_score(pooling)
    return POOLINGS[pooling][0](scores, membership)
