"""The paper tier: the AirRep paper's benchmarks read from files in the published layout, and
AirRep scored on them exactly as the authors' ``scripts/04_evaluate.py`` scores it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from paper_fixture import LOSS_KEYS, write_benchmark, write_checkpoint, write_dataset
from scipy import stats

from tdabench import cli, runner
from tdabench.data import DataError
from tdabench.groundtruth import BankMismatch, ensure_bank
from tdabench.methods.airrep.model import authors_text
from tdabench.registry import get_task
from tdabench.spec import override
from tdabench.tasks import paper

# --- an independent transcription of the authors' evaluation (scripts/04_evaluate.py) ----------


def format_item(x: dict) -> str:
    """The authors' ``format_item``, step by step."""
    prompt, response = "", ""
    if "data" in x:
        prompt = " ".join(x["data"][0].split()[:100])
        response = x["data"][1]
    if "input" in x:
        prompt = x.get("instruction", "") + " " + x["input"]
    for op in ["inputs", "prompt", "instruction"]:
        if op in x:
            prompt = x[op]
            break
    for op in ["response", "targets", "output"]:
        if op in x:
            response = x[op]
            break
    return "Question: " + " ".join(prompt.split()[:256]) + "\nAnswer:" + " " + response


def average_lds_spearman(score: np.ndarray, lds: list[dict]) -> float:
    """The authors' ``average_lds_spearman``: per subset, softmax(s) * s summed over its members
    (torch, on the scores cast to float64); per test example, scipy's Spearman over subsets
    against minus the loss, NaN -> 0; the mean over test examples."""
    def softmax(a):
        a = torch.tensor(a)
        return (a.softmax(dim=-1) * a).sum().item()

    score = np.asarray(score, dtype=float)  # float64, as the script casts it before the softmax
    labels = -np.column_stack([np.asarray(row.get("test_loss", row.get("test_score")), dtype=float)
                               for row in lds])
    model_sums = np.column_stack([[softmax(score[i, np.asarray(row["train_subset"], dtype=int)])
                                   for i in range(score.shape[0])] for row in lds])
    values = []
    for m_row, y_row in zip(model_sums, labels):
        corr = stats.spearmanr(m_row, y_row).correlation
        values.append(0.0 if np.isnan(corr) else float(corr))
    return float(np.mean(values))


