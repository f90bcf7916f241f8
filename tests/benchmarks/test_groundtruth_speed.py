"""Ground-truth throughput: the worker's fine-tuning loop against the bare training steps.

One subset, as a ground-truth worker runs it (``building.Trainer.train``: reload the base
weights, fine-tune on the subset, the loss of every target, write it), is timed against the
raw training steps on the same batches (forward, backward, clipping and the AdamW step, from
the same starting weights: the fine-tuned weights then give bit-identical target losses, which
the test checks). The subset is then run again part by part (reload the base weights, collate,
raw steps, evaluate the targets) and overhead = 1 - raw / (sum of the parts), so that both sides
come from the same pass on a machine whose load varies.
The worker's one-off start (load the model, tokenise pool and targets, cache the frozen
blocks' output) is reported apart and
amortised over the 50 subsets each of 2 workers builds for a 100-subset bank.

Presets (chatterbot): ``tiny`` in full; ``small`` (SmolLM2-135M, top 2 blocks trained) on a
reduced pool of 320 (subsets of 32: 4 steps) and 24 targets, as the worker runs it (the frozen
bottom blocks' output cached once at its start, ``lm.cache_frozen``) and without that cache.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tdabench import lm, seeds
from tdabench.groundtruth.bank import loss_path, sample_subsets
from tdabench.groundtruth.building import BankJob
from tdabench.groundtruth.building import Trainer as Worker
from tdabench.runner import load_task

SUBSETS_PER_WORKER = 50  # a 100-subset bank on 2 workers
SIZES = {  # preset -> (spec overrides, subsets timed) at full and smoke sizes
    ("tiny", True): ({}, 3),
    ("tiny", False): ({}, 1),
    ("small", True): ({"data.n_pool": "320", "data.n_targets": "24"}, 1),
    ("small", False): ({"data.n_pool": "40", "data.n_targets": "6", "groundtruth.fraction": "0.25"}, 1),
}


class Trainer:
    """A ground-truth worker's state for one preset, built by ``building.Trainer.load``."""

    def __init__(self, preset: str, full: bool, bank: Path) -> None:
        overrides, self.n_subsets = SIZES[(preset, full)]
        _, self.spec, data = load_task("chatterbot", preset, overrides)
        self.membership = sample_subsets(data, self.spec)
        (bank / "losses").mkdir(parents=True)
        self.bank = bank
        lm.load_base_model(self.spec.model, data.warmup, data.pool)  # built once per cache, not timed
        start = time.perf_counter()
        self.state = Worker.load(data, [BankJob(self.spec, bank, self.membership, data.targets)])
        self.init_s = time.perf_counter() - start
        self.n_examples = len(data.pool) + len(data.targets)

    @property
    def model(self) -> torch.nn.Module:
        return self.state.lm.model

    @property
    def pad(self) -> int:
        return self.state.lm.tokenizer.pad_token_id

    def members(self, m: int) -> list[int]:
        return np.flatnonzero(self.membership[m]).tolist()

    def drop_frozen_cache(self) -> None:
        """Run every block again in each forward pass, as before the worker cached the frozen
        blocks' output (``lm.cache_frozen`` in ``building.Trainer.load``)."""
        job = self.state.banks[0]
        self.state.pool = [lm.Encoded(e.ids, e.n_prompt) for e in self.state.pool]
        self.state.banks[0] = replace(job, targets=[lm.Encoded(e.ids, e.n_prompt) for e in job.targets])

    def subset(self, m: int) -> float:
        """Seconds for one subset, exactly as the worker runs it."""
        start = time.perf_counter()
        self.state.train((0, m, 0))
        return time.perf_counter() - start

    def parts(self, m: int) -> dict[str, float]:
        """The same subset again, part by part: reload, collation, raw steps, evaluation."""
        model, spec, pad = self.model, self.spec, self.pad
        out: dict[str, float] = {}
        start = time.perf_counter()
        model.load_state_dict(self.state.initial_state, strict=False)  # the trained weights
        out["reload_s"] = time.perf_counter() - start
        seed = seeds.training_seed(spec, m, 0)
        start = time.perf_counter()
        batches = list(lm.training_batches([self.state.pool[i] for i in self.members(m)],
                                           spec.finetune, seed, pad))
        out["collate_s"] = time.perf_counter() - start
        params = lm.trainable_parameters(model, spec.model)
        optimizer = lm.prepare_training(model, params, spec.finetune)
        torch.manual_seed(seed)
        start = time.perf_counter()
        for batch in batches:
            lm.train_step(model, params, optimizer, batch, spec.finetune.grad_clip)
        out["raw_s"] = time.perf_counter() - start
        model.eval()
        start = time.perf_counter()
        losses = lm.response_losses(model, self.state.banks[0].targets, pad)
        out["eval_s"] = time.perf_counter() - start
        written = np.load(loss_path(self.bank, m, 0))
        np.testing.assert_array_equal(losses, written)  # same batches, same fine-tune, bit for bit
        out["tokens"] = float(sum(int(b["attention_mask"].sum()) for b in batches))
        out["steps"] = float(len(batches))
        return out


