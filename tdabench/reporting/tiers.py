"""Two tiers of one task side by side, and whether the cheap tier predicts the realistic one.

A *tier* is a preset of a task: ``tiny`` (a from-scratch 1.3M-parameter Llama, seconds per
fine-tune) is the cheap one a method developer iterates on, ``small`` (SmolLM2-135M-Instruct,
top blocks fine-tuned) the realistic one. :func:`rank_agreements` measures, per task, Kendall's
tau (tau-b, ``scipy.stats.kendalltau``) between the two tiers' rankings of the methods that
have a record in both, with a percentile bootstrap interval over targets: a replicate resamples
each tier's targets with replacement (one draw for all methods of the tier, so their
correlation is kept), recomputes every method's mean LDS from its record's ``per_target_lds``
and correlates the two rankings. Where both tiers were evaluated on the same targets (their
records' data specs are equal) one draw serves both tiers (a paired bootstrap); otherwise each
tier is drawn independently. Reference rows (a datamodel) are not ranked.

:func:`speed_claims` compares one method's inference time per target with the fastest method of
a family on the same task and preset (by default the learned representation methods, whose
records say they score with representations and have a train phase, against the methods whose
records say they score with gradients: the AirRep paper's speed claim), from the records'
``cost.score_per_target_s``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from tdabench.record import Entry


class Selection(Protocol):
    """What the agreement needs of a leaderboard selection: the records of each (task,
    preset)'s main spec (a variant made with ``--set`` is not a tier)."""

    @property
    def mains(self) -> Mapping[tuple[str, str], Sequence[Entry]]: ...

TIERS = ("tiny", "small")  # (cheap, realistic)
N_BOOT = 1000
MIN_METHODS = 3  # fewer methods give a tau of +-1 or 0 and nothing to learn from


def tier_rank(preset: str) -> tuple[int, str]:
    """Sort key of a preset: the tiers in :data:`TIERS` order, then other presets by name."""
    return TIERS.index(preset) if preset in TIERS else len(TIERS), preset


def column_order(column: str) -> tuple[str, tuple[int, str]]:
    """Sort key of a ``task/preset`` column: by task, then :func:`tier_rank`."""
    task, _, preset = column.partition("/")
    return task, tier_rank(preset)


@dataclass
class RankAgreement:
    """Kendall's tau between the rankings of ``labels`` in the two tiers of ``task``.

    ``lds``: (2, K) mean LDS per label in each tier; ``ci95``: percentile bootstrap interval
    over targets (NaN where every replicate had a tie-only ranking); ``paired``: both tiers were
    resampled with one draw of their shared targets."""

    task: str
    tiers: tuple[str, str]
    labels: list[str]
    lds: np.ndarray
    tau: float
    ci95: tuple[float, float]
    paired: bool
    n_boot: int


def _tau(x: np.ndarray, y: np.ndarray) -> float:
    return float(kendalltau(x, y).statistic)


