"""Bring your own data: --task jsonl:PATH."""

from __future__ import annotations

import json

import pytest

from tdabench import cli
from tdabench.data import DataError
from tdabench.registry import get_task


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(n=60):
    return [{"prompt": f"question {i} about topic {i % 4}", "response": f"answer {i}", "source": f"t{i % 4}"}
            for i in range(n)]


def test_a_jsonl_file_becomes_a_task_with_a_balanced_split(tmp_path):
    task = get_task(f"jsonl:{write(tmp_path / 'mine.jsonl', records())}")
    spec = task.spec("tiny")
    data = task.load(spec.data)
    assert (len(data.targets), len(data.warmup), len(data.pool)) == (6, 12, 42)
    assert {ex.source for ex in data.targets} == {"t0", "t1", "t2", "t3"}
    assert spec.task == "jsonl-mine" and len(spec.data.options["sha256"]) == 64


def test_explicit_splits_are_used(tmp_path):
    rows = [{**r, "split": "target" if i < 5 else "pool"} for i, r in enumerate(records(30))]
    task = get_task(f"jsonl:{write(tmp_path / 'split.jsonl', rows)}")
    data = task.load(task.spec("tiny").data)
    assert (len(data.targets), len(data.pool), len(data.warmup)) == (5, 25, 0)


def test_malformed_records_are_all_reported_with_line_numbers(tmp_path, capsys):
    rows = records(10)
    rows[2] = "{not json"
    rows[5] = {"prompt": "only a prompt"}
    rows[7] = {**rows[7], "split": "test"}
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        get_task(f"jsonl:{path}")
    text = str(err.value)
    assert "3 malformed record(s); nothing was run" in text
    assert "line 3: not valid JSON" in text and "line 6: missing" in text and "line 8: split" in text
    assert cli.main(["groundtruth", "--task", f"jsonl:{path}"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        get_task(f"jsonl:{tmp_path / 'nope.jsonl'}")


def test_editing_the_file_changes_the_spec_hash(tmp_path):
    from tdabench.spec import spec_hash

    path = write(tmp_path / "mine.jsonl", records())
    before = spec_hash(get_task(f"jsonl:{path}").spec("tiny"))
    write(path, records(61))
    assert spec_hash(get_task(f"jsonl:{path}").spec("tiny")) != before


def test_a_non_utf8_byte_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "latin1.jsonl", records(6))
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"answer 3", b"r\xe9ponse 3")  # latin-1, not UTF-8
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as err:
        get_task(f"jsonl:{path}")
    assert f"{path}: 1 malformed record(s)" in str(err.value)
    assert "line 4: not UTF-8: byte 0xe9 at column" in str(err.value)


def test_duplicate_ids_are_named_with_their_lines(tmp_path):
    rows = [{**r, "id": f"x{i % 5}"} for i, r in enumerate(records(7))]
    with pytest.raises(DataError) as err:
        get_task(f"jsonl:{write(tmp_path / 'dup.jsonl', rows)}")
    assert "2 duplicate id(s): 'x0' (lines 1 and 6), 'x1' (lines 2 and 7)" in str(err.value)


def test_a_numeric_source_is_refused(tmp_path):
    rows = records(6)
    rows[2] = {**rows[2], "source": 1}
    with pytest.raises(DataError, match=r"line 3: source must be a string \(a label\), not 1; quote it"):
        get_task(f"jsonl:{write(tmp_path / 'num.jsonl', rows)}")


def test_a_jsonl_file_has_the_small_tier_of_the_built_in_tasks(tmp_path):
    """Issue 32: your own data had only the from-scratch tier."""
    from tdabench import checks, presets

    path = write(tmp_path / "mine.jsonl", records())
    task = get_task(f"jsonl:{path}")
    tiny, small = task.spec("tiny"), task.spec("small")
    assert small.model == presets.SMALL_MODEL and small.finetune == presets.SMALL_RECIPE
    assert small.groundtruth == tiny.groundtruth and small.data == tiny.data  # same targets
    assert checks.validate(f"jsonl:{path}", "small").preset == "small"


def test_a_bank_build_says_how_many_responses_the_token_cut_shortens(micro, tmp_path, capsys):
    from dataclasses import replace

    from tdabench import lm
    from tdabench.groundtruth import build_bank

    _, spec, data = micro
    tokenizer = lm.load_base_model(spec.model, data.warmup, data.pool).tokenizer
    roomy = replace(spec.model, max_response_tokens=1000)
    assert lm.cut_warning(tokenizer, data.pool + data.targets, roomy) is None  # nothing cut
    short = replace(spec.model, max_response_tokens=1)
    text = lm.cut_warning(tokenizer, data.pool + data.targets, short)
    n = len(data.pool) + len(data.targets)
    assert text.startswith(f"{n} of {n} pool and target responses (100%) are longer than "
                           "model.max_response_tokens=1 tokens and are cut to their start")
    assert "--set model.max_response_tokens=" in text and "keeps 95% whole" in text
    cut = replace(spec, model=short, groundtruth=replace(spec.groundtruth, n_subsets=1, n_seeds=1))
    build_bank(cut, data, tmp_path / "bank")
    assert f"tdabench: warning: {n} of {n} pool and target responses" in capsys.readouterr().err
    build_bank(cut, data, tmp_path / "bank")  # complete: nothing to build, nothing to say
    assert "responses" not in capsys.readouterr().err
