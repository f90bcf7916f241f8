"""Shared fixtures: a private cache, one torch thread, and a micro task for fast end-to-end tests."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test session gets its own cache, so tests never reuse a user's artefacts."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TDABENCH_CACHE")
    os.environ["TDABENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TDABENCH_CACHE", None)
    else:
        os.environ["TDABENCH_CACHE"] = old


def micro_task():
    """chatterbot's data at a size that builds a bank in seconds: 60 pool, 12 targets,
    120 warm-up examples, a 1-layer d=32 Llama, 6 subsets of 20% x 2 seeds."""
    from tdabench.spec import DataSpec, GroundTruthSpec, ModelSpec
    from tdabench.task import Task
    from tdabench.tasks import chatterbot

    def load(spec: DataSpec):
        data = chatterbot.load(spec)
        return replace(data, warmup=data.warmup[:120])

    spec = replace(
        chatterbot.TINY, task="micro", preset="micro",
        data=DataSpec(n_pool=60, n_targets=12, seed=0),
        model=ModelSpec(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=512,
                        max_prompt_tokens=16, max_response_tokens=16, warmup_epochs=1),
        groundtruth=GroundTruthSpec(n_subsets=6, fraction=0.2, n_seeds=2, seed=0))
    return Task(name="micro", description="test-sized chatterbot", presets={"micro": spec},
                load=load)


@pytest.fixture(scope="session")
def micro():
    from tdabench.registry import register_task

    task = micro_task()
    register_task(task)
    spec = task.spec("micro")
    return task, spec, task.load(spec.data)