def kendall_bootstrap(a: np.ndarray, b: np.ndarray, paired: bool = False, n_boot: int = N_BOOT,
                      level: float = 0.95, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Tau between the methods' mean LDS in two tiers and its bootstrap interval over targets.

    ``a``: (K, T_a) per-target LDS of K methods in tier A; ``b``: (K, T_b) of the same methods,
    in the same order, in tier B. Each replicate draws T_a target indices with replacement for
    all methods of A, and T_b for B (the same draw for both when ``paired``, which needs
    T_a == T_b). Returns (tau, (low, high)).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"per-target LDS of the two tiers must be (K, T) with one K: {a.shape}, {b.shape}")
    if paired and a.shape[1] != b.shape[1]:
        raise ValueError("a paired bootstrap needs the same targets in both tiers: "
                         f"{a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    idx_b = idx_a if paired else rng.integers(0, b.shape[1], size=(n_boot, b.shape[1]))
    means_a, means_b = a[:, idx_a].mean(axis=-1), b[:, idx_b].mean(axis=-1)  # (K, n_boot)
    taus = np.array([_tau(means_a[:, i], means_b[:, i]) for i in range(n_boot)])
    alpha = (1 - level) / 2
    if np.isnan(taus).all():
        interval = (math.nan, math.nan)
    else:
        low, high = np.nanquantile(taus, [alpha, 1 - alpha])
        interval = (float(low), float(high))
    return _tau(a.mean(axis=1), b.mean(axis=1)), interval


def _ranked(selection: Selection, task: str, preset: str) -> dict[str, tuple[np.ndarray, dict]]:
    """method -> (per-target LDS, data spec) of the ranked (non-reference) records of a tier.
    A method with several records in the tier (configs that differ between tiers, or seeds) is ranked by
    its best one (highest mean LDS), as the speed line picks it: the tiers then compare methods,
    each as well configured as its records show, not config labels that differ between tiers."""
    out: dict[str, tuple[np.ndarray, dict]] = {}
    for entry in selection.mains.get((task, preset), []):
        info = entry.record.method_info
        if info is not None and info.reference:
            continue
        per_target = np.asarray(entry.record.per_target_lds, dtype=np.float64)
        kept = out.get(entry.method)
        if kept is None or per_target.mean() > kept[0].mean():
            out[entry.method] = (per_target, entry.record.spec.get("data"))
    return out


def rank_agreement(selection: Selection, task: str, tiers: tuple[str, str] = TIERS,
                   n_boot: int = N_BOOT, seed: int = 0) -> RankAgreement | None:
    """The rank agreement of ``task``'s two tiers, or None where fewer than
    :data:`MIN_METHODS` methods have records in both."""
    a, b = (_ranked(selection, task, tier) for tier in tiers)
    labels = sorted(set(a) & set(b))
    if len(labels) < MIN_METHODS:
        return None
    per_a = np.stack([a[lab][0] for lab in labels])
    per_b = np.stack([b[lab][0] for lab in labels])
    data_a, data_b = a[labels[0]][1], b[labels[0]][1]
    paired = data_a is not None and data_a == data_b and per_a.shape[1] == per_b.shape[1]
    tau, ci = kendall_bootstrap(per_a, per_b, paired, n_boot, seed=seed)
    lds = np.stack([per_a.mean(axis=1), per_b.mean(axis=1)])
    return RankAgreement(task, tiers, labels, lds, tau, ci, paired, n_boot)


def rank_agreements(selection: Selection, tiers: tuple[str, str] = TIERS,
                    n_boot: int = N_BOOT, seed: int = 0) -> list[RankAgreement]:
    """:func:`rank_agreement` of every task that has records in both tiers, by task name."""
    mains = selection.mains
    tasks = sorted({task for task, preset in mains if preset == tiers[0]}
                   & {task for task, preset in mains if preset == tiers[1]})
    found = (rank_agreement(selection, task, tiers, n_boot, seed) for task in tasks)
    return [r for r in found if r is not None]


def side_by_side(agreement: RankAgreement) -> pd.DataFrame:
    """One row per method ranked in both tiers: its LDS and rank (1 = best) in each tier,
    best in the realistic tier first. Columns ``label``, ``lds_<tier>``, ``rank_<tier>``."""
    df = pd.DataFrame({"label": agreement.labels})
    for tier, lds in zip(agreement.tiers, agreement.lds):
        df[f"lds_{tier}"] = lds
        df[f"rank_{tier}"] = pd.Series(-lds).rank(method="min").astype(int)
    return df.sort_values(f"rank_{agreement.tiers[1]}", kind="stable").reset_index(drop=True)


def describe(agreement: RankAgreement) -> str:
    """One line: tau, its interval and how it was resampled."""
    lo, hi = agreement.ci95
    how = "the shared targets, one draw for both tiers" if agreement.paired else \
        "each tier's targets, drawn independently"
    return (f"Kendall's tau between the {agreement.tiers[0]} and {agreement.tiers[1]} rankings of "
            f"{len(agreement.labels)} methods: {agreement.tau:+.2f} [{lo:+.2f}, {hi:+.2f}] "
            f"(95% bootstrap over {how}; {agreement.n_boot} replicates)")


@dataclass
class SpeedClaim:
    """Inference time per target of ``method`` and of the fastest of the baselines."""

    task: str
    preset: str
    method: str
    method_s: float
    baseline: str
    baseline_s: float

    @property
    def speedup(self) -> float:
        """Baseline time / method time: above 1, the method is faster."""
        return self.baseline_s / self.method_s if self.method_s > 0 else math.inf

    def describe(self) -> str:
        ratio = self.speedup
        verdict = f"{ratio:.3g}x faster" if ratio >= 1 else f"{1 / ratio:.3g}x slower"
        return (f"inference per target: {self.method} {self.method_s * 1e3:.3g} ms, fastest gradient "
                f"method {self.baseline} {self.baseline_s * 1e3:.3g} ms: {self.method} is {verdict} "
                f"(ratio {ratio:.3g})")


def speed_claims(df: pd.DataFrame, method: str | None = None,
                 family: str = "gradient") -> dict[tuple[str, str, str], SpeedClaim]:
    """Per block (task, preset, variant) of the leaderboard table ``df`` where ``method`` and at least one
    method of ``family`` (the records' ``method_info.family``) have ranked rows: ``method``'s
    time per target (its best-LDS row where it has several configs) against the smallest time
    per target among the family's rows. ``method`` None: the learned representation methods
    (family ``representation`` with a train phase; AirRep's claim against gradient methods)."""
    out = {}
    ranked = df[~df["reference"].astype(bool) & df["score_per_target_s"].notna()]
    for (task, preset, variant), g in ranked.groupby(["task", "preset", "variant"], sort=False):
        learned = (g["family"] == "representation") & g["train_s"].notna()
        mine = learned if method is None else g["method"] == method
        mine, others = g[mine], g[g["family"] == family]
        if mine.empty or others.empty:
            continue
        best = mine.loc[mine["lds"].idxmax()]
        fastest = others.loc[others["score_per_target_s"].idxmin()]
        out[(task, preset, variant)] = SpeedClaim(
            task, preset, best["label"], float(best["score_per_target_s"]),
            fastest["label"], float(fastest["score_per_target_s"]))
    return out
