"""logra (dattri's LoGra) and less (LESS on peft LoRA adapters) on the micro task: shape, sign
(an exact copy of a target ranks at the top of the pool), configs, and missing libraries."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_gradient_methods import context_for, fitted, pool_with_copies

from tdabench import gradients
from tdabench.method import MissingDependency, make_config
from tdabench.registry import get_method

CASES = [("logra", {}), ("logra", {"hessian": "Identity", "proj_dim": 4096, "projector_seed": 1}),
         ("less", {}), ("less", {"tracked": "mlp", "proj_dim": 0, "warmup_fraction": 0.5})]


@pytest.fixture(autouse=True)
def needs_libraries():
    pytest.importorskip("dattri", reason="pip install 'tdabench[logra]'")
    pytest.importorskip("peft", reason="pip install 'tdabench[less]'")


@pytest.mark.parametrize("name, config", CASES)
def test_scores_are_finite_targets_by_pool_and_an_exact_copy_ranks_first(micro, tmp_path, name, config):
    data = micro[2]
    context = context_for(micro, tmp_path, pool=pool_with_copies(data))
    scores = fitted(name, config, context).score(data.targets)
    T, N = len(data.targets), len(context.data.pool)
    assert scores.shape == (T, N) and scores.dtype == np.float64 and np.isfinite(scores).all()
    copy = scores[np.arange(T), np.arange(N - T, N)]
    rank = (scores > copy[:, None]).sum(axis=1)  # 0 = top of the pool
    assert (copy > 0).all()  # sign: the copy lowers the target's loss
    assert (rank == 0).mean() >= 0.9 and rank.max() <= 2, rank


def test_logra_identity_hessian_approaches_the_gradient_dot_product_as_the_projection_widens(
        micro, tmp_path):
    """With no Hessian, LoGra's score is a projected gradient dot product (graddot): close at a
    projection wider than each factor (32 and 8 here, 64 per factor), farther at 4 per factor."""
    context = context_for(micro, tmp_path, d_ff=8)
    exact = fitted("graddot", {}, context).score(context.data.targets).ravel()
    corr = [np.corrcoef(exact, fitted("logra", {"hessian": "Identity", "proj_dim": k}, context)
                        .score(context.data.targets).ravel())[0, 1] for k in (4096, 16)]
    assert corr[0] > 0.9 and corr[0] > corr[1], corr


def test_less_features_are_projected_once_with_a_seeded_gaussian():
    a, b = gradients.GaussianProjection(50, 8, seed=3), gradients.GaussianProjection(50, 8, seed=3)
    x = torch.randn(4, 50)
    assert torch.equal(a(x), b(x)) and torch.equal(a.matrix, b.matrix)
    assert not torch.equal(a.matrix, gradients.GaussianProjection(50, 8, seed=4).matrix)
    assert a.matrix.square().sum(1).mean() == pytest.approx(1.0, abs=0.5)  # N(0, 1/k) entries


def test_less_keeps_one_adam_checkpoint_per_warmup_epoch(micro, tmp_path):
    method = fitted("less", {"warmup_epochs": 3, "warmup_fraction": 0.5}, context_for(micro, tmp_path))
    assert len(method.checkpoints) == len(method.pool_features) == 3
    assert all(name.endswith((".lora_A.default", ".lora_B.default")) for name in method.modules)
    first, last = method.checkpoints[0], method.checkpoints[-1]
    assert (first["v"] >= 0).all() and not torch.equal(first["m"], last["m"])
    assert not all(torch.equal(w, u) for w, u in zip(first["weights"], last["weights"]))
    norms = method.pool_features[0].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("name, field, value, words", [
    ("logra", "proj_dim", 1000, "perfect square"), ("logra", "hessian", "EK-FAC", "hessian must be"),
    ("logra", "tracked", "embed", "tracked must be"), ("less", "tracked", "embed", "tracked must be"),
    ("less", "warmup_fraction", 0.0, "warmup_fraction"),
])
def test_bad_configs_are_refused(name, field, value, words):
    cls = get_method(name)
    with pytest.raises(ValueError, match=words):
        cls(make_config(cls, {field: str(value)}))


@pytest.mark.parametrize("module, name", [("dattri", "logra"), ("peft", "less")])
def test_a_missing_library_names_the_extra_to_install(micro, tmp_path, monkeypatch, module, name):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    cls = get_method(name)
    with pytest.raises(MissingDependency, match=rf"pip install 'tdabench\[{name}\]'"):
        cls(make_config(cls, {})).fit(micro[2].pool, context_for(micro, tmp_path))
