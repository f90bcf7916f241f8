"""The evalschat task: parsing the evals registry data of a wheel, the cached extraction and the
balanced split (on small wheels written here), the pinned wheel's verification, and the real wheel."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from dataclasses import replace

import pytest

from tdabench import data as tdata
from tdabench.tasks import evalschat

DATA = "evals/registry/data/"


def msg(role: str, content) -> dict:
    return {"role": role, "content": content}


def chat(user: str, ideal, system: str | None = "You are a careful assistant.") -> dict:
    return {"input": ([msg("system", system)] if system else []) + [msg("user", user)], "ideal": ideal}


def rows(source: str, n: int, start: int = 0) -> list[dict]:
    return [chat(f"{source} prompt {i}", f"ideal {i}") for i in range(start, start + n)]


def write_wheel(path, files: dict[str, list | str]):
    """A zip holding ``files`` (name -> rows as JSON lines, or raw text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        for name, content in files.items():
            text = content if isinstance(content, str) else "".join(json.dumps(r) + "\n" for r in content)
            wheel.writestr(name, text)
    return path


def small_files() -> dict[str, list | str]:
    alpha = rows("alpha", 3) + [
        chat("  user only  ", "plain", system=None),
        chat("list ideal", ["first", "second"]),
        chat("no ideal", None),
        chat("number ideal", 42),
        {"input": [msg("system", "s"), msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2")],
         "ideal": "few-shot"},
        {"input": [msg("user", "q1"), msg("user", "q2")], "ideal": "two users"},
        {"input": [msg("user", [{"type": "text", "text": "multimodal"}])], "ideal": "list content"},
        {"input": "a plain string input", "ideal": "string input"},
        chat("p" * 200, "too long prompt"),
        chat("long ideal", "i" * 100),
        chat("alpha prompt 0", "dup"),  # a repeated prompt: dropped
    ]
    return {
        DATA + "alpha/samples.jsonl": "".join(json.dumps(r) + "\n" for r in alpha) + "not json\n\n",
        DATA + "beta/samples.jsonl": rows("beta", 2),
        DATA + "beta/nested/more.jsonl": rows("beta", 2, start=2),
        DATA + "gamma/samples.jsonl": rows("gamma", 1),                  # too few rows
        DATA + "delta/README.md": "not a data file\n",
        "evals/registry/evals/alpha.yaml": "alpha: {}\n",
        "evals/other/data.jsonl": rows("other", 9),                       # not registry data
    }


def test_parsing_keeps_short_single_turn_rows_per_eval(tmp_path):
    wheel = write_wheel(tmp_path / "evals.whl", small_files())
    examples = evalschat.read_examples(wheel, max_input_chars=50, max_target_chars=20,
                                       min_per_source=2, max_per_source=10)
    assert Counter(ex.source for ex in examples) == {"alpha": 5, "beta": 4}  # gamma has 1 < 2
    pairs = {(ex.prompt, ex.response) for ex in examples}
    assert ("user only", "plain") in pairs and ("list ideal", "first") in pairs
    assert ("alpha prompt 0", "ideal 0") in pairs and ("beta prompt 3", "ideal 3") in pairs
    assert ("alpha prompt 0", "dup") not in pairs
    assert len(pairs) == 9  # few-shot, multi-user, non-string, long and duplicate rows are gone
    assert all("careful assistant" not in ex.prompt for ex in examples)  # system message dropped
    assert len({ex.id for ex in examples}) == len(examples)


def test_the_cap_is_stable_and_deterministic(tmp_path):
    files = {DATA + f"e{k}/samples.jsonl": rows(f"e{k}", 30) for k in range(3)}
    first = evalschat.read_examples(write_wheel(tmp_path / "a.whl", files), 160, 80, 10, 7)
    second = evalschat.read_examples(write_wheel(tmp_path / "b.whl", dict(reversed(files.items()))),
                                     160, 80, 10, 7)
    assert first == second and Counter(ex.source for ex in first) == {"e0": 7, "e1": 7, "e2": 7}
    bigger = evalschat.read_examples(write_wheel(tmp_path / "c.whl", files), 160, 80, 10, 9)
    assert {ex.prompt for ex in first} < {ex.prompt for ex in bigger}  # a larger cap only adds rows


@pytest.fixture()
def many_evals(tmp_path, monkeypatch):
    """12 evals of 20 to 53 rows behind a stubbed download; counts the wheel reads."""
    files = {DATA + f"eval{k:02d}/samples.jsonl": rows(f"eval{k:02d}", 20 + 3 * k) for k in range(12)}
    wheel = write_wheel(tmp_path / "many.whl", files)
    calls = []
    monkeypatch.setenv("TDABENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(evalschat, "fetch_package_archive", lambda *args: calls.append(args) or wheel)
    spec = replace(evalschat.TINY.data, n_pool=120, n_targets=30,
                   options={**evalschat.DEFAULT_OPTIONS, "min_per_source": 10, "max_per_source": 30,
                            "max_warmup": 60})
    return spec, calls


def test_split_is_balanced_disjoint_seeded_and_the_wheel_read_once(many_evals):
    spec, calls = many_evals
    split = evalschat.load(spec)
    assert (len(split.pool), len(split.targets), len(split.warmup)) == (120, 30, 60)
    ids = [ex.id for ex in split.pool + split.targets + split.warmup]
    assert len(set(ids)) == len(ids)
    prompts = [ex.prompt for ex in split.pool + split.targets + split.warmup]
    assert len(set(prompts)) == len(prompts)
    per_eval = Counter(ex.source for ex in split.targets)
    assert len(per_eval) == 12 and max(per_eval.values()) - min(per_eval.values()) <= 1
    pool_per_eval = Counter(ex.source for ex in split.pool)
    assert pool_per_eval == {f"eval{k:02d}": 10 for k in range(12)}
    assert {ex.source for ex in split.warmup} <= set(per_eval)
    assert evalschat.load(spec) == split and len(calls) == 1  # the second load reads the cache
    assert evalschat.load(replace(spec, seed=3)).targets != split.targets


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="min_per_source"):
        evalschat.load(replace(evalschat.TINY.data, options={"min_per_task": 3}))


def test_broken_or_empty_wheels_are_data_errors(tmp_path):
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"PK not really a zip")
    with pytest.raises(tdata.DataError, match="cannot read the evals wheel"):
        evalschat.read_examples(bad)
    with pytest.raises(tdata.DataError, match="holds no evals/registry/data"):
        evalschat.read_examples(write_wheel(tmp_path / "empty.whl", {"evals/__init__.py": ""}))


def test_a_substituted_wheel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TDABENCH_CACHE", str(tmp_path))
    write_wheel(tmp_path / "downloads" / evalschat.WHEEL, small_files())
    with pytest.raises(tdata.DataError, match=f"expected {evalschat.WHEEL_SHA256}"):
        evalschat.load(evalschat.TINY.data)


def test_real_wheel_counts():
    """Downloads the 46 MB wheel and parses its registry data: 15-30 s here."""
    examples = evalschat.examples(evalschat.DEFAULT_OPTIONS)
    per_source = Counter(ex.source for ex in examples)
    assert (len(examples), len(per_source)) == (12000, 80)
    assert set(per_source.values()) == {150}
    split = evalschat.load(evalschat.TINY.data)
    assert (len(split.pool), len(split.targets), len(split.warmup)) == (900, 100, 4000)
    assert len({ex.source for ex in split.targets}) == 80
    assert len({ex.source for ex in split.pool}) == 80
