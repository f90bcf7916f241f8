"""The paper tasks' loaders and lds.jsonl importer, on offline files of the published format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tdabench import metrics, runner
from tdabench.data import DataError
from tdabench.groundtruth import BankMismatch, ensure_bank
from tdabench.spec import override
from tdabench.tasks import paper


def write_benchmark(root, name="flan", n_train=30, n_test=6, n_subsets=100, seed=0, bad_line=None):
    """A small copy of sunweiwei/airrep-test/<name> in its published layout."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    tasks = ["qa", "math", "translate"]
    with open(folder / "train.jsonl", "w") as f:
        for i in range(n_train):
            f.write(json.dumps({"inputs": f"question {i} about {tasks[i % 3]}", "targets": f"answer {i}",
                                "task": tasks[i % 3]}) + "\n")
    with open(folder / "test.jsonl", "w") as f:
        for i in range(n_test):
            row = {"prompt": f"test {i}", "response": f"reply {i}", "task": tasks[i % 3]}
            f.write(json.dumps(row) + "\n")
    with open(folder / "lds.jsonl", "w") as f:
        for m in range(n_subsets):
            subset = sorted(rng.choice(n_train, n_train // 2, replace=False).tolist())
            row = {"train_subset": subset, "test_loss": rng.uniform(1, 3, n_test).round(4).tolist()}
            f.write(("{broken" if m == bad_line else json.dumps(row)) + "\n")
    return root


def test_record_formats_normalise_to_examples():
    ex = paper.to_example({"instruction": "Add", "input": "2 and 3", "output": "5"}, 0, "alpaca")
    assert (ex.prompt, ex.response, ex.source) == ("Add 2 and 3", "5", "alpaca")
    ex = paper.to_example({"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": "again"}],
                           "dataset": "oasst"}, 1, "tulu")
    assert (ex.prompt, ex.response, ex.source) == ("hi", "hello", "oasst")
    ex = paper.to_example({"data": ["q", "a"]}, 2, "flan")
    assert (ex.prompt, ex.response, ex.source) == ("q", "a", "flan")
    with pytest.raises(ValueError, match="no prompt/response"):
        paper.to_example({"text": "x"}, 3, "flan")


def test_published_ground_truth_is_imported_and_scored(tmp_path):
    root = write_benchmark(tmp_path / "airrep-test")
    task = paper.FLAN
    spec = override(task.spec("paper"), {"data.options.path": str(root)})
    data = task.load(spec.data)
    assert (len(data.pool), len(data.targets)) == (30, 6)
    assert {ex.source for ex in data.pool} == {"qa", "math", "translate"}
    bank = ensure_bank(task, spec, data, tmp_path / "bank")
    rows = [json.loads(line) for line in open(root / "flan" / "lds.jsonl")]
    assert bank.complete and bank.losses.shape == (100, 1, 6)
    assert np.flatnonzero(bank.membership[7]).tolist() == rows[7]["train_subset"]
    np.testing.assert_allclose(bank.labels()[:, 7], -np.array(rows[7]["test_loss"]))
    # an oracle that knows the labels scores LDS 1 against the imported bank
    assert metrics.lds(bank.labels(), bank.labels()) == pytest.approx(1.0)
    # importing again reuses the bank; a changed lds.jsonl is refused, never mixed in
    assert np.array_equal(ensure_bank(task, spec, data, tmp_path / "bank").losses, bank.losses)
    write_benchmark(tmp_path / "airrep-test", seed=1)
    with pytest.raises(BankMismatch, match="model_fingerprint"):
        ensure_bank(task, spec, data, tmp_path / "bank")


def test_run_on_a_local_copy_of_the_paper_data(tmp_path):
    root = write_benchmark(tmp_path / "airrep-test", name="alpaca")
    record, path = runner.run("random", "alpaca", "paper", spec_overrides={"data.options.path": str(root)},
                              results_dir=tmp_path / "results", bank_path=tmp_path / "bank")
    assert record["bank"]["source"] == "published" and record["metrics"]["lds"]["n_subsets"] == 80
    assert path.exists()


@pytest.mark.parametrize("bad_line, message", [(4, r"lds\.jsonl:5: not valid JSON")])
def test_a_malformed_lds_file_names_the_line(tmp_path, bad_line, message):
    root = write_benchmark(tmp_path / "airrep-test", bad_line=bad_line)
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    data = paper.FLAN.load(spec.data)
    with pytest.raises(DataError, match=message):
        ensure_bank(paper.FLAN, spec, data, tmp_path / "bank")


def test_wrong_loss_counts_and_subset_counts_are_refused(tmp_path):
    root = write_benchmark(tmp_path / "a", n_subsets=100)
    rows = [json.loads(line) for line in open(root / "flan" / "lds.jsonl")]
    rows[3]["test_loss"] = rows[3]["test_loss"][:-1]
    (root / "flan" / "lds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    data = paper.FLAN.load(spec.data)
    with pytest.raises(DataError, match=r"lds\.jsonl:4: 5 test losses for 6 targets"):
        ensure_bank(paper.FLAN, spec, data, tmp_path / "bank")
    root = write_benchmark(tmp_path / "b", n_subsets=40)
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    with pytest.raises(ValueError, match="40 subsets"):
        ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank2")


def test_offline_hub_failure_says_what_and_what_instead(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = r"flan/train\.jsonl.*sunweiwei/airrep-test.*offline task \(chatterbot"
    with pytest.raises(DataError, match=message):
        paper.FLAN.load(paper.FLAN.spec("paper").data)


def test_the_paper_preset_carries_the_paper_recipe():
    spec = paper.TULU.spec("paper")
    assert spec.model.name == "Qwen/Qwen2.5-0.5B" and spec.model.dtype == "bfloat16"
    assert (spec.finetune.lr, spec.finetune.batch_size, spec.finetune.epochs) == (2e-5, 16, 2)
    assert spec.groundtruth.source == "published" and spec.groundtruth.n_subsets == 100
