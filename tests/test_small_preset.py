"""The small preset: SmolLM2-135M-Instruct loaded offline from its GGUF wheel, partly fine-tuned."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tdabench import checks, lm, presets
from tdabench.groundtruth import build_bank
from tdabench.registry import get_task
from tdabench.spec import DataSpec, GroundTruthSpec, spec_hash
from tdabench.tasks import chatterbot

OFFLINE_TASKS = ("chatterbot", "bigbench", "evalschat", "trivia")


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_every_offline_task_has_a_small_tier_on_the_tiny_tiers_data(name):
    task = get_task(name)
    tiny, small = task.spec("tiny"), task.spec("small")
    assert small.preset == "small" and small.model == presets.SMALL_MODEL
    assert (small.model.init, small.model.trainable) == ("gguf", "top:2")
    # the cut measured on these tasks' pools and targets (README, presets): 64 tokens each
    assert (small.model.max_prompt_tokens, small.model.max_response_tokens) == (64, 64)
    assert (small.groundtruth.n_subsets, small.groundtruth.n_seeds) == (100, 2)  # the protocol
    # same pool and targets as tiny: the tiers' rankings are compared on the same targets
    assert small.data == tiny.data and spec_hash(small) != spec_hash(tiny)
    assert checks.validate(name, "small", evaluates=True).warnings == []


def test_a_system_prompt_replaces_the_templates_default(micro):
    _, spec, data = micro
    tok = lm.load_base_model(spec.model, data.warmup, data.pool).tokenizer
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    ex = data.targets[0]
    default = lm.encode(tok, [ex], spec.model)[0]
    empty = lm.encode(tok, [ex], replace(spec.model, system_prompt=""))[0]
    assert "[system]" not in tok.decode(list(default.ids[: default.n_prompt]))
    assert tok.decode(list(empty.ids[: empty.n_prompt])).startswith("[system][user]")


@pytest.mark.slow
def test_smollm2_loads_offline_and_builds_a_few_subsets(tmp_path):
    spec = replace(chatterbot.SMALL, data=DataSpec(n_pool=40, n_targets=6, seed=0),
                   groundtruth=GroundTruthSpec(n_subsets=2, fraction=0.25))
    data = chatterbot.load(spec.data)
    target = lm.load_base_model(spec.model, data.warmup, data.pool)
    assert type(target.model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in target.model.parameters()) == 134_515_008
    trainable = lm.trainable_parameters(target.model, spec.model)
    assert sum(p.numel() for p in trainable) < 8_000_000  # top 2 blocks + final norm
    encoded = lm.encode(target.tokenizer, data.targets, spec.model)
    before = lm.response_losses(target.model, encoded, target.tokenizer.pad_token_id)
    assert 0.5 < before.mean() < 8  # a real pretrained LM, not random weights (ln 49152 = 10.8)
    bank = build_bank(spec, data, tmp_path)
    assert bank.complete and bank.losses.shape == (2, 1, 6)
    assert not np.allclose(bank.losses[0, 0], before)  # fine-tuning changed the losses
