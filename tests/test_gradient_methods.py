"""Gradient-based methods (graddot, gradcos, tracin, trak, ekfac) and their shared harness
(tdabench.method.gradients): shapes and signs on the micro task, agreement with explicit computations
(per-example autograd gradients, TRAK's formula, a damped inverse-Fisher influence), the cached
reference fine-tune and its checkpoints, and missing libraries."""

from __future__ import annotations

import gc
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tdabench import lm, runner
from tdabench.method import FitContext, MissingDependency, gradients, make_config
from tdabench.registry import get_method
from tdabench.store import read_json

KRONFLUENCE = ("kronfluence is not installed: pip install -c constraints.txt 'tdabench[influence]' && "
               "pip install --no-deps kronfluence==1.0.1")
TRAKER = "traker is not installed: pip install -c constraints.txt 'tdabench[trak]'"
METHODS = ["graddot", "gradcos", "tracin", "trak", "ekfac"]


def needs(name):
    if name == "trak":
        pytest.importorskip("trak", reason=TRAKER)
    if name == "ekfac":
        pytest.importorskip("kronfluence", reason=KRONFLUENCE)


def pool_with_copies(data):
    """The micro pool less any example sharing a prompt or response with a target, then a copy of
    every target."""
    prompts = {ex.prompt for ex in data.targets}
    responses = {ex.response for ex in data.targets}
    rest = [ex for ex in data.pool if ex.prompt not in prompts and ex.response not in responses]
    return rest + [replace(ex, id=f"copy-{ex.id}") for ex in data.targets]


def context_for(micro, tmp_path, pool=None, d_ff=None):
    """A FitContext on the micro task; ``pool`` replaces the pool, ``d_ff`` shrinks the MLPs
    (d_ff=8: 768 MLP weights, small enough for exact inverses)."""
    _, spec, data = micro
    if d_ff is not None:
        spec = replace(spec, model=replace(spec.model, d_ff=d_ff))
    if pool is not None:
        data = replace(data, pool=pool)
    return FitContext(spec, data, tmp_path)


def fitted(name, config, context):
    needs(name)
    cls = get_method(name)
    method = cls(make_config(cls, config))
    method.fit(context.data.pool, context)
    return method


# --- explicit references, written without tdabench.method.gradients ---------------------------------

def single(model, ex: lm.Encoded):
    """(logits (L-1, V), labels (L-1,), response mask) of one unpadded example."""
    ids = torch.tensor([ex.ids])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
    labels = ids[0, 1:]
    mask = torch.arange(len(labels)) >= ex.n_prompt - 1
    return logits, labels, mask


def explicit_gradients(model, params, encoded, fn):
    """(n, P): torch.autograd gradient of fn(logits, labels, mask) for each example, one at a time."""
    out = []
    for ex in encoded:
        logits, labels, mask = single(model, ex)
        grads = torch.autograd.grad(fn(logits, labels, mask), params)
        out.append(torch.cat([g.flatten() for g in grads]).double())
    return torch.stack(out)


def summed_ce(logits, labels, mask):
    return F.cross_entropy(logits[mask], labels[mask], reduction="sum")


def mean_ce(logits, labels, mask):
    return F.cross_entropy(logits[mask], labels[mask])


def mlp_weights(model):
    return [m.weight for layer in model.model.layers
            for m in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]


def reference_and_encodings(context):
    ref = gradients.reference_model(context)
    model, tok = ref.lm.model, ref.lm.tokenizer
    model.requires_grad_(False)
    params = mlp_weights(model)
    for p in params:
        p.requires_grad_(True)
    return (ref, model, params, lm.encode(tok, context.data.pool, context.spec.model),
            lm.encode(tok, context.data.targets, context.spec.model))


