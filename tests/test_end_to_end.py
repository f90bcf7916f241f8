"""`tdabench run` end to end against ground truth with a planted, known signal (fast), and the
README's main job on the real tiny preset (slow)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import spearmanr

from tdabench import cli, record, runner
from tdabench.device import Compute
from tdabench.groundtruth import PublishedGroundTruth
from tdabench.method import Method
from tdabench.registry import register_method, register_task
from tdabench.spec import DataSpec, Example, FinetuneRecipe, GroundTruthSpec, ModelSpec, TaskSpec
from tdabench.task import Task, TaskData

N_POOL, N_TARGETS, K = 60, 20, 12  # K pool examples per subset
NOISE = np.sqrt(K)  # label noise sd: the true group effect (a sum of K N(0, 1)) has variance K
SOURCES = ["a", "b", "c"]


def effects(n_pool: int = N_POOL, n_targets: int = N_TARGETS) -> np.ndarray:
    """(T, N) the planted effect of each pool example on each target (higher = more helpful)."""
    return np.random.default_rng(7).normal(size=(n_targets, n_pool))


def _load(spec: DataSpec) -> TaskData:
    pool = [Example(f"p{i}", f"prompt {i}", f"response {i}", SOURCES[i % 3]) for i in range(spec.n_pool)]
    targets = [Example(f"t{j}", f"question {j}", f"answer {j}", SOURCES[j % 3])
               for j in range(spec.n_targets)]
    return TaskData(pool=pool, targets=targets, warmup=[])


def _published(spec: TaskSpec, data: TaskData) -> PublishedGroundTruth:
    """Losses = 3 - (sum of the planted effects over the subset) + Gaussian noise of sd NOISE,
    built with a loop over each subset's members (not the harness's group-score code)."""
    rng = np.random.default_rng(spec.groundtruth.seed)
    m = spec.groundtruth.n_subsets
    membership = np.zeros((m, len(data.pool)), dtype=bool)
    losses = np.empty((m, len(data.targets)))
    effect = effects(len(data.pool), len(data.targets))
    for j in range(m):
        members = rng.choice(len(data.pool), K, replace=False)
        membership[j, members] = True
        losses[j] = [3.0 - sum(effect[t, i] for i in members) for t in range(len(data.targets))]
    losses += NOISE * rng.normal(size=losses.shape)
    return PublishedGroundTruth(membership, losses, "planted effects")


PLANTED = TaskSpec(task="planted", preset="p", data=DataSpec(n_pool=N_POOL, n_targets=N_TARGETS),
                   model=ModelSpec(), finetune=FinetuneRecipe(),
                   groundtruth=GroundTruthSpec(n_subsets=100, fraction=K / N_POOL, source="published"))


class Planted(Method):
    """Scores = the planted effects (the method knows the truth, up to the label noise)."""

    FAMILY = "control"

    @dataclass
    class Config:
        sign: float = 1.0

    def fit(self, pool, context):
        self.effect = effects(len(pool), len(context.data.targets))

    def score(self, targets):
        return self.config.sign * self.effect[[int(ex.id[1:]) for ex in targets]]


@pytest.fixture(scope="module")
def planted():
    register_task(Task(name="planted", description="planted effects", presets={"p": PLANTED},
                       load=_load, published_groundtruth=_published))
    register_method("planted", Planted)


def test_a_method_that_knows_the_effects_reaches_the_lds_the_noise_allows(planted, tmp_path):
    """Per target, the true group effect has variance v = K var(effects) (N - K) / (N - 1) over
    random K-subsets and the labels add noise of variance NOISE^2: Pearson r = sqrt(v / (v +
    NOISE^2)), and for Gaussians Spearman = (6/pi) asin(r/2): about 0.63 here."""
    v = K * effects().var(axis=1) * (N_POOL - K) / (N_POOL - 1)
    expected = np.mean(6 / np.pi * np.arcsin(np.sqrt(v / (v + NOISE**2)) / 2))
    known, _ = runner.run("planted", "planted", "p", results_dir=tmp_path)
    lds = known["metrics"]["lds"]
    assert lds["n_subsets"] == 80 and lds["mean"] == pytest.approx(expected, abs=0.05)  # 3 s.e.
    assert lds["ci95"][0] > 0.5
    flipped, _ = runner.run("planted", "planted", "p", config={"sign": "-1"}, results_dir=tmp_path)
    assert flipped["metrics"]["lds"]["mean"] == pytest.approx(-lds["mean"])  # the sign convention
    rand, _ = runner.run("random", "planted", "p", results_dir=tmp_path)
    assert abs(rand["metrics"]["lds"]["mean"]) < 0.1  # 4 standard errors of a null mean


def test_attention_pooling_can_be_forced_for_any_method(planted, tmp_path):
    summed, _ = runner.run("planted", "planted", "p", results_dir=tmp_path)
    pooled, path = runner.run("planted", "planted", "p", results_dir=tmp_path, group_score="attention")
    assert pooled["config"]["group_score"] == "attention" and pooled["config_hash"] != summed["config_hash"]
    assert pooled["protocol"]["group_score"].startswith("attention")
    # the saved group scores are AirRep's pooling of the planted scores over each test subset
    bank = _published(PLANTED, _load(PLANTED.data))
    test = np.arange(100) % 5 != 0
    effect = effects()
    with np.load(path.with_suffix(".npz")) as saved:
        for j, members in enumerate(bank.membership[test]):
            s = effect[:, members]
            np.testing.assert_allclose(saved["group_scores"][:, j], (softmax(np.abs(s), axis=1) * s).sum(1))
        np.testing.assert_allclose(saved["labels"], -bank.losses[test].T)
        pairs = zip(saved["group_scores"], saved["labels"])
        by_scipy = np.mean([spearmanr(g, y).statistic for g, y in pairs])
    assert pooled["metrics"]["lds"]["mean"] == pytest.approx(by_scipy, abs=1e-12)
    assert pooled["metrics"]["lds"]["mean"] != pytest.approx(summed["metrics"]["lds"]["mean"], abs=1e-6)
    with pytest.raises(ValueError, match="group_score must be one of sum, attention"):
        runner.run("random", "planted", "p", results_dir=tmp_path / "never", group_score="max")
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_records_of_other_specs_coexist_and_say_where_they_were_made(planted, tmp_path):
    a, path_a = runner.run("planted", "planted", "p", results_dir=tmp_path)
    b, path_b = runner.run("planted", "planted", "p", results_dir=tmp_path,
                           spec_overrides={"groundtruth.n_subsets": "50"})
    assert path_a != path_b and path_a.exists() and path_b.exists()
    assert a["spec_hash"][:8] in path_a.name and b["spec_hash"][:8] in path_b.name
    assert record.load(path_a).metrics.lds.mean == a["metrics"]["lds"]["mean"]
    assert a["host"]["hostname"] and a["created"] and a["method_info"]["config_fields"] == ["sign"]


def test_run_writes_to_the_user_results_by_default_never_to_results(planted, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TDABENCH_RESULTS", str(tmp_path / "mine"))
    assert cli.main(["run", "--method", "planted", "--task", "planted", "--preset", "p"]) == 0
    assert f"record: {tmp_path / 'mine' / 'planted' / 'p'}" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
    monkeypatch.delenv("TDABENCH_RESULTS")
    assert record.user_results_dir() == record.cache_dir() / "results"


def test_an_unwritable_results_dir_is_refused_before_any_compute(planted, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    bank = tmp_path / "bank"
    argv = ["run", "--method", "planted", "--task", "planted", "--preset", "p", "--bank", str(bank),
            "--results-dir", str(tmp_path / "afile" / "results")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tdabench: error: results directory {tmp_path / 'afile' / 'results'}: "
                          f"{tmp_path / 'afile'} is a file, not a directory")
    assert err.endswith("choose another --results-dir") and len(err.splitlines()) == 1
    assert not bank.exists()  # no ground truth was built


def test_a_failed_final_write_keeps_the_record_in_the_cache(planted, tmp_path, monkeypatch):
    real = record.atomic_write_json

    def fail_in_results(path, obj):
        if tmp_path / "res" in path.parents:
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(record, "atomic_write_json", fail_in_results)
    with pytest.raises(record.RecordWriteError, match="No space left on device") as err:
        runner.run("planted", "planted", "p", results_dir=tmp_path / "res")
    kept = record.cache_dir() / "unsaved-records"
    files = sorted(kept.glob("planted-*.json"))
    assert files and str(files[-1]) in str(err.value)
    assert record.load(files[-1]).metrics.lds.mean > 0.5 and files[-1].with_suffix(".npz").exists()
    assert not list((tmp_path / "res").rglob("*.npz"))  # nothing half-written left behind
    assert json.loads(files[-1].read_text())["schema"] == record.SCHEMA


@pytest.mark.slow
def test_tiny_chatterbot_random_is_null_and_embedding_finds_topics(tmp_path):
    rand, _ = runner.run("random", "chatterbot", "tiny", compute=Compute(workers=2), results_dir=tmp_path)
    emb, _ = runner.run("embedding", "chatterbot", "tiny", compute=Compute(workers=2), results_dir=tmp_path)
    assert rand["spec_hash"] == emb["spec_hash"]  # the same bank served both
    assert rand["metrics"]["lds"]["n_subsets"] == 80  # the test part; 20 subsets are for tuning
    assert rand["bank"]["noise_ceiling"]["ceiling"] > 0.5  # the preset discriminates
    low, high = rand["metrics"]["lds"]["ci95"]
    assert abs(rand["metrics"]["lds"]["mean"]) < 0.05 and high - low < 0.1
    recall = emb["metrics"]["recall@10"]
    assert recall["value"] > 2 * recall["chance"]
    assert emb["metrics"]["lds"]["ci95"][0] > 0.03  # a weak but real signal
