"""The README's main job on the real tiny preset: 100 subsets x 2 seeds, random and embedding (slow)."""

from __future__ import annotations

import pytest

from tdabench import runner


@pytest.mark.slow
def test_tiny_chatterbot_random_is_null_and_embedding_finds_topics(tmp_path):
    rand, _ = runner.run("random", "chatterbot", "tiny", workers=2, results_dir=tmp_path)
    emb, _ = runner.run("embedding", "chatterbot", "tiny", workers=2, results_dir=tmp_path)
    assert rand["spec_hash"] == emb["spec_hash"]  # the same bank served both
    assert rand["metrics"]["lds"]["n_subsets"] == 80  # the test part; 20 subsets are for tuning
    assert rand["bank"]["noise_ceiling"]["ceiling"] > 0.5  # the preset discriminates
    low, high = rand["metrics"]["lds"]["ci95"]
    assert abs(rand["metrics"]["lds"]["mean"]) < 0.05 and high - low < 0.1
    recall = emb["metrics"]["recall@10"]
    assert recall["value"] > 2 * recall["chance"]
    assert emb["metrics"]["lds"]["ci95"][0] > 0.03  # a weak but real signal