# --- every adapter --------------------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_scores_are_finite_targets_by_pool_and_an_exact_copy_ranks_first(micro, tmp_path, name):
    data = micro[2]
    context = context_for(micro, tmp_path, pool=pool_with_copies(data))
    scores = fitted(name, {}, context).score(data.targets)
    T, N = len(data.targets), len(context.data.pool)
    assert scores.shape == (T, N) and scores.dtype == np.float64 and np.isfinite(scores).all()
    copies = np.arange(N - T, N)
    rank = (scores > scores[np.arange(T), copies][:, None]).sum(axis=1)  # 0 = top of the pool
    assert (scores[np.arange(T), copies] > 0).all()  # sign: the copy lowers the target's loss
    assert (rank == 0).mean() >= 0.9 and rank.max() <= 2, rank


def test_graddot_and_gradcos_equal_explicit_per_example_autograd_gradients(micro, tmp_path):
    context = context_for(micro, tmp_path)
    _, model, params, pool, targets = reference_and_encodings(context)
    g_pool = explicit_gradients(model, params, pool, summed_ce)
    g_targets = explicit_gradients(model, params, targets, mean_ce)
    dot = (g_targets @ g_pool.T).numpy()
    cos = (F.normalize(g_targets, dim=1) @ F.normalize(g_pool, dim=1).T).numpy()
    assert np.abs(dot).max() > 0
    pool = {"checkpoint": "pool"}  # the reference above
    np.testing.assert_allclose(fitted("graddot", pool, context).score(context.data.targets), dot,
                               rtol=1e-4, atol=1e-5 * np.abs(dot).max())
    np.testing.assert_allclose(fitted("gradcos", pool, context).score(context.data.targets), cos,
                               rtol=1e-4, atol=1e-5)


def test_the_kronecker_sketch_is_each_layers_exact_gradient_projected_on_both_sides(micro, tmp_path):
    """Issue 31: sketched from the layer's factors, the (O, I) gradient never formed, it equals
    R_o^T G R_i of the explicit autograd gradient G, layer by layer."""
    context = context_for(micro, tmp_path)
    ref, model, params, pool, _ = reference_and_encodings(context)
    modules = gradients.tracked_modules(model, context.spec.model, "mlp")
    sketch = gradients.KroneckerProjection(modules, 4, seed=3)
    got = gradients.per_example_gradients(model, modules, pool[:6], ref.lm.tokenizer.pad_token_id,
                                          "train", batch_size=4, projection=sketch)
    explicit = explicit_gradients(model, params, pool[:6], summed_ce).float()
    expected, start = [], 0
    for name, weight in zip(modules, params):
        r_out, r_in = sketch.matrices[name]
        G = explicit[:, start:start + weight.numel()].reshape(-1, *weight.shape)
        expected.append((r_out.T @ G @ r_in).flatten(1))
        start += weight.numel()
    assert got.shape == (6, sketch.width) == (6, len(modules) * 16)
    torch.testing.assert_close(got, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-5 * got.abs().max().item())


def test_graddot_sketched_estimates_the_exact_scores_and_auto_stays_exact_within_its_budget(
        micro, tmp_path, monkeypatch, capsys):
    from tdabench.methods import graddot

    context = context_for(micro, tmp_path)
    targets = context.data.targets
    exact = fitted("graddot", {"checkpoint": "pool"}, context)
    assert exact.resolved() == {"projection": "none"} and exact.sketch is None
    truth = exact.score(targets)
    # an unbiased estimate whose variance falls with K (measured: r = 0.22, 0.86, 0.94 at 2, 32, 128
    # on the micro model's 32 x 64 layers)
    r = [np.corrcoef(fitted("graddot", {"checkpoint": "pool", "projection": f"kron:{k}"}, context)
                     .score(targets).ravel(), truth.ravel())[0, 1] for k in (2, 32, 128)]
    assert r[0] < 0.5 < 0.8 < r[1] < r[2] and r[2] > 0.9, r
    monkeypatch.setattr(graddot, "EXACT_BUDGET_BYTES", 1000)  # a pool over budget: sketched, said so
    over = fitted("graddot", {"checkpoint": "pool"}, context)
    assert over.resolved() == {"projection": "kron:16"} and over.sketch.k == 16
    assert "sketching each tracked layer's: projection=kron:16" in capsys.readouterr().err
    with pytest.raises(ValueError, match="projection must be 'auto', 'none' or 'kron:K'"):
        get_method("graddot")(make_config(get_method("graddot"), {"projection": "kron:0"}))


