"""Spec hashing and overrides; atomic files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tdabench import spec as spec_module
from tdabench import store
from tdabench.errors import ConfigError
from tdabench.spec import (
    TaskSpec,
    override,
    setup_hash,
    spec_differences,
    spec_hash,
)
from tdabench.tasks.chatterbot import TINY
from tdabench.tasks.paper import PAPER_MODEL, PAPER_RECIPE


def test_spec_round_trips_and_hash_is_stable():
    d = json.loads(json.dumps(TINY.to_dict()))
    assert TaskSpec.from_dict(d) == TINY
    assert spec_hash(TaskSpec.from_dict(d)) == spec_hash(TINY)
    assert spec_hash(override(TINY, {"finetune.lr": "0.002"})) != spec_hash(TINY)
    # ground-truth version 1 hashes as before versions existed: the cached banks and the
    # committed records (results/chatterbot/tiny/*.json carry this hash) stay valid
    assert spec_hash(TINY) == "5d3595b32e35ab7a" and setup_hash(TINY) == "24d5a085a836715c"


def test_a_new_groundtruth_version_changes_every_hash(monkeypatch):
    before = spec_hash(TINY), setup_hash(TINY)
    monkeypatch.setattr(spec_module, "GROUNDTRUTH_VERSION", 2)
    assert spec_hash(TINY) != before[0] and setup_hash(TINY) != before[1]


def test_override_parses_values_and_rejects_unknown_fields():
    spec = override(TINY, {"groundtruth.n_subsets": "64", "groundtruth.fraction": "0.2"})
    assert spec.groundtruth.n_subsets == 64 and spec.groundtruth.fraction == 0.2
    with pytest.raises(ConfigError, match="valid fields here"):
        override(TINY, {"groundtruth.n_subset": "64"})
    with pytest.raises(ConfigError, match="valid sections"):
        override(TINY, {"nothing.n": "1"})


@pytest.mark.parametrize("field, value, message", [
    ("groundtruth.n_subsets", "abc", "groundtruth.n_subsets must be int >= 1, not 'abc'"),
    ("groundtruth.n_subsets", "-5", "groundtruth.n_subsets must be int >= 1, not '-5'"),
    ("groundtruth.n_subsets", "2.5", "groundtruth.n_subsets must be int >= 1, not '2.5'"),
    ("groundtruth.fraction", "1.5", "groundtruth.fraction must be float > 0 and < 1, not '1.5'"),
    ("groundtruth.source", "mine", "groundtruth.source must be one of ['finetune', 'published'], not 'mine'"),
    ("finetune.lr", "fast", "finetune.lr must be float > 0, not 'fast'"),
    ("model.init", "random", "model.init must be one of ['scratch', 'pretrained', 'gguf']"),
])
def test_spec_values_are_typed_and_ranged(field, value, message):
    with pytest.raises(ConfigError) as err:
        override(TINY, {field: value})
    assert str(err.value).startswith(message), str(err.value)


def test_typed_spec_values_are_parsed_to_their_types():
    spec = override(TINY, {"finetune.lr": "1", "model.system_prompt": "none",
                           "data.options.x": "[1, 2]", "groundtruth.n_seeds": "3"})
    assert spec.finetune.lr == 1.0 and isinstance(spec.finetune.lr, float)
    assert spec.model.system_prompt is None and spec.data.options == {"x": [1, 2]}
    assert spec.groundtruth.n_seeds == 3


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


def test_files_and_directories_are_readable_by_others(tmp_path):
    """A shared cache: 0644 files and 0755 directories under the usual umask, not 0600/0700."""
    import os

    old = os.umask(0o022)
    try:
        store._umask.cache_clear()
        store.atomic_write_json(tmp_path / "a.json", {"x": 1})
        with store.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
        store._umask.cache_clear()
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_leaves_nothing_when_the_block_fails_and_keeps_a_first_copy(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with store.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # no temporary directory, no target
    for text in ("first", "second"):  # two processes building the same thing
        with store.atomic_dir(tmp_path / "model") as tmp:
            (tmp / "weights").write_text(text)
    assert (tmp_path / "model" / "weights").read_text() == "first"
    with store.atomic_dir(tmp_path / "model", overwrite=True) as tmp:
        (tmp / "weights").write_text("third")
    assert (tmp_path / "model" / "weights").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
