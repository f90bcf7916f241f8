"""The target LM: response-only loss, determinism, gradient accumulation, the pretrained loading path."""

from __future__ import annotations

import numpy as np
import pytest
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


def _grads(model, params, batch, micro_batch):
    for p in params:
        p.grad = None
    lm.accumulate_gradients(model, batch, micro_batch)
    return [p.grad.clone() for p in params]


def test_gradient_accumulation_over_2x8_equals_one_batch_of_16(micro):
    """Micro batches add up to the whole batch's gradient (its mean over all response tokens,
    not a mean of the pieces' means), so an accumulated step is the step of batch 16."""
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    pad = tlm.tokenizer.pad_token_id
    encoded = lm.encode(tlm.tokenizer, data.pool[:16], spec.model)
    batch = lm.collate(encoded, pad)
    # the pieces have different token counts, so a mean of the two means would differ
    counts = (batch["labels"][:, 1:] != lm.IGNORE).sum(1)
    assert counts[:8].sum() != counts[8:].sum()
    params = lm.trainable_parameters(tlm.model, spec.model)
    lm.prepare_training(tlm.model, params, spec.finetune)
    whole, pieces = _grads(tlm.model, params, batch, 0), _grads(tlm.model, params, batch, 8)
    for a, b in zip(whole, pieces):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # the naive mean of the two micro-batch means is measurably another gradient
    for p in params:
        p.grad = None
    for rows in (slice(0, 8), slice(8, 16)):
        losses, _ = lm.token_losses(tlm.model, lm._rows(batch, rows))
        (losses.mean() / 2).backward()
    assert max((p.grad - a).abs().max().item() for p, a in zip(params, whole)) > 1e-6

    # and whole fine-tunes agree: micro_batch=8 with the recipe's batch of 16
    start = {k: v.clone() for k, v in tlm.model.state_dict().items()}
    runs = []
    for micro_batch in (0, 8):
        tlm.model.load_state_dict(start)
        lm.finetune(tlm.model, params, encoded, spec.finetune, seed=2, pad_id=pad, micro_batch=micro_batch)
        runs.append(lm.response_losses(tlm.model, encoded, pad))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)
    assert not np.array_equal(runs[0], lm.response_losses(lm.load_base_model(
        spec.model, data.warmup, data.pool).model, encoded, pad))  # it did train
    tlm.model.load_state_dict(start)


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_step(micro, monkeypatch):
    """A CUDA out-of-memory error on a batch of more than 4 examples: the step is redone in
    pieces of 4 (16 -> 8 -> 4), its gradient that of the whole batch, and the size is kept."""
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    pad = tlm.tokenizer.pad_token_id
    batch = lm.collate(lm.encode(tlm.tokenizer, data.pool[:16], spec.model), pad)
    params = lm.trainable_parameters(tlm.model, spec.model)
    optimizer = lm.prepare_training(tlm.model, params, spec.finetune)
    whole = _grads(tlm.model, params, batch, 0)
    real = lm.token_losses

    def small_only(model, b):
        if len(b["input_ids"]) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, b)

    monkeypatch.setattr(lm, "token_losses", small_only)
    monkeypatch.setattr(optimizer, "step", lambda: None)  # keep the weights: compare gradients
    assert lm.train_step(tlm.model, params, optimizer, batch, grad_clip=None) == 4
    for p, a in zip(params, whole):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)
    one = lm._rows(batch, slice(0, 1))
    monkeypatch.setattr(lm, "token_losses", lambda m, b: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")))
    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing left to halve
        lm.train_step(tlm.model, params, optimizer, one, grad_clip=None)


def test_after_epoch_sees_each_epochs_final_weights(micro):
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    pad = tlm.tokenizer.pad_token_id
    encoded = lm.encode(tlm.tokenizer, data.pool[:20], spec.model)  # 2 steps per epoch of 16
    params = lm.trainable_parameters(tlm.model, spec.model)
    seen = []
    lm.finetune(tlm.model, params, encoded, spec.finetune, seed=0, pad_id=pad,
                after_epoch=lambda e: seen.append((e, params[0].detach().clone())))
    assert [e for e, _ in seen] == list(range(1, spec.finetune.epochs + 1))
    torch.testing.assert_close(seen[-1][1], params[0].detach(), rtol=0, atol=0)
    assert not torch.equal(seen[0][1], seen[-1][1])


def test_length_batches_sort_by_length_stably():
    lengths = [5, 1, 3, 1, 5, 2]
    assert lm.length_batches(lengths, 4) == [[1, 3, 5, 2], [0, 4]]
    # what AirRep's encoder batching did before (numpy's stable argsort)
    order = np.argsort(lengths, kind="stable")
    assert sum(lm.length_batches(lengths, 2), []) == order.tolist()