def test_an_added_config_field_at_its_default_keeps_the_committed_config_hashes():
    """graddot's projection and TRAK's projector were added after their records were made:
    those records' hashes still match."""
    import json
    from pathlib import Path

    from tdabench.checks import validate

    added = {"graddot": ("projection", "auto", "none"), "gradcos": ("projection", "auto", "none"),
             "tracin": ("projection", "auto", "none"), "trak": ("projector", "dense", "kron:4")}
    for name, (field, default, other) in added.items():
        committed_dir = Path(__file__).parents[1] / "results" / "chatterbot" / "tiny"
        records = sorted(committed_dir.glob(f"{name}-*.json"))
        if not records:
            pytest.skip("no committed records")
        committed = json.loads(records[0].read_text())
        resolved = validate("chatterbot", "tiny", None, name, committed["config"] | {field: default})
        assert resolved.config_hash == committed["config_hash"], name
        changed = validate("chatterbot", "tiny", None, name, {**committed["config"], field: other})
        assert changed.config_hash != committed["config_hash"]  # set away from its default, it counts


def test_linear_tracks_attention_too_and_changes_the_scores(micro, tmp_path):
    context = context_for(micro, tmp_path)
    model = gradients.reference_model(context).lm.model
    mlp = gradients.tracked_modules(model, context.spec.model, "mlp")
    linear = gradients.tracked_modules(model, context.spec.model, "linear")
    assert sorted(n.rsplit(".", 1)[1] for n in mlp) == ["down_proj", "gate_proj", "up_proj"]
    assert set(mlp) < set(linear) and any("self_attn.q_proj" in n for n in linear)
    assert not any("embed" in n or "lm_head" in n for n in linear)
    a = fitted("graddot", {}, context).score(context.data.targets)
    b = fitted("graddot", {"tracked": "linear"}, context).score(context.data.targets)
    assert not np.allclose(a, b)


