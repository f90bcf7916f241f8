"""Spec hashing and overrides; atomic files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tdabench import store
from tdabench.spec import PAPER_MODEL, PAPER_RECIPE, TaskSpec, override, spec_differences, spec_hash
from tdabench.tasks.chatterbot import TINY


def test_spec_round_trips_and_hash_is_stable():
    d = json.loads(json.dumps(TINY.to_dict()))
    assert TaskSpec.from_dict(d) == TINY
    assert spec_hash(TaskSpec.from_dict(d)) == spec_hash(TINY)
    assert spec_hash(override(TINY, {"finetune.lr": "0.002"})) != spec_hash(TINY)


def test_override_parses_values_and_rejects_unknown_fields():
    spec = override(TINY, {"groundtruth.n_subsets": "64", "groundtruth.fraction": "0.2"})
    assert spec.groundtruth.n_subsets == 64 and spec.groundtruth.fraction == 0.2
    with pytest.raises(KeyError, match="valid fields here"):
        override(TINY, {"groundtruth.n_subset": "64"})
    with pytest.raises(KeyError, match="valid sections"):
        override(TINY, {"nothing.n": "1"})


def test_spec_differences_names_the_fields():
    other = override(TINY, {"finetune.lr": "0.01", "data.n_pool": "700"})
    diffs = spec_differences(TINY.to_dict(), other.to_dict())
    assert diffs == ["data.n_pool: 800 -> 700", "finetune.lr: 0.001 -> 0.01"]


def test_the_paper_recipe_is_expressible():
    paper = replace(TINY, preset="paper", model=PAPER_MODEL, finetune=PAPER_RECIPE)
    assert paper.model.name == "Qwen/Qwen2.5-0.5B" and paper.model.dtype == "bfloat16"
    assert (paper.finetune.lr, paper.finetune.batch_size, paper.finetune.epochs) == (2e-5, 16, 2)
    assert TaskSpec.from_dict(paper.to_dict()) == paper


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.json"
    store.atomic_write_json(target, {"x": 1})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.atomic_write_json(target, {"x": Unserialisable()})
    assert store.read_json(target) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind
    store.atomic_write_npy(tmp_path / "b.npy", np.arange(3.0))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.arange(3.0))
