"""The target LM: response-only loss, determinism, the pretrained loading path."""

from __future__ import annotations

import numpy as np
import torch

from tdabench import lm


def test_response_losses_match_transformers_own_loss(micro):
    """Our head-at-response-positions loss equals the model's own labels loss per example."""
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    encoded = lm.encode(tlm.tokenizer, data.targets, spec.model)
    ours = lm.response_losses(tlm.model, encoded, tlm.tokenizer.pad_token_id, batch_size=5)
    for i, e in enumerate(encoded):
        batch = lm.collate([e], tlm.tokenizer.pad_token_id)
        with torch.no_grad():
            ref = tlm.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
        assert abs(ours[i] - ref) < 1e-5
    # the prompt carries no loss: only response tokens (and the end token) are labelled
    batch = lm.collate(encoded[:1], tlm.tokenizer.pad_token_id)
    assert (batch["labels"][0, : encoded[0].n_prompt] == lm.IGNORE).all()


def test_finetune_is_deterministic_and_lowers_the_training_loss(micro):
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    pad = tlm.tokenizer.pad_token_id
    pool = lm.encode(tlm.tokenizer, data.pool[:20], spec.model)
    start = {k: v.clone() for k, v in tlm.model.state_dict().items()}
    before = lm.response_losses(tlm.model, pool, pad).mean()
    runs = []
    for _ in range(2):
        tlm.model.load_state_dict(start)
        lm.finetune(tlm.model, lm.trainable_parameters(tlm.model, spec.model), pool,
                    spec.finetune, seed=3, pad_id=pad)
        runs.append(lm.response_losses(tlm.model, pool, pad))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].mean() < before
    tlm.model.load_state_dict(start)


def test_pretrained_path_loads_a_local_model(micro, tmp_path):
    """init='pretrained' takes a transformers directory (here: a saved tiny model)."""
    from dataclasses import replace

    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    tlm.model.save_pretrained(tmp_path)
    tlm.tokenizer.save_pretrained(tmp_path)
    pre = lm.load_base_model(replace(spec.model, init="pretrained", name=str(tmp_path)), [], [])
    encoded = lm.encode(pre.tokenizer, data.targets, spec.model)
    np.testing.assert_allclose(
        lm.response_losses(pre.model, encoded, pre.tokenizer.pad_token_id),
        lm.response_losses(tlm.model, encoded, tlm.tokenizer.pad_token_id), rtol=1e-6)
    assert len(pre.fingerprint) == 16


def test_top_k_trainable_selects_the_last_blocks(micro):
    from dataclasses import replace

    _, spec, data = micro
    model = lm.load_base_model(spec.model, data.warmup, data.pool).model
    top = lm.trainable_parameters(model, replace(spec.model, trainable="top:1"))
    expected = list(model.base_model.layers[-1].parameters()) + list(model.base_model.norm.parameters())
    assert [id(p) for p in top] == [id(p) for p in expected]


def test_cached_frozen_blocks_give_the_same_losses_and_fine_tune(micro):
    """Partial fine-tuning with the frozen blocks' output cached once equals running them."""
    from dataclasses import replace

    _, spec, data = micro
    model_spec = replace(spec.model, n_layers=2, trainable="top:1")
    tlm = lm.load_base_model(model_spec, data.warmup, data.pool)
    pad = tlm.tokenizer.pad_token_id
    assert lm.frozen_blocks(tlm.model, model_spec) == 1
    plain = lm.encode(tlm.tokenizer, data.targets, model_spec)
    cached = lm.cache_frozen(tlm.model, model_spec, plain, pad)
    assert all(e.hidden is not None and e.layer == 1 for e in cached)
    np.testing.assert_allclose(lm.response_losses(tlm.model, cached, pad),
                               lm.response_losses(tlm.model, plain, pad), rtol=1e-5)
    start = {k: v.clone() for k, v in tlm.model.state_dict().items()}
    params = lm.trainable_parameters(tlm.model, model_spec)
    lm.finetune(tlm.model, params, plain, spec.finetune, seed=1, pad_id=pad)
    after_plain = lm.response_losses(tlm.model, plain, pad)
    tlm.model.load_state_dict(start)
    lm.finetune(tlm.model, params, cached, spec.finetune, seed=1, pad_id=pad)
    np.testing.assert_allclose(lm.response_losses(tlm.model, cached, pad), after_plain, rtol=1e-4)
    full = replace(model_spec, trainable="all")  # nothing frozen: nothing cached
    assert lm.cache_frozen(tlm.model, full, plain, pad)[0].hidden is None