def test_tracin_is_the_lr_weighted_sum_of_gradient_dots_at_each_epoch(micro, tmp_path):
    context = context_for(micro, tmp_path)
    ref, model, params, pool, targets = reference_and_encodings(context)
    assert len(ref.checkpoints) == context.spec.finetune.epochs == 2
    expected = 0
    for checkpoint in ref.checkpoints:
        gradients.load_checkpoint(model, checkpoint)
        expected = expected + ref.lr * (explicit_gradients(model, params, targets, mean_ce)
                                        @ explicit_gradients(model, params, pool, summed_ce).T).numpy()
    scores = fitted("tracin", {}, context).score(context.data.targets)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_reference_is_lm_finetune_on_the_whole_pool_with_the_epoch_checkpoints_of_that_run(
        micro, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    context = context_for(micro, tmp_path)
    spec, data = context.spec, context.data
    ref = gradients.reference_model(context)
    for epochs, checkpoint in [(1, ref.checkpoints[0]), (2, ref.checkpoints[1])]:
        base = lm.load_base_model(spec.model, data.warmup, data.pool)
        lm.finetune(base.model, lm.trainable_parameters(base.model, spec.model),
                    lm.encode(base.tokenizer, data.pool, spec.model),
                    replace(spec.finetune, epochs=epochs), seed=context.seed,
                    pad_id=base.tokenizer.pad_token_id)
        stored, state = load_file(checkpoint), base.model.state_dict()
        assert len(stored) >= len(list(base.model.parameters()))
        for name, tensor in stored.items():
            assert torch.equal(tensor, state[name]), (epochs, name)
    assert ref.lr == spec.finetune.lr and ref.path.parent.name == "reference"
    # cached: a second call loads it instead of fine-tuning again
    monkeypatch.setattr(gradients, "_build", lambda *a: pytest.fail("rebuilt a cached reference"))
    again = gradients.reference_model(context)
    assert again.checkpoints == ref.checkpoints
    for (n, p), q in zip(again.lm.model.named_parameters(), ref.lm.model.parameters()):
        assert torch.equal(p, q), n
    # another pool is another reference
    other = context_for(micro, tmp_path, pool=data.pool[:-1])
    assert gradients.reference_key(other, "x", 0) != gradients.reference_key(context, "x", 0)


# --- trak -----------------------------------------------------------------------------------

def margin_sum(logits, labels, mask):
    """TRAK's causal-LM output: summed log(p / (1 - p)) of the correct response tokens."""
    logp = logits.log_softmax(-1).gather(-1, labels[:, None])[:, 0][mask]
    return (logp - torch.log1p(-logp.exp())).sum()


def out_to_loss(model, encoded):
    """(N,) TRAK's Q of each pool example: mean over its response tokens of 1 - p(correct)."""
    q = []
    with torch.no_grad():
        for ex in encoded:
            logits, labels, mask = single(model, ex)
            q.append(1 - logits.softmax(-1).gather(-1, labels[:, None])[:, 0][mask].double().mean())
    return torch.stack(q)


def test_trak_without_projection_equals_the_explicit_trak_formula(micro, tmp_path):
    needs("trak")
    context = context_for(micro, tmp_path, d_ff=8)
    _, model, params, pool, targets = reference_and_encodings(context)
    P = sum(p.numel() for p in params)
    assert P == 768 > len(pool)
    damping = 0.05
    phi = explicit_gradients(model, params, pool, margin_sum) / P ** 0.5  # (N, P)
    phi_t = explicit_gradients(model, params, targets, margin_sum) / P ** 0.5
    lam = damping * phi.square().sum() / len(pool)
    expected = (phi_t @ torch.linalg.solve(phi.T @ phi + lam * torch.eye(P, dtype=phi.dtype), phi.T)
                * out_to_loss(model, pool)).numpy()

    config = {"proj_dim": 0, "damping": damping, "n_models": 1, "checkpoint": "pool"}
    scores = fitted("trak", config, context).score(context.data.targets)
    scale = (scores * expected).sum() / (expected * expected).sum()  # traker rescales (X^T X)^-1
    assert scale > 0
    np.testing.assert_allclose(scores / scale, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_trak_with_the_kronecker_projector_is_the_trak_formula_on_the_sketched_gradients(micro, tmp_path):
    """Issue 31: traker's CPU projector draws a P x k Gaussian per batch; ``projector=kron:K``
    sketches each layer's gradient instead (R_o^T G R_i), the rest of TRAK unchanged."""
    needs("trak")
    context = context_for(micro, tmp_path, d_ff=8)
    ref, model, params, pool, targets = reference_and_encodings(context)
    modules = gradients.tracked_modules(model, context.spec.model, "mlp")
    sketch = gradients.KroneckerProjection(modules, 3, seed=7)  # traker's model 0: seed + 0
    damping = 0.05
    phi = sketch.sketch_flat(explicit_gradients(model, params, pool, margin_sum).float()).double()
    phi_t = sketch.sketch_flat(explicit_gradients(model, params, targets, margin_sum).float()).double()
    k = phi.shape[1]
    assert k == len(modules) * 9
    lam = damping * phi.square().sum() / len(pool)
    expected = (phi_t @ torch.linalg.solve(phi.T @ phi + lam * torch.eye(k, dtype=phi.dtype), phi.T)
                * out_to_loss(model, pool)).numpy()
    config = {"projector": "kron:3", "projector_seed": 7, "damping": damping, "n_models": 1,
              "checkpoint": "pool"}
    scores = fitted("trak", config, context).score(context.data.targets)
    scale = (scores * expected).sum() / (expected * expected).sum()  # traker rescales (X^T X)^-1
    assert scale > 0
    np.testing.assert_allclose(scores / scale, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    with pytest.raises(ValueError, match="projector must be 'dense' or 'kron:K'"):
        get_method("trak")(make_config(get_method("trak"), {"projector": "sparse"}))


def test_trak_with_a_projection_much_wider_than_the_gradients_agrees_with_no_projection(micro, tmp_path):
    context = context_for(micro, tmp_path, d_ff=8)  # 768 tracked weights
    one = {"damping": 0.05, "n_models": 1, "checkpoint": "pool"}
    exact = fitted("trak", {"proj_dim": 0, **one}, context).score(context.data.targets)
    wide = fitted("trak", {"proj_dim": 4096, **one}, context).score(context.data.targets)
    narrow = fitted("trak", {"proj_dim": 16, **one}, context).score(context.data.targets)
    corr = [np.corrcoef(exact.ravel(), s.ravel())[0, 1] for s in (wide, narrow)]
    assert corr[0] > 0.995 and corr[0] > corr[1], corr


@pytest.mark.parametrize("proj_dim", [0, 16])
def test_trak_differentiating_a_batch_in_pieces_gives_the_same_scores(micro, tmp_path, monkeypatch,
                                                                      proj_dim):
    """A batch over the vmap memory budget is differentiated a few examples at a time and handed
    to the projector flattened: the scores are those of one vmap call per batch."""
    needs("trak")
    from tdabench.methods import trak

    context = context_for(micro, tmp_path, d_ff=8)
    config = {"proj_dim": proj_dim, "damping": 0.05, "n_models": 1, "checkpoint": "pool"}
    whole = fitted("trak", config, context).score(context.data.targets)
    monkeypatch.setattr(trak, "VMAP_BYTES", 1)  # one example per vmap call
    calls = []
    computer = trak.tracked_gradient_computer()
    plain = computer.__mro__[1].compute_per_sample_grad
    monkeypatch.setattr(computer.__mro__[1], "compute_per_sample_grad",
                        lambda self, batch: calls.append(len(batch[0])) or plain(self, batch))
    pieces = fitted("trak", config, context).score(context.data.targets)
    assert set(calls) == {1}
    # float32 sums in another order: ~1e-4 relative where the ridge solve amplifies it
    np.testing.assert_allclose(pieces, whole, rtol=1e-3, atol=2e-5 * np.abs(whole).max())


def test_trak_ensemble_of_m_models_is_tracers_mean_score_times_mean_out_to_loss(micro, tmp_path):
    """traker's finalize_scores over M model ids: (sum_i S_i / M) * (sum_i Q_i / M), S_i the
    single-model score before its Q weighting. Model i of an ensemble is the single model of seed
    context.seed + i (no projection here: traker draws each model id's projection apart)."""
    needs("trak")
    context = context_for(micro, tmp_path, d_ff=8)
    config, targets = {"proj_dim": 0, "damping": 0.05, "checkpoint": "pool"}, context.data.targets
    ensemble = fitted("trak", {**config, "n_models": 2}, context).score(targets)
    singles, qs = [], []
    for i in range(2):
        single_context = replace(context, seed=i, workdir=tmp_path / f"model{i}")
        singles.append(fitted("trak", {**config, "n_models": 1}, single_context).score(targets))
        ref = gradients.reference_model(context, seed=i)
        qs.append(out_to_loss(ref.lm.model, lm.encode(ref.lm.tokenizer, context.data.pool,
                                                      context.spec.model)).numpy())
    assert not np.allclose(singles[0], singles[1], rtol=1e-2) and not np.allclose(qs[0], qs[1])
    expected = np.mean([s / q for s, q in zip(singles, qs)], axis=0) * np.mean(qs, axis=0)
    np.testing.assert_allclose(ensemble, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # closer to traker's definition than to the mean of the single models' Q-weighted scores
    error = np.abs(ensemble - expected).max()
    assert error < 0.1 * np.abs(ensemble - np.mean(singles, axis=0)).max(), error


@pytest.mark.parametrize("config, words", [
    ({"checkpoint": "trajectory"}, "checkpoint must be one of"), ({"n_models": 0}, "n_models must be"),
    ({"checkpoint": "base", "n_models": 2}, "one base model")])
def test_trak_refuses_configs_without_a_model_ensemble(config, words):
    cls = get_method("trak")
    with pytest.raises(ValueError, match=words):
        cls(make_config(cls, {k: str(v) for k, v in config.items()}))


@pytest.mark.parametrize("name", ["graddot", "gradcos", "tracin", "less"])
def test_pool_features_over_the_memory_budget_are_made_on_disk_in_chunks_with_the_same_scores(
        micro, tmp_path, monkeypatch, name):
    from tdabench.method import innerproduct

    if name == "less":
        pytest.importorskip("peft")
    config = {"batch_size": 3}  # the micro pool (48) makes 16 chunks of one batch
    context = context_for(micro, tmp_path / "memory")
    in_memory = fitted(name, config, context).score(context.data.targets)
    monkeypatch.setattr(innerproduct, "MEMORY_BUDGET_BYTES", 0)
    monkeypatch.setattr(innerproduct, "CHUNK_BYTES", 1)  # rounds up to one batch
    context = context_for(micro, tmp_path / "disk")
    method = fitted(name, config, context)
    assert method.chunked and not method.pool_features and method._chunk_size() == 3
    batch_bytes = 3 * gradients.n_tracked(method.prepared.modules) * 4
    monkeypatch.setattr(innerproduct, "CHUNK_BYTES", int(2.5 * batch_bytes))
    assert method._chunk_size() == 6  # whole batches, rounded down
    monkeypatch.setattr(innerproduct, "CHUNK_BYTES", 1)
    files = list(method.files)
    assert all(f.stat().st_size == len(context.data.pool) * method.width * 4 for f in files)
    # float32 products in other shapes: BLAS may round them apart (1e-8 of 0.1 on an AMD EPYC)
    np.testing.assert_allclose(method.score(context.data.targets), in_memory, rtol=1e-5,
                               atol=1e-6 * np.abs(in_memory).max())
    del method
    gc.collect()
    assert not any(f.exists() for f in files)  # the scratch features go with the method


def test_pool_features_the_disk_cannot_hold_are_refused_after_the_first_chunk(micro, tmp_path,
                                                                            monkeypatch):
    from collections import namedtuple

    from tdabench.errors import DiskSpaceError
    from tdabench.method import innerproduct

    monkeypatch.setattr(innerproduct, "MEMORY_BUDGET_BYTES", 0)
    monkeypatch.setattr(innerproduct, "CHUNK_BYTES", 1)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(innerproduct.shutil, "disk_usage", lambda path: usage(100, 99, 1000))
    calls = []
    real = innerproduct.InnerProductMethod.train_rep
    monkeypatch.setattr(innerproduct.InnerProductMethod, "train_rep",
                        lambda self, *a: calls.append(1) or real(self, *a))
    words = r"need 3 MiB of scratch \(2 state\(s\) x 60 examples x .* 0 MiB free"
    with pytest.raises(DiskSpaceError, match=words):
        fitted("tracin", {"batch_size": 3}, context_for(micro, tmp_path))
    assert len(calls) == 1  # one chunk of one state was computed, not the pool


# --- where the gradients are taken -----------------------------------------------------------

def test_graddot_on_the_trajectory_is_tracin(micro, tmp_path):
    context = context_for(micro, tmp_path)
    tracin = fitted("tracin", {}, context).score(context.data.targets)
    graddot = fitted("graddot", {"checkpoint": "trajectory"}, context).score(context.data.targets)
    np.testing.assert_allclose(graddot, tracin, rtol=1e-6)
    final = fitted("tracin", {"checkpoint": "pool"}, context).score(context.data.targets)
    pool = fitted("graddot", {"checkpoint": "pool"}, context).score(context.data.targets)
    np.testing.assert_allclose(final, pool, rtol=1e-6)
    assert not np.allclose(final, tracin)


def test_checkpoints_base_half_and_subset_are_the_models_they_name(micro, tmp_path):
    context = context_for(micro, tmp_path)
    spec, pool = context.spec, context.data.pool
    base = lm.load_base_model(spec.model, context.data.warmup, pool).model
    prepared = {c: gradients.prepare(context, "mlp", c) for c in ("base", "pool", "half", "subset")}
    for (n, p), q in zip(base.named_parameters(), prepared["base"].lm.model.parameters()):
        assert torch.equal(p, q), n
    weights = {c: torch.cat([p.flatten() for p in v.lm.model.parameters()]) for c, v in prepared.items()}
    assert all(not torch.equal(weights[a], weights[b]) for a in weights for b in weights if a < b)
    half = gradients.training_part(pool, "half", spec.groundtruth.fraction, 0)
    subset = gradients.training_part(pool, "subset", spec.groundtruth.fraction, 0)
    assert len(half) == 30 and len(subset) == round(0.2 * 60) == 12
    assert {ex.id for ex in subset} < {ex.id for ex in pool}
    assert subset == gradients.training_part(pool, "subset", 0.2, 0)
    assert subset != gradients.training_part(pool, "subset", 0.2, 1)
    assert gradients.training_part(pool, "pool", 0.2, 0) is None
    ref = gradients.reference_model(context, 0, subset)  # what prepare(..., "subset") loaded
    assert read_json(ref.path / "reference.json")["n_pool"] == 12
    assert torch.equal(torch.cat([p.flatten() for p in ref.lm.model.parameters()]), weights["subset"])


@pytest.mark.parametrize("name", ["graddot", "ekfac", "logra", "repsim"])
def test_an_unknown_checkpoint_names_the_choices(name):
    cls = get_method(name)
    with pytest.raises(ValueError, match=r"checkpoint must be one of \['base', 'pool'"):
        cls(make_config(cls, {"checkpoint": "final"}))


# --- ekfac ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fisher_case(micro, tmp_path_factory):
    """A micro task with 300 pool examples and d_ff=4 (three MLP weights of 128 entries each, so
    each block's empirical Fisher has full rank), its explicit per-example gradients, and the
    kronfluence adapter's scores for a config."""
    needs("ekfac")
    task, spec, _ = micro
    data_spec = replace(spec.data, n_pool=300)
    spec = replace(spec, data=data_spec, model=replace(spec.model, d_ff=4))
    context = FitContext(spec, task.load(data_spec), tmp_path_factory.mktemp("fisher"))
    _, model, params, pool, targets = reference_and_encodings(context)
    g_pool = explicit_gradients(model, params, pool, summed_ce)
    g_targets = explicit_gradients(model, params, targets, mean_ce)
    blocks = np.cumsum([0] + [p.numel() for p in params])

    def scores(**config):
        return fitted("ekfac", {"empirical_fisher": True, **config}, context).score(context.data.targets)
    return g_pool, g_targets, [slice(a, b) for a, b in zip(blocks, blocks[1:])], scores


def test_ekfac_diagonal_strategy_equals_the_explicit_damped_diagonal_fisher_influence(fisher_case):
    g_pool, g_targets, _, scores = fisher_case
    damping = 1e-3
    expected = (g_targets / (g_pool.square().mean(0) + damping) @ g_pool.T).numpy()
    np.testing.assert_allclose(scores(strategy="diagonal", damping=damping), expected,
                               rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_ekfac_is_closest_to_the_explicit_damped_inverse_fisher_influence(fisher_case):
    """kronfluence's G is block-diagonal over modules: per weight, the empirical Fisher
    G = mean of g g^T over the pool; influence = g_target (G + damping)^-1 g_pool."""
    g_pool, g_targets, blocks, scores = fisher_case
    # EK-FAC approximates G: here its agreement grows with the damping (corr 0.49 at 1e-5, 0.91
    # at 1e-3; the blocks' mean eigenvalues are 2e-4 to 8e-4), so compare where it should be close
    damping = 1e-2
    expected = sum(g_targets[:, b] @ torch.linalg.solve(
        g_pool[:, b].T @ g_pool[:, b] / len(g_pool) + damping * torch.eye(b.stop - b.start,
                                                                           dtype=g_pool.dtype),
        g_pool[:, b].T) for b in blocks).numpy()
    corr = {strategy: np.corrcoef(expected.ravel(), scores(strategy=strategy, damping=damping).ravel())[0, 1]
            for strategy in ("ekfac", "kfac", "identity")}
    assert corr["ekfac"] > 0.99 and corr["ekfac"] > max(corr["kfac"], corr["identity"]), corr


# --- errors, registry, end to end -----------------------------------------------------------

@pytest.mark.parametrize("module, name, words", [
    ("trak", "trak", ["tdabench[trak]"]),
    ("kronfluence", "ekfac", ["tdabench[influence]", "pip install --no-deps kronfluence==1.0.1"]),
])
def test_a_missing_library_names_the_extra_to_install(micro, tmp_path, monkeypatch, module, name, words):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    cls = get_method(name)
    with pytest.raises(MissingDependency) as err:
        cls(make_config(cls, {})).fit(micro[2].pool, context_for(micro, tmp_path))
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("name", METHODS)
def test_bad_tracked_parameters_name_the_choices(name):
    cls = get_method(name)
    with pytest.raises(ValueError,
                       match=r"tracked must be one of \['mlp', 'linear', 'attention'\], not 'embed'"):
        cls(make_config(cls, {"tracked": "embed"}))


def test_scores_are_normalised_to_targets_by_pool_with_the_protocol_sign():
    native = np.arange(6.0).reshape(3, 2)  # traker's orientation: (n_train, n_targets) = (N, T)
    as_traker = gradients.to_scores(native, "NT", +1, 2, 3, "traker")
    np.testing.assert_array_equal(as_traker, native.T)
    assert as_traker.dtype == np.float64 and as_traker.flags.c_contiguous
    np.testing.assert_array_equal(gradients.to_scores(torch.tensor(native.T), "TN", +1, 2, 3, "kronfluence"),
                                  native.T)
    # a library whose positive score means "raises the loss" is flipped to the protocol's sign
    np.testing.assert_array_equal(gradients.to_scores(native.T, "TN", -1, 2, 3), -native.T)
    with pytest.raises(ValueError, match=r"kronfluence returned scores of shape \(3, 2\), expected \(2, 3\)"):
        gradients.to_scores(native, "TN", +1, 2, 3, "kronfluence")


def test_methods_are_found_through_entry_points():
    from tdabench.methods.graddot import GradCos, GradDot
    from tdabench.methods.tracin import TracIn

    assert get_method("graddot") is GradDot and get_method("gradcos") is GradCos
    assert get_method("tracin") is TracIn
    assert GradCos.Config().normalize and not GradDot.Config().normalize


def test_run_end_to_end(micro, tmp_path):
    record, _ = runner.run("gradcos", "micro", "micro", results_dir=tmp_path)
    m = record["metrics"]
    assert record["config"]["tracked"] == "mlp" and m["lds"]["n_targets"] == 12
    assert -1 <= m["lds"]["mean"] <= 1 and m["recall@10"]["value"] > m["recall@10"]["chance"]


def test_trak_keeps_of_later_models_only_the_weights_that_differ_from_the_first(micro, tmp_path):
    """With the top block trainable, models 1.. keep only the top block's and final norm's
    weights; the state traker loads for each is that model's whole state dict."""
    needs("trak")
    context = context_for(micro, tmp_path, d_ff=8)
    spec = replace(context.spec, model=replace(context.spec.model, trainable="top:1"))
    context = replace(context, spec=spec)
    method = fitted("trak", {"proj_dim": 0, "damping": 0.05, "n_models": 2, "checkpoint": "pool"},
                    context)
    first, second = method.states
    assert set(second) and set(second) < set(first)
    top = f"model.layers.{spec.model.n_layers - 1}."
    assert all(k.startswith((top, "model.norm.")) for k in second), sorted(second)
    assert "model.embed_tokens.weight" in first and "model.embed_tokens.weight" not in second
    expected = gradients.reference_model(context, seed=1).lm.model.state_dict()
    whole = method._state(1)
    assert set(whole) == set(expected)
    for k, v in expected.items():
        assert torch.equal(whole[k], v), k
