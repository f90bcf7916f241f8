"""logra (dattri's LoGra) and less (LESS on peft LoRA adapters) on the micro task: shape, sign
(an exact copy of a target ranks at the top of the pool), configs, and missing libraries."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from test_gradient_methods import context_for, fitted, pool_with_copies

from tdabench.method import MissingDependency, gradients, make_config
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
    exact = fitted("graddot", {"checkpoint": "pool"}, context).score(context.data.targets).ravel()
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
    config = {"warmup_epochs": 3, "warmup_fraction": 0.5, "tracked": "attention"}
    method = fitted("less", config, context_for(micro, tmp_path))
    states = method.prepared.states
    assert len(states) == len(method.files) == 3
    assert all(name.endswith((".lora_A.default", ".lora_B.default")) for name in method.prepared.modules)
    assert all(".self_attn." in name for name in method.prepared.modules)  # LESS: q, k, v, o
    first, last = states[0], states[-1]
    assert first.betas == (0.9, 0.999) and first.eps == 1e-8  # the constants LESS hard-codes
    assert (first.v >= 0).all() and not torch.equal(first.m, last.m)
    assert not all(torch.equal(w, u) for w, u in zip(first.weights, last.weights))
    norms = torch.from_numpy(np.load(method.files[0])).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def less_obtain_gradients_with_adam(vectorized_grads, avg, avg_sq):
    """princeton-nlp/LESS, less/data_selection/collect_grad_reps.py, obtain_gradients_with_adam,
    transcribed line for line (after its loss.backward() and flattening)."""
    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-08
    updated_avg = beta1 * avg + (1 - beta1) * vectorized_grads
    updated_avg_sq = beta2 * avg_sq + (1 - beta2) * vectorized_grads ** 2
    vectorized_grads = updated_avg / torch.sqrt(updated_avg_sq + eps)
    return vectorized_grads


def test_less_adam_term_is_less_obtain_gradients_with_adam():
    from tdabench.methods.less import adam_term

    generator = torch.Generator().manual_seed(0)
    g = torch.randn(5, 40, generator=generator, dtype=torch.float64) * 1e-4  # scales where eps matters
    m = torch.randn(40, generator=generator, dtype=torch.float64) * 1e-4
    v = torch.rand(40, generator=generator, dtype=torch.float64) * 1e-8
    ours = adam_term(g, m, v, (0.9, 0.999), 1e-8)
    expected = torch.stack([less_obtain_gradients_with_adam(row, m, v) for row in g])
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    m1, v1 = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g.square()
    outside = m1 / (v1.sqrt() + 1e-8)  # eps outside the root: the form LESS does not use
    assert (ours - outside).abs().max() > 0.1 * ours.abs().max()


def test_less_pool_features_are_the_unit_adam_term_of_explicit_gradients(micro, tmp_path):
    """Each pool feature = unit(LESS's Adam term of the example's mean response-token
    cross-entropy gradient over the LoRA weights), at every warm-up checkpoint."""
    from test_gradient_methods import explicit_gradients, mean_ce

    from tdabench import lm

    context = context_for(micro, tmp_path)
    method = fitted("less", {"proj_dim": 0, "warmup_epochs": 2}, context)
    encoded = lm.encode(method.prepared.lm.tokenizer, context.data.pool, context.spec.model)
    for state, file in zip(method.prepared.states, method.files):
        method.load(state)
        g = explicit_gradients(method.prepared.lm.model, method.params, encoded, mean_ce)
        expected = torch.nn.functional.normalize(less_obtain_gradients_with_adam(
            g, state.m.double(), state.v.double()), dim=1)
        torch.testing.assert_close(torch.from_numpy(np.load(file)).double(), expected,
                                   rtol=1e-3, atol=1e-4)


def test_less_warm_up_makes_at_least_min_warmup_steps_adam_steps():
    from tdabench.methods.less import LESS, lora_size

    method = LESS(LESS.Config())
    pool = list(range(800))
    warm = method.warmup_examples(pool, batch_size=16, seed=0)
    assert len(warm) == 400 and 4 * -(-len(warm) // 16) >= 100  # 5% would be 40 examples, 12 steps
    assert warm == method.warmup_examples(pool, 16, 0) != method.warmup_examples(pool, 16, 1)
    assert len(LESS(LESS.Config(warmup_fraction=0.75)).warmup_examples(pool, 16, 0)) == 600
    assert len(method.warmup_examples(pool[:60], 16, 0)) == 60  # the pool caps it
    assert lora_size(0, 0.0, 4096) == (128, 512.0) and lora_size(0, 0.0, 128) == (4, 16.0)
    assert lora_size(8, 32.0, 128) == (8, 32.0)


@pytest.mark.parametrize("name, field, value, words", [
    ("logra", "proj_dim", 1000, "perfect square"), ("logra", "hessian", "EK-FAC", "hessian must be"),
    ("logra", "tracked", "embed", "tracked must be"), ("less", "tracked", "embed", "tracked must be"),
    ("less", "warmup_fraction", 0.0, "warmup_fraction"), ("less", "checkpoint", "trajectory", "checkpoint"),
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
