"""The chatterbot task: fetched by hash, deduplicated, split without overlap."""

from __future__ import annotations

from collections import Counter

import pytest

from tdabench import data as tdata
from tdabench.tasks import chatterbot


@pytest.fixture(scope="module")
def pairs():
    wheel = tdata.fetch_package_archive(chatterbot.PACKAGE, chatterbot.VERSION, chatterbot.WHEEL,
                                        chatterbot.WHEEL_SHA256)
    return chatterbot.read_pairs(wheel)


def test_pairs_are_deduplicated_with_21_topics(pairs):
    assert len(pairs) == 1171
    assert len({(p.prompt, p.response) for p in pairs}) == len(pairs)
    assert len({p.source for p in pairs}) == 21
    assert all(len(p.prompt) > 1 and len(p.response) > 1 for p in pairs)


def test_tiny_split_is_disjoint_balanced_and_seeded(pairs):
    split = chatterbot.split(pairs, chatterbot.TINY.data)
    assert (len(split.pool), len(split.targets), len(split.warmup)) == (800, 100, 271)
    ids = [e.id for e in split.pool + split.targets + split.warmup]
    assert len(set(ids)) == len(ids) == 1171
    per_topic = Counter(e.source for e in split.targets)
    assert len(per_topic) == 21 and min(per_topic.values()) >= 2  # round-robin over topics
    assert chatterbot.split(pairs, chatterbot.TINY.data) != chatterbot.split(
        pairs, chatterbot.DataSpec(800, 100, seed=1))  # the seed matters


def test_the_tiny_split_is_the_one_every_bank_and_record_was_built_on(pairs):
    """chatterbot's split is data.balanced_split (targets from the back of each topic, pool
    unbalanced): the same examples, in the same order, as the banks' manifests record."""
    split = chatterbot.split(pairs, chatterbot.TINY.data)
    assert tdata.examples_fingerprint(split.pool).startswith("6674ab9b3b94599c")
    assert tdata.examples_fingerprint(split.targets).startswith("8597a4e774e26615")
    assert tdata.examples_fingerprint(split.warmup).startswith("407bbf6aaf95f154")


def test_a_substituted_archive_is_refused(private_cache):
    path = private_cache / "downloads" / "fake.whl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not the real wheel")
    with pytest.raises(tdata.DataError, match="expected"):
        tdata.fetch_package_archive("chatterbot-corpus", "1.3.3", "fake.whl", "0" * 64)
