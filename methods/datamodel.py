"""datamodel: a linear datamodel fitted on a bank of its own (a reference, not a cheap method).

For every target it fits ``-loss(S) ~ b + sum_{z in S} theta_z`` by ridge regression over the
subsets of an independent bank: the same task, spec, pool and targets, but ``n_subsets`` other
random subsets (another subset seed) fine-tuned on the ``reference`` seed stream, so it shares
no subset and no fine-tuning seed with the evaluation bank. The score of pool example z for a
target is theta_z: higher = more helpful (lowers the target's loss), like every method. Its
``train`` phase is that bank: it shows what linear attribution reaches with this much retraining
and what the retraining costs. The ridge penalty is chosen per target by exact leave-one-out
error over a grid (``alpha = 0``) or fixed (``alpha > 0``, relative to the mean squared singular
value of the centred membership matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tdabench.groundtruth import GroundTruthBank
from tdabench.method import FitContext, Method, Trained
from tdabench.seeds import reference_bank_seed
from tdabench.spec import Example, GroundTruthSpec
from tdabench.typed import param

ALPHA_GRID = np.logspace(-3, 3, 25)  # relative ridge penalties tried per target


def ridge_loo(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge fits of every column of Y on X (with an intercept), penalty chosen per column by
    exact leave-one-out squared error.

    X: (K, N) design; Y: (K, T) responses; ``alphas``: candidate penalties (absolute).
    Returns (coefficients (N, T), chosen alpha per column (T,)).
    """
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    UtY = U.T @ Yc  # (r, T)
    best_err = np.full(Y.shape[1], np.inf)
    best = np.zeros((Vt.shape[1], Y.shape[1]))
    chosen = np.zeros(Y.shape[1])
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)  # (r,)
        fitted = U @ (shrink[:, None] * UtY)
        leverage = (U**2) @ shrink + 1.0 / len(X)  # the intercept adds 1/K
        err = (((Yc - fitted) / (1.0 - leverage)[:, None]) ** 2).mean(axis=0)
        better = err < best_err
        if better.any():
            coef = Vt.T @ ((s / (s**2 + alpha))[:, None] * UtY[:, better])
            best[:, better], best_err[better], chosen[better] = coef, err[better], alpha
    return best, chosen


class Datamodel(Method):
    FAMILY = "datamodel"
    VERSION = 1  # bump when a change may move this adapter's numbers
    REFERENCE = True  # plots show it as a reference line: its cost is the retraining, not inference

    @dataclass
    class Config:
        n_subsets: int = param(400, "fine-tunes in the datamodel's own bank (its training cost)", ge=2)
        alpha: float = param(0.0,
                             "0: ridge penalty chosen per target by leave-one-out; > 0: this one",
                             ge=0)

    def bank_spec(self, context: FitContext):
        """The spec of the datamodel's own bank: the evaluation spec with other subsets."""
        gt = context.spec.groundtruth
        return replace(context.spec, groundtruth=GroundTruthSpec(
            n_subsets=self.config.n_subsets, fraction=gt.fraction, n_seeds=1,
            seed=reference_bank_seed(gt.seed), stream="reference"))

    def train(self, context: FitContext) -> Trained:
        """Build (or resume) the datamodel's own bank through the harness, with the run's
        compute; cached when it was complete already."""
        spec = self.bank_spec(context)
        own = context.own_banks([(spec, context.data)], f"datamodel bank {spec.task}/{spec.preset}")
        self.bank: GroundTruthBank = own.banks[0]
        return Trained(cached=own.reused, artifact=str(self.bank.path))

    def fit(self, pool: list[Example], context: FitContext) -> None:
        if not hasattr(self, "bank"):
            self.train(context)
        X = self.bank.membership.astype(np.float64)  # (K, N)
        Y = self.bank.labels().T  # (K, T): minus the losses
        scale = np.mean(np.linalg.svd(X - X.mean(axis=0), compute_uv=False) ** 2)
        alphas = ALPHA_GRID * scale if self.config.alpha == 0 else np.array([self.config.alpha * scale])
        self.theta, self.alpha = ridge_loo(X, Y, alphas)  # (N, T), (T,)
        self.target_ids = [ex.id for ex in context.data.targets]

    def score(self, targets: list[Example]) -> np.ndarray:
        index = {tid: t for t, tid in enumerate(self.target_ids)}
        missing = [ex.id for ex in targets if ex.id not in index]
        if missing:
            raise ValueError(f"datamodel has no model for targets {missing[:3]}: it fits one per "
                             "target of its bank, i.e. the task's targets")
        return self.theta[:, [index[ex.id] for ex in targets]].T  # (T, N)