def authors_scores(checkpoint, folder, dtype: torch.dtype = torch.bfloat16, batch_size: int = 128
                   ) -> np.ndarray:
    """(test, train) dot products of the checkpoint's representations as the authors' ``AirRep``
    computes them: a BERT encoder without pooler, built in ``dtype`` (their loader passes
    ``torch_dtype=torch.bfloat16``: every weight cast, whatever the file stores) running eager
    attention (their ``PreTrainedModel``); texts in input order, padded batches of 128;
    ``mean_pooling`` and the projector in ``dtype``; then fp32."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("model_type")
    bert = BertModel(BertConfig(**config, attn_implementation="eager"), add_pooling_layer=False)
    state = load_file(checkpoint / "model.safetensors")
    bert.load_state_dict({k[5:]: v for k, v in state.items()
                          if k.startswith("bert.") and not k.startswith("bert.pooler.")})
    bert.to(dtype).eval()
    weight, bias = state["projector.weight"].to(dtype), state["projector.bias"].to(dtype)
    tokenizer = BertTokenizerFast.from_pretrained(checkpoint)

    def embed(filename):
        texts = [format_item(json.loads(line)) for line in open(folder / filename)]
        out = []
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=512,
                              return_tensors="pt")
            with torch.no_grad():
                hidden = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                              ).last_hidden_state
                mask = batch["attention_mask"]
                summed = hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(dim=1)
                pooled = summed / mask.sum(dim=1)[..., None]
                out.append(torch.nn.functional.linear(pooled, weight, bias).float())
        return torch.cat(out).numpy()

    return embed("test.jsonl") @ embed("train.jsonl").T


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("airrep-test")
    # the released checkpoint stores bf16; one stored in fp32 must give the same figure (cast at load)
    checkpoints = {stored: write_checkpoint(tmp_path_factory.mktemp("ckpt") / "AirRep-Flan-Small",
                                            stored=stored) for stored in ("bf16", "fp32")}
    return write_dataset(root), checkpoints


# --- records as the authors format them ----------------------------------------------------------

LONG = " ".join(f"w{i}" for i in range(300))
FORMATS = [  # (record, the exact text AirRep encodes)
    ({"inputs": "Translate  this\n please", "targets": "ok", "task": "t"},
     "Question: Translate this please\nAnswer: ok"),
    ({"instruction": "Add", "input": "2 and 3", "output": "5"}, "Question: Add\nAnswer: 5"),
    ({"instruction": "Name a city.", "input": "", "output": "Paris"},
     "Question: Name a city.\nAnswer: Paris"),
    ({"input": "only an input", "output": "x"}, "Question: only an input\nAnswer: x"),
    ({"data": [LONG, "resp"]}, "Question: " + " ".join(f"w{i}" for i in range(100)) + "\nAnswer: resp"),
    ({"data": ["p", "r"], "prompt": "q"}, "Question: q\nAnswer: r"),
    ({"data": ["p", "r"], "targets": "t"}, "Question: p\nAnswer: t"),
    ({"prompt": LONG, "response": "r"}, "Question: " + " ".join(f"w{i}" for i in range(256)) + "\nAnswer: r"),
    ({"prompt": "p", "response": "r", "targets": "t", "output": "o"}, "Question: p\nAnswer: r"),
    ({"inputs": "a", "prompt": "b", "instruction": "c", "targets": "t"}, "Question: a\nAnswer: t"),
    ({"prompt": "x", "instruction": "c", "input": "i", "output": "o"}, "Question: x\nAnswer: o"),
]


@pytest.mark.parametrize("row, text", FORMATS)
def test_records_become_the_text_the_authors_encode(row, text):
    assert authors_text(paper.to_example(row, 0, "flan")) == text
    assert format_item(row) == text  # the transcription above agrees with the table


def test_chat_records_and_sources_and_unreadable_records():
    ex = paper.to_example({"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "hello"},
                                        {"role": "user", "content": "again"}], "dataset": "oasst"}, 1, "tulu")
    assert (ex.prompt, ex.response, ex.source) == ("hi", "hello", "oasst")
    assert paper.to_example({"inputs": "q", "targets": "a"}, 0, "flan").source == "flan"
    with pytest.raises(ValueError, match="no prompt/response"):
        paper.to_example({"text": "x"}, 3, "flan")
    with pytest.raises(ValueError, match="no prompt/response"):
        paper.to_example({"inputs": "a question without an answer"}, 3, "flan")
    with pytest.raises(ValueError, match="'data' must be a list"):
        paper.to_example({"data": ["only a prompt"]}, 3, "tulu")


# --- the published ground truth ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flan", "alpaca", "tulu", "safe", "saferlhf"])
def test_every_paper_task_loads_and_imports_all_published_subsets(published, tmp_path, name):
    root, _ = published
    task = get_task(name)
    folder = "safe" if name == "saferlhf" else name
    assert task.name == folder
    spec = override(task.spec("paper"), {"data.options.path": str(root)})
    data = task.load(spec.data)
    assert (len(data.pool), len(data.targets)) == (40, 6)
    rows = [json.loads(line) for line in open(root / folder / "lds.jsonl")]
    bank = ensure_bank(task, spec, data, tmp_path / "bank")
    assert bank.complete and bank.losses.shape == (100, 1, 6) and bank.spec.groundtruth.n_subsets == 100
    assert np.flatnonzero(bank.membership[7]).tolist() == rows[7]["train_subset"]
    np.testing.assert_array_equal(bank.labels()[:, 7], -np.array(rows[7][LOSS_KEYS[folder]]))
    manifest = json.loads((tmp_path / "bank" / "manifest.json").read_text())
    assert f"sunweiwei/airrep-test/{folder} local copy {root}" in manifest["model_fingerprint"]


def test_a_changed_lds_file_is_refused_never_mixed_in(tmp_path):
    root = write_benchmark(tmp_path / "a", "flan")
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    data = paper.FLAN.load(spec.data)
    bank = ensure_bank(paper.FLAN, spec, data, tmp_path / "bank")
    assert np.array_equal(ensure_bank(paper.FLAN, spec, data, tmp_path / "bank").losses, bank.losses)
    write_benchmark(tmp_path / "a", "flan", seed=1)
    with pytest.raises(BankMismatch, match="model_fingerprint"):
        ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank")


def _rewrite_lds(root, change) -> None:
    path = root / "flan" / "lds.jsonl"
    rows = [json.loads(line) for line in open(path)]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _both_agree(rows):
    rows[2]["test_score"] = rows[2]["test_loss"]


def _both_disagree(rows):
    rows[2]["test_score"] = [v + 1 for v in rows[2]["test_loss"]]


def _neither(rows):
    rows[2].pop("test_loss")


def _null(rows):
    rows[2]["test_loss"][1] = None


def _nan(rows):
    rows[2]["test_loss"][1] = float("nan")  # json writes NaN


def _short(rows):
    rows[2]["test_loss"] = rows[2]["test_loss"][:-1]


@pytest.mark.parametrize("change, message", [
    (_both_disagree, r"lds\.jsonl:3: 'test_loss' and 'test_score' disagree"),
    (_neither, r"lds\.jsonl:3: no losses"),
    (_null, r"lds\.jsonl:3: a test loss is null or not a finite number"),
    (_nan, r"lds\.jsonl:3: a test loss is null or not a finite number"),
    (_short, r"lds\.jsonl:3: 5 test losses for 6 targets"),
])
def test_bad_loss_rows_name_their_line(tmp_path, change, message):
    root = write_benchmark(tmp_path / "a", "flan")
    _rewrite_lds(root, change)
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    with pytest.raises(DataError, match=message):
        ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank")


def test_both_loss_keys_agreeing_are_accepted(tmp_path):
    root = write_benchmark(tmp_path / "a", "flan")
    _rewrite_lds(root, _both_agree)
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    assert ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank").complete


def test_a_malformed_lds_line_is_named(tmp_path):
    root = write_benchmark(tmp_path / "a", "flan")
    path = root / "flan" / "lds.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = "{broken"
    path.write_text("\n".join(lines) + "\n")
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    with pytest.raises(DataError, match=r"lds\.jsonl:5: not valid JSON"):
        ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank")


def test_the_number_of_subsets_comes_from_the_file(tmp_path):
    root = write_benchmark(tmp_path / "a", "flan", n_subsets=40)
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root)})
    data = paper.FLAN.load(spec.data)
    assert ensure_bank(paper.FLAN, spec, data, tmp_path / "bank").losses.shape == (40, 1, 6)
    # a count the user states must match the file
    stated = override(spec, {"groundtruth.n_subsets": "100"})
    with pytest.raises(ValueError, match="40 subsets"):
        ensure_bank(paper.FLAN, stated, data, tmp_path / "bank2")


# --- the pinned source ---------------------------------------------------------------------------


def test_the_hub_is_read_only_at_a_commit_and_a_moving_name_is_pinned_first(monkeypatch, tmp_path):
    """A branch is resolved to its commit when the command is validated (tests/test_paper_hub.py
    runs it against a stand-in hub); a commit or a local copy asks the hub nothing."""
    from tdabench.checks import validate
    from tdabench.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = paper.FLAN.spec("paper")
    with pytest.raises(UserError, match=r"could not resolve 'main' of the dataset sunweiwei/airrep-test"):
        validate("flan")
    with pytest.raises(UserError, match=r"could not resolve 'v1.0' .*data\.options\.revision=<40-hex"):
        validate("flan", spec_overrides={"data.options.revision": "v1.0"})
    commit = "0123456789abcdef0123456789abcdef01234567"
    qwen = r"could not resolve 'main' of the model Qwen/Qwen2\.5-0\.5B .*model\.revision="
    with pytest.raises(UserError, match=qwen):
        validate("flan", spec_overrides={"data.options.revision": commit})  # the target LM is pinned too
    both = {"data.options.revision": commit, "model.revision": commit}
    assert validate("flan", spec_overrides=both).spec.data.options == {"revision": commit}
    local = validate("flan", spec_overrides={"data.options.path": str(tmp_path)}).spec.data.options
    assert local == {"revision": "", "path": str(tmp_path)}  # a local copy: no hub, nothing pinned
    with pytest.raises(DataError, match=r"revision='' is not a commit hash"):
        paper.FLAN.load(spec.data)  # a loader handed an unpinned spec refuses it
    message = rf"flan/train\.jsonl.*sunweiwei/airrep-test at {commit}.*a task that needs no hub"
    with pytest.raises(DataError, match=message):
        paper.FLAN.load(override(spec, {"data.options.revision": commit}).data)


def test_the_paper_preset_carries_the_paper_recipe():
    spec = paper.TULU.spec("paper")
    assert spec.model.name == "Qwen/Qwen2.5-0.5B" and spec.model.dtype == "bfloat16"
    assert (spec.finetune.lr, spec.finetune.batch_size, spec.finetune.epochs) == (2e-5, 16, 2)
    assert spec.groundtruth.source == "published" and spec.groundtruth.n_subsets == 0  # as published


# --- end to end: the authors' figure -------------------------------------------------------------


def _run_paper(name: str, root, checkpoint, tmp_path, *extra: str) -> dict:
    """``tdabench run --method airrep`` on a local copy of the paper tier; the record."""
    assert cli.main(["run", "--method", "airrep", "--task", name, "--preset", "paper",
                     "--set", f"data.options.path={root}", "--checkpoint", str(checkpoint), *extra,
                     "--bank", str(tmp_path / "bank"), "--results-dir", str(tmp_path / "results")]) == 0
    return json.loads(next((tmp_path / "results").rglob("airrep-*.json")).read_text())


@pytest.mark.parametrize("name, stored", [("flan", "bf16"), ("safe", "fp32")])
def test_tdabench_run_prints_the_authors_lds(published, tmp_path, capsys, name, stored):
    """With no precision flag, on any device: the authors' bf16 weights and compute and eager
    attention, so the figure is theirs, for a checkpoint stored in bf16 (as released) or fp32."""
    root, checkpoints = published
    # the default text=model is the whole text here: published ground truth was made by the authors'
    # LM on the records as they formatted them, not by a target LM that tdabench cuts
    record = _run_paper(name, root, checkpoints[stored], tmp_path)
    out = capsys.readouterr().out
    lds = [json.loads(line) for line in open(root / name / "lds.jsonl")]
    expected = average_lds_spearman(authors_scores(checkpoints[stored], root / name), lds)
    m = record["metrics"]
    assert m["headline"] == "lds_all_subsets" and m["lds_all_subsets"]["n_subsets"] == 100
    assert m["lds_all_subsets"]["mean"] == pytest.approx(expected, abs=1e-9)
    assert f"{expected:+.6f}" in out and "LDS (paper, all 100 subsets" in out and "LDS test part" in out
    assert abs(expected) > 1e-3  # not a degenerate zero
    assert record["config"]["dtype"] == "auto" and record["resolved"] == {"dtype": "bf16"}
    assert record["bank"]["n_subsets"] == 100
    # the leaderboard shows the paper's figure beside the test part's, and the authors' own
    from tdabench.reporting import leaderboard

    selection = leaderboard.load([tmp_path / "results"])
    md = leaderboard.render(leaderboard.table(selection), "markdown", selection)
    assert f"| airrep | {m['lds']['mean']:+.3f} |" in md and f"| {expected:+.3f} | [" in md
    authors = paper.PUBLISHED_LDS.get(name, {}).get("airrep")
    if authors:  # flan: "~0.21 (...)", in the record and under the table
        assert m["lds_all_subsets"]["published"] == authors and f"airrep: {authors}" in md
    else:
        assert m["lds_all_subsets"].get("published") is None and "Published by" not in md
    # the test-part figure stays beside it, made with the pooling AirRep trains with
    assert m["lds"]["n_subsets"] == 80 and m["lds"]["mean"] != m["lds_all_subsets"]["mean"]


def test_fp32_on_the_paper_tier_is_the_authors_code_in_fp32_and_a_named_departure(published, tmp_path):
    root, checkpoints = published
    record = _run_paper("flan", root, checkpoints["bf16"], tmp_path, "--config", "dtype=fp32")
    lds = [json.loads(line) for line in open(root / "flan" / "lds.jsonl")]
    fp32 = average_lds_spearman(authors_scores(checkpoints["bf16"], root / "flan", torch.float32), lds)
    bf16 = average_lds_spearman(authors_scores(checkpoints["bf16"], root / "flan"), lds)
    assert record["metrics"]["lds_all_subsets"]["mean"] == pytest.approx(fp32, abs=1e-9)
    assert fp32 != bf16  # the fixture tells the precisions apart
    assert "the authors encode in bf16" in record["resolved"]["departure"]


def test_a_method_without_its_own_evaluation_pooling_keeps_its_group_scores(published, tmp_path):
    root, _ = published
    record, _ = runner.run("random", "alpaca", "paper", spec_overrides={"data.options.path": str(root)},
                           results_dir=tmp_path / "results", bank_path=tmp_path / "bank")
    m = record["metrics"]
    assert record["bank"]["source"] == "published" and m["lds"]["n_subsets"] == 80
    assert m["lds_all_subsets"]["group_score"] == "as for the test part"
    # random's scores (seed 0) summed over each subset, against all 100 published subsets
    scores = np.random.default_rng(0).standard_normal((6, 40))
    lds = [json.loads(line) for line in open(root / "alpaca" / "lds.jsonl")]
    sums = np.array([[scores[i, row["train_subset"]].sum() for row in lds] for i in range(6)])
    labels = -np.array([row["test_loss"] for row in lds]).T
    expected = np.mean([stats.spearmanr(a, b).correlation for a, b in zip(sums, labels)])
    assert m["lds_all_subsets"]["mean"] == pytest.approx(expected, abs=1e-12)


def test_regenerating_the_paper_ground_truth_needs_a_subset_count(published, tmp_path):
    root, _ = published
    spec = override(paper.FLAN.spec("paper"), {"data.options.path": str(root),
                                                "groundtruth.source": "finetune"})
    with pytest.raises(ValueError, match=r"groundtruth\.n_subsets=0 builds nothing.*n_subsets=100"):
        ensure_bank(paper.FLAN, spec, paper.FLAN.load(spec.data), tmp_path / "bank")