def _report(perf: Any, key: str, trainer: Trainer, subset_s: list[float], parts: list[dict[str, float]],
            one_off_s: float, note: str) -> float:
    """Summarise the timed subsets; returns the overhead fraction."""
    mean = {k: float(np.mean([p[k] for p in parts])) for k in parts[0]}
    subset = float(np.mean(subset_s))
    total = sum(mean[k] for k in ("reload_s", "collate_s", "raw_s", "eval_s"))
    overhead = 1 - mean["raw_s"] / total
    amortised = one_off_s / SUBSETS_PER_WORKER
    values = {"subset_s": subset, **mean, "parts_s": total, "overhead": overhead,
              "worker_start_s": one_off_s, "worker_start_per_subset_s": amortised,
              "subsets_timed": len(subset_s), "tokens_per_s": mean["tokens"] / subset,
              "raw_tokens_per_s": mean["tokens"] / mean["raw_s"], "n_pool_and_targets": trainer.n_examples,
              "note": note}
    perf.add("groundtruth", key,
             f"{key}: {subset:.2f} s/subset as the worker runs it ({values['tokens_per_s']:,.0f} train "
             f"tok/s); raw steps {mean['raw_s']:.2f} s ({values['raw_tokens_per_s']:,.0f} tok/s); overhead "
             f"{overhead:.1%} of {total:.2f} s (reload {mean['reload_s'] / total:.1%}, collate "
             f"{mean['collate_s'] / total:.1%}, eval {mean['eval_s'] / total:.1%}) [target < 15%]; worker "
             f"start {one_off_s:.1f} s = {amortised:.2f} s/subset over {SUBSETS_PER_WORKER}; {note}",
             **values)
    return overhead


def _time_subsets(benchmark: Any, trainer: Trainer, first: int) -> tuple[list[float], list[dict[str, float]]]:
    subsets = iter(range(first, first + trainer.n_subsets))
    times: dict[int, float] = {}

    def run(m: int) -> None:
        times[m] = trainer.subset(m)

    benchmark.pedantic(run, setup=lambda: ((next(subsets),), {}), rounds=trainer.n_subsets)
    return list(times.values()), [trainer.parts(m) for m in times]


@pytest.fixture(scope="module")
def small(perf, tmp_path_factory) -> Trainer:
    return Trainer("small", perf.full, tmp_path_factory.mktemp("bank-small"))


@pytest.mark.benchmark(group="ground truth: one subset")
def test_tiny_subset(benchmark, perf, tmp_path):
    trainer = Trainer("tiny", perf.full, tmp_path / "bank")
    subset_s, parts = _time_subsets(benchmark, trainer, 0)
    overhead = _report(perf, "chatterbot/tiny", trainer, subset_s, parts, trainer.init_s,
                       f"800 pool, 100 targets, subsets of {len(trainer.members(0))}")
    assert 0 < overhead < 1


@pytest.mark.slow
@pytest.mark.benchmark(group="ground truth: one subset")
def test_small_subset_as_the_worker_runs_it(benchmark, perf, small):
    """The worker caches the 28 frozen blocks' output for pool and targets once (its start-up)."""
    subset_s, parts = _time_subsets(benchmark, small, 0)
    _report(perf, "chatterbot/small", small, subset_s, parts, small.init_s,
            f"reduced: {small.n_examples - len(small.state.banks[0].targets)} pool, "
            f"{len(small.state.banks[0].targets)} targets, subsets of {len(small.members(0))}; "
            "frozen-block output cached at worker start (included in its start-up)")


@pytest.mark.slow
@pytest.mark.benchmark(group="ground truth: one subset")
def test_small_subset_without_the_frozen_block_cache(benchmark, perf, small):
    """The same subsets running all 30 blocks in every forward pass (the worker before the
    cache); their losses must be those of the cached fine-tunes, which wrote them first."""
    files = {m: loss_path(small.bank, m, 0) for m in range(small.n_subsets)}
    cached = {m: np.load(f) for m, f in files.items() if f.exists()}
    small.drop_frozen_cache()
    subset_s, parts = _time_subsets(benchmark, small, 0)
    for m, losses in cached.items():
        np.testing.assert_allclose(np.load(files[m]), losses, rtol=1e-5)
    _report(perf, "chatterbot/small uncached", small, subset_s, parts, small.init_s,
            "reduced as above; full forward through the 28 frozen blocks")
