"""The datamodel reference: ridge with leave-one-out penalties, fitted on a bank of its own."""

from __future__ import annotations

import numpy as np
import pytest

from tdabench import runner
from tdabench.groundtruth import build_bank, training_seed
from tdabench.method import FitContext, make_config
from tdabench.methods.datamodel import Datamodel, ridge_loo


def test_ridge_matches_scikit_learn_and_brute_force_leave_one_out():
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X = (rng.random((40, 15)) < 0.3).astype(float)
    Y = X @ rng.normal(size=(15, 3)) + 0.3 * rng.normal(size=(40, 3))
    coef, chosen = ridge_loo(X, Y, np.array([2.0]))
    want = linear_model.Ridge(alpha=2.0).fit(X, Y).coef_.T
    np.testing.assert_allclose(coef, want, atol=1e-10)
    alphas = np.array([0.01, 1.0, 100.0])
    _, chosen = ridge_loo(X, Y, alphas)
    def loo_error(alpha, t):  # refit without each row and predict it
        fits = [linear_model.Ridge(alpha=alpha).fit(np.delete(X, i, 0), np.delete(Y[:, t], i))
                for i in range(len(X))]
        return np.mean([(Y[i, t] - fit.predict(X[i:i + 1])[0]) ** 2 for i, fit in enumerate(fits)])

    for t in range(3):
        assert chosen[t] == alphas[int(np.argmin([loo_error(a, t) for a in alphas]))]


def test_datamodel_bank_is_independent_and_a_linear_truth_is_recovered(micro, tmp_path):
    _, spec, data = micro
    eval_bank = build_bank(spec, data)
    config = make_config(Datamodel, {"n_subsets": "12"})
    method = Datamodel(config)
    context = FitContext(spec=spec, data=data, workdir=tmp_path)
    method.train(context)
    own = method.bank
    assert own.complete and own.losses.shape == (12, 1, len(data.targets))
    assert not {row.tobytes() for row in own.membership} & {row.tobytes() for row in eval_bank.membership}
    dm_spec = method.bank_spec(context)
    eval_seeds = {training_seed(spec, m, r) for m in range(6) for r in range(2)}
    assert not {training_seed(dm_spec, m, 0) for m in range(12)} & eval_seeds
    method.fit(data.pool, context)
    scores = method.score(data.targets)
    assert scores.shape == (len(data.targets), len(data.pool)) and np.isfinite(scores).all()
    # sign: a pool example whose presence lowers the loss gets a positive score
    z = int(np.flatnonzero(own.membership.any(axis=0) & ~own.membership.all(axis=0))[0])
    theta = np.zeros((len(data.pool), len(data.targets)))
    theta[z] = 1.0
    method.bank.losses[:, 0, :] = -(own.membership.astype(float) @ theta)  # a linear truth
    method.fit(data.pool, context)
    assert (method.score(data.targets).argmax(axis=1) == z).all()
    with pytest.raises(ValueError, match="no model for targets"):
        method.score(data.pool[:1])


@pytest.mark.slow
def test_datamodel_runs_end_to_end(micro, tmp_path):
    record, _ = runner.run("datamodel", "micro", "micro", config={"n_subsets": "12"}, results_dir=tmp_path)
    assert record["cost"]["train"]["wall_s"] > 0 and -1 <= record["metrics"]["lds"]["mean"] <= 1
