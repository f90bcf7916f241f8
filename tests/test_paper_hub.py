"""The paper tier's headline command against a hub: a stand-in served on loopback
(tests/standin_hub.py), read by the real huggingface_hub client in a tdabench subprocess (the
client reads HF_ENDPOINT when it is imported). The dataset and the released checkpoint are the
offline fixtures in their published layouts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from paper_fixture import write_checkpoint, write_dataset
from standin_hub import Repo, client_env, serve
from test_paper_tasks import authors_scores, average_lds_spearman

from tdabench.methods.airrep import RELEASED_CHECKPOINT
from tdabench.tasks import paper

DATASET_SHA = hashlib.sha1(b"airrep-test as served").hexdigest()
TARGET_SHA = hashlib.sha1(b"Qwen2.5-0.5B as served").hexdigest()
MODEL_SHA = hashlib.sha1(b"AirRep-Flan-Small as served").hexdigest()
TIMEOUT_S = 600  # a loaded 2-core machine imports torch and transformers slowly


def tdabench(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tdabench.cli", *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"tdabench {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def hub(tmp_path):
    root = write_dataset(tmp_path / "airrep-test")
    checkpoint = write_checkpoint(tmp_path / "AirRep-Flan-Small")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*.jsonl")}
    weights = {p.name: p for p in checkpoint.iterdir()}
    target = paper.PAPER_MODEL.name  # only resolved here: AirRep never loads the target LM
    repos = [Repo(paper.REPO, "dataset", files, DATASET_SHA),
             Repo(RELEASED_CHECKPOINT, "model", weights, MODEL_SHA),
             Repo(target, "model", {"config.json": b"{}"}, TARGET_SHA)]
    with serve(repos) as running:
        yield running, root, checkpoint


def test_the_headline_command_pins_both_commits_and_prints_the_authors_figure(hub, tmp_path):
    """Issue 30: `tdabench run --method airrep --task flan` stopped asking for a commit hash."""
    served, root, checkpoint = hub
    env = {**client_env(served, tmp_path), "TDABENCH_CACHE": str(tmp_path / "tdabench")}
    first = tdabench(["run", "--method", "airrep", "--task", "flan"], env)
    assert f"{paper.REPO} main pinned to {DATASET_SHA}" in first.stderr
    assert f"{RELEASED_CHECKPOINT} main pinned to {MODEL_SHA}" in first.stderr
    assert f"{paper.PAPER_MODEL.name} main pinned to {TARGET_SHA}" in first.stderr
    (path,) = (tmp_path / "tdabench" / "results").rglob("airrep-*.json")
    record = json.loads(path.read_text())
    assert record["spec"]["data"]["options"]["revision"] == DATASET_SHA  # never "main" or ""
    assert record["spec"]["model"]["revision"] == TARGET_SHA
    assert record["resolved"] == {"dtype": "bf16", "checkpoint": f"{RELEASED_CHECKPOINT}@{MODEL_SHA}"}
    manifest = Path(record["bank"]["path"]) / "manifest.json"
    assert DATASET_SHA in json.loads(manifest.read_text())["model_fingerprint"]
    lds = [json.loads(line) for line in open(root / "flan" / "lds.jsonl")]
    expected = average_lds_spearman(authors_scores(checkpoint, root / "flan"), lds)
    assert record["metrics"]["lds_all_subsets"]["mean"] == pytest.approx(expected, abs=1e-9)
    assert f"{expected:+.6f}" in first.stdout

    # the printed commit, given back: the same spec, so the same bank, not imported again
    written = manifest.stat().st_mtime_ns
    second = tdabench(["run", "--method", "airrep", "--task", "flan", "--set",
                       f"data.options.revision={DATASET_SHA}", "--set", f"model.revision={TARGET_SHA}",
                       "--checkpoint",
                       f"{RELEASED_CHECKPOINT}@{MODEL_SHA}"], env)
    assert "pinned to" not in second.stderr  # both were commits: the hub was not asked to resolve
    again = json.loads(path.read_text())  # the same record file: the same spec, config and seed
    assert again["spec_hash"] == record["spec_hash"] and again["bank"]["path"] == record["bank"]["path"]
    assert manifest.stat().st_mtime_ns == written
    assert again["metrics"]["lds_all_subsets"]["mean"] == record["metrics"]["lds_all_subsets"]["mean"]


def test_reproduce_paper_runs_every_benchmark_once_at_one_commit(hub, tmp_path):
    """`tdabench reproduce --preset paper` took no task (they read the hub) and would have run
    safe twice (saferlhf is its alias)."""
    served, _, _ = hub
    env = {**client_env(served, tmp_path), "TDABENCH_CACHE": str(tmp_path / "tdabench")}
    done = tdabench(["reproduce", "--preset", "paper", "--method", "random", "--results-dir",
                     str(tmp_path / "results")], env)
    assert done.stderr.count(f"{paper.REPO} main pinned to {DATASET_SHA}") == 1  # once for all four
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("random-*.json")]
    assert sorted(r["task"] for r in records) == ["alpaca", "flan", "safe", "tulu"]
    assert {r["spec"]["data"]["options"]["revision"] for r in records} == {DATASET_SHA}
    assert all(r["metrics"]["headline"] == "lds_all_subsets" for r in records)


def test_an_unreachable_hub_is_one_line_naming_the_way_round(tmp_path):
    with serve([]) as served:  # a hub that has neither repo
        env = {**client_env(served, tmp_path), "TDABENCH_CACHE": str(tmp_path / "tdabench")}
        done = subprocess.run([sys.executable, "-m", "tdabench.cli", "run", "--method", "airrep",
                               "--task", "flan"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"tdabench: error: could not resolve 'main' of the dataset {paper.REPO} on the "
                           "Hugging Face hub to a commit (RepositoryNotFoundError")
    assert line.endswith("--set data.options.revision=<40-hex commit> (its files in the local hub cache) "
                         "or a local copy: --set data.options.path=DIR")
    assert not (tmp_path / "tdabench" / "results").exists()
