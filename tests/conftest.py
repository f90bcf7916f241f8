"""Shared fixtures: a private cache, one torch thread, and a micro task for fast end-to-end tests."""

from __future__ import annotations

import os

import pytest
import torch

from tdabench import selftest

torch.set_num_threads(1)


def micro_task():
    """The micro task of the tests (also imported by tests' subprocess scripts): chatterbot's
    data at micro size (:func:`tdabench.selftest.micro_task`)."""
    from tdabench.registry import get_task

    return selftest.micro_task(get_task("chatterbot"))


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


@pytest.fixture(scope="session")
def micro():
    from tdabench.registry import register_task

    task = micro_task()
    register_task(task)
    spec = task.spec("micro")
    return task, spec, task.load(spec.data)
