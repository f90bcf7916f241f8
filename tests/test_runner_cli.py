"""`tdabench run` end to end on the micro task; the method protocol; errors that name the fix."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from tdabench import checks, cli, record, runner
from tdabench.errors import UserError
from tdabench.method import FitContext, Method, MissingDependency, Trained, make_config
from tdabench.methods.embedding import Embedding
from tdabench.registry import get_method, register_method


def test_run_writes_a_complete_record(micro, tmp_path):
    record, path = runner.run("random", "micro", "micro", results_dir=tmp_path)
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert path.parent == tmp_path / "micro" / "micro"
    assert path.name == f"random-{record['config_hash']}-{record['spec_hash'][:8]}-s0.json"
    assert record["schema"] == 3 and record["protocol_version"] == 1
    assert record["method_info"] == {"reference": False, "config_fields": ["seed"],
                                     "config_defaults": {"seed": 0}, "family": "control",
                                     "version": 1}
    assert record["host"]["hostname"] and record["host"]["cpus"] >= 1
    m = record["metrics"]
    assert m["lds"]["ci95"][0] <= m["lds"]["mean"] <= m["lds"]["ci95"][1]
    assert m["lds"]["n_subsets"] == 4 and m["lds"]["n_targets"] == 12  # subsets 0 and 5 tune
    assert m["lds"]["ci95_subsets"][0] <= m["lds"]["ci95_subsets"][1]
    ceiling = record["bank"]["noise_ceiling"]
    assert 0 <= ceiling["ceiling"] <= 1 and -1 <= ceiling["split_half_r"] <= 1
    assert record["protocol"]["correlation"].startswith("spearman") and record["protocol_hash"]
    with np.load(path.with_suffix(".npz")) as saved:
        assert saved["group_scores"].shape == saved["labels"].shape == (12, 4)
    assert len(record["per_target_lds"]) == 12
    assert 0 <= m["recall@1"]["value"] <= 1 and 0 < m["recall@10"]["chance"] <= 1
    for phase in ("fit", "score"):
        assert record["cost"][phase]["wall_s"] >= 0 and record["cost"][phase]["peak_rss_bytes"] > 0
    assert record["spec_hash"] and record["versions"]["torch"]
    assert record["protocol"]["group_score"].startswith("sum")
    assert "LDS" in runner.summary(record)
    assert record["per_target_lds"] != [0.0] * 12  # scores and labels vary: correlations exist


class Oracle(Method):
    """A method that reads the bank's own labels: its group scores must give LDS 1."""

    FAMILY = "control"

    @dataclass
    class Config:
        pass

    def fit(self, pool, context: FitContext):
        from tdabench.groundtruth import build_bank

        self.labels = build_bank(context.spec, context.data).labels()
        self.n = len(pool)

    def score(self, targets):
        return np.zeros((len(targets), self.n))

    def score_groups(self, targets, membership):
        return self.labels


def test_score_groups_is_used_when_a_method_has_it(micro, tmp_path):
    register_method("oracle", Oracle)
    record, _ = runner.run("oracle", "micro", "micro", results_dir=tmp_path)
    assert record["metrics"]["lds"]["mean"] == pytest.approx(1.0)
    assert "score_groups" in record["cost"]
    assert record["protocol"]["group_score"] == "method's own score_groups"


class Cached(Oracle):
    """An oracle whose ``train`` reports that it loaded its artefact from a cache."""

    def train(self, context):
        return Trained(cached=True)


def test_a_train_phase_loaded_from_a_cache_is_marked_cached(micro, tmp_path, capsys):
    register_method("cached-oracle", Cached)
    record, _ = runner.run("cached-oracle", "micro", "micro", results_dir=tmp_path)
    assert record["cost"]["train"]["cached"] is True and record["cost"]["fit"]["cached"] is False
    assert "train  cached: loaded in" in runner.summary(record)


def test_embedding_ranks_an_exact_copy_of_a_target_first(micro, tmp_path):
    task, spec, data = micro
    pool = data.pool[:30] + data.targets[:5]  # the last five pool entries copy targets 0-4
    method = Embedding(make_config(Embedding, {"similarity": "cosine"}))
    method.fit(pool, FitContext(spec, data, tmp_path))
    scores = method.score(data.targets[:5])
    assert scores.shape == (5, 35)
    assert scores.argmax(axis=1).tolist() == [30, 31, 32, 33, 34]


def test_embedding_beats_random_on_recall(micro, tmp_path):
    rec, _ = runner.run("embedding", "micro", "micro", results_dir=tmp_path)
    assert rec["metrics"]["recall@10"]["value"] > rec["metrics"]["recall@10"]["chance"]
    assert rec["cost"]["storage_bytes"]["memory"] == 60 * 384 * 4  # the pool's float32 embeddings


def test_cli_run_prints_a_summary(micro, tmp_path, capsys):
    assert cli.main(["run", "--method", "random", "--task", "micro", "--preset", "micro",
                     "--results-dir", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "LDS" in out and "recall@10" in out and "record:" in out


def test_cli_list_names_tasks_and_methods(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "chatterbot" in out and "tiny" in out and "embedding" in out and "random" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "nope", "--task", "micro", "--preset", "micro"],
     "unknown method 'nope'; valid methods:"),
    (["run", "--method", "random", "--task", "nope"], "unknown task 'nope'; valid tasks:"),
    (["run", "--method", "random", "--task", "chatterbot", "--preset", "huge"],
     "valid presets: ['small', 'tiny']"),
    (["run", "--method", "random", "--task", "micro", "--preset", "micro", "--config", "bogus=1"],
     "unknown config field(s) ['bogus']"),
    (["groundtruth", "--task", "micro", "--preset", "micro", "--set", "finetune.rate=1"],
     "unknown spec field 'finetune.rate'"),
])
def test_bad_input_names_the_valid_choices(micro, tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--results-dir", str(tmp_path)] if argv[0] == "run" else argv) == 2
    assert message in capsys.readouterr().err


def test_a_bank_built_for_another_spec_is_refused_by_the_cli(micro, tmp_path, capsys):
    bank = str(tmp_path / "bank")
    base = ["groundtruth", "--task", "micro", "--preset", "micro", "--workers", "1", "--bank", bank]
    assert cli.main(base) == 0
    assert cli.main([*base, "--set", "groundtruth.fraction=0.3"]) == 2
    assert "groundtruth.fraction: 0.2 -> 0.3" in capsys.readouterr().err


def test_builtin_methods_are_found_through_entry_points():
    assert get_method("embedding") is Embedding


def test_the_datamodel_bank_is_trained_once_then_reported_as_cached(micro, tmp_path):
    first, _ = runner.run("datamodel", "micro", "micro", config={"n_subsets": "8"}, results_dir=tmp_path)
    again, _ = runner.run("datamodel", "micro", "micro", config={"n_subsets": "8"}, results_dir=tmp_path)
    assert first["cost"]["train"]["cached"] is False and again["cost"]["train"]["cached"] is True
    assert first["method_info"]["reference"] is True
    assert again["metrics"]["lds"]["mean"] == first["metrics"]["lds"]["mean"]


class _Accounted(Method):
    """A learned method whose ``train`` reports (config ``cached``) that it loaded or trained,
    with its own account of what the training cost."""

    FAMILY = "control"
    ORIGINAL = {"bank_fine_tunes": 40, "train_s": 12.5}

    @dataclass
    class Config:
        cached: bool = True

    def train(self, context):
        return Trained(cached=self.config.cached, artifact=str(context.workdir), cost=dict(self.ORIGINAL))

    def fit(self, pool, context):
        self.n = len(pool)

    def score(self, targets):
        return np.random.default_rng(0).normal(size=(len(targets), self.n))


def test_the_train_phase_keeps_the_adapters_own_account_of_its_training(micro, tmp_path):
    register_method("accounted", _Accounted)
    original = {"bank_fine_tunes": 40, "train_s": 12.5}
    for cached in (True, False):
        rec, path = runner.run("accounted", "micro", "micro", config={"cached": str(cached).lower()},
                               results_dir=tmp_path)
        train = rec["cost"]["train"]
        assert train["cached"] is cached and train["original"] == original
        assert train["wall_s"] >= 0 and rec["cost"]["fit"]["cached"] is False
        phase = record.load(path).cost.phases["train"]  # read back typed, as written
        assert phase.cached is cached and phase.original == original


class _NotAMethod:
    """An adapter in the old style: the right members, but no Method base class."""

    FAMILY = "control"

    @dataclass
    class Config:
        pass

    def __init__(self, config):
        self.config = config


def test_registering_a_class_that_does_not_subclass_method_is_refused_in_one_line():
    with pytest.raises(UserError, match="does not subclass") as err:
        register_method("not-a-method", _NotAMethod)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(UserError, match="does not subclass"):
        register_method("not-a-class", lambda config: None)
    from tdabench.registry import method_names

    assert "not-a-method" not in method_names()  # nothing was registered


def test_a_record_of_an_older_adapter_version_is_not_current(micro, tmp_path, monkeypatch):
    """``tdabench reproduce`` reruns a record made by an older adapter ``VERSION``."""
    from tdabench.reproduce import current

    class Versioned(_Accounted):
        VERSION = 1

    register_method("versioned", Versioned)
    rec, path = runner.run("versioned", "micro", "micro", results_dir=tmp_path)
    assert rec["method_info"]["version"] == 1
    spec = checks.validate("micro", "micro").spec
    assert current(path, spec, Versioned) is True  # made by this version
    monkeypatch.setattr(Versioned, "VERSION", 2)
    assert current(path, spec, Versioned) is False  # the adapter moved on: rerun it
    monkeypatch.setattr(Versioned, "VERSION", 1)
    assert current(path, spec, Versioned) is True


def test_reproduce_stores_how_each_config_was_tuned_in_its_records(micro, tmp_path):
    """The record says what was tuned, on which subsets, over which grid (results/configs.json's
    ``_tuned`` entry, passed by ``tdabench reproduce``); a method without one records none."""
    from tdabench import record

    tuned = {"tuned": ["seed"], "subsets": "the micro bank's tuning subsets",
             "grid": {"seed": [0, 1]}, "chosen": {"seed": 0}}
    rec, path = runner.run("random", "micro", "micro", results_dir=tmp_path, tuning=tuned)
    assert record.load(path).tuning == tuned and rec["tuning"] == tuned
    assert "tuned      seed on the micro bank's tuning subsets" in runner.summary(rec)
    _, plain = runner.run("random", "micro", "micro", seed=1, results_dir=tmp_path)
    assert record.load(plain).tuning is None


def test_every_method_declares_its_family():
    from importlib.metadata import entry_points

    from tdabench.method import FAMILIES

    # the installed adapters (other tests register throwaway methods of their own)
    families = {ep.name: getattr(ep.load(), "FAMILY", None) for ep in entry_points(group="tdabench.methods")}
    assert set(families.values()) <= set(FAMILIES), families
    assert families["trak"] == families["graddot"] == "gradient" and families["bm25"] == "lexical"


def test_the_record_names_the_commit_that_started_the_run(micro, tmp_path, monkeypatch):
    # A long run whose checkout moves on meanwhile must not claim the newer commit.
    state = {"commit": "a" * 40}
    monkeypatch.setattr(record, "code", lambda: record.Code(state["commit"], False))
    build = runner.ensure_bank

    def build_then_commit(*args, **kwargs):
        bank = build(*args, **kwargs)
        state["commit"] = "b" * 40
        return bank

    monkeypatch.setattr(runner, "ensure_bank", build_then_commit)
    rec, _ = runner.run("random", "micro", "micro", results_dir=tmp_path)
    assert rec["code"]["commit"] == "a" * 40


def test_reproduce_stops_before_any_compute_when_a_tasks_data_cannot_be_had(micro, tmp_path,
                                                                            monkeypatch):
    """A task whose source is gone (e.g. an archive the index no longer serves) stops
    ``tdabench reproduce`` before the first fine-tune, and the message names the tasks that can
    run."""
    import dataclasses

    from tdabench.data import DataError
    from tdabench.registry import register_task
    from tdabench.reproduce import reproduce

    def gone(_):
        raise DataError("archive.tar.gz is not listed on the package indexes")

    task, _, _ = micro
    register_task(dataclasses.replace(task, name="micro_gone", load=gone))
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("computed before the check"))
    monkeypatch.setattr(runner, "run_resolved", lambda *a, **k: pytest.fail("computed before the check"))
    with pytest.raises(DataError, match=r"^micro_gone: archive.tar.gz is not listed.* "
                                        r"Reproduce the others with --task micro\.$"):
        reproduce("micro", ["micro", "micro_gone"], ["random"], results_dir=tmp_path)
    code = cli.main(["reproduce", "--preset", "micro", "--task", "micro_gone", "--method", "random",
                     "--results-dir", str(tmp_path)])
    assert code == 2 and not list(tmp_path.rglob("*.json"))


_HELD = []  # what the leaky method keeps alive in its process


class _Leaky(Method):
    """A method that leaves 400 MB behind in its process (as a cached model would)."""

    FAMILY = "control"

    @dataclass
    class Config:
        pass

    def fit(self, pool, context):
        _HELD.append(np.ones(50_000_000))  # 400 MB, touched

    def score(self, targets):
        return np.zeros((len(targets), 60))


class _Dies(_Leaky):
    def fit(self, pool, context):
        os._exit(3)  # as the kernel's out-of-memory killer would end it


def test_reproduce_runs_each_method_in_a_process_of_its_own(micro, tmp_path, capfd):
    """A method's record shows its own peak memory, not what an earlier one left behind; an
    optional dependency still skips, and a run that dies is named."""
    from tdabench.method import MissingDependency
    from tdabench.reproduce import reproduce

    register_method("leaky", _Leaky)
    written = reproduce("micro", ["micro"], ["leaky", "random"], results_dir=tmp_path)
    assert not _HELD  # the leak stayed in the child
    peak = {record.load(p).method: record.load(p).cost.phases["fit"].peak_rss_bytes for p in written}
    assert peak["leaky"] - peak["random"] > 300e6
    assert "random on micro/micro" in capfd.readouterr().out  # the child printed the summary

    class Missing(_Leaky):
        def fit(self, pool, context):
            raise MissingDependency("pip install it")

    register_method("missing", Missing)
    assert reproduce("micro", ["micro"], ["missing"], results_dir=tmp_path) == []
    assert "skip missing: pip install it" in capfd.readouterr().out
    register_method("dies", _Dies)
    with pytest.raises(RuntimeError, match=r"dies on micro/micro died \(exit code 3\)"):
        reproduce("micro", ["micro"], ["dies"], results_dir=tmp_path)


def test_reproduce_leaves_the_optional_task_out_unless_named():
    """Issue 32: bigbench's archive is no longer on the package index; the defaults rebuild
    from a clean clone, and a named task still runs."""
    from tdabench.reproduce import selected_tasks

    assert [name for name, _ in selected_tasks("tiny")] == ["chatterbot", "evalschat", "trivia"]
    assert [name for name, _ in selected_tasks("tiny", ["bigbench"])] == ["bigbench"]
    assert [name for name, _ in selected_tasks("paper")] == ["alpaca", "flan", "safe", "tulu"]


def test_every_method_declares_a_grid_within_the_tuning_budget():
    """Issue 33: the tuning protocol: a declared grid per method, the same budget for all."""
    import math

    from tdabench.checks import check_method
    from tdabench.protocol import TUNING_BUDGET
    from tdabench.registry import get_method, method_names

    untuned = set()
    for name in method_names():
        cls = get_method(name)
        if not cls.__module__.startswith("tdabench.methods."):
            continue  # a test's double registered in this session
        if not cls.GRID:
            untuned.add(name)
            continue
        assert math.prod(len(v) for v in cls.GRID.values()) <= TUNING_BUDGET, name
        for field, values in cls.GRID.items():
            assert len(set(map(repr, values))) == len(values) >= 2, (name, field)
            for value in values:
                try:
                    check_method(name, {field: value})  # every value a valid config
                except MissingDependency:
                    break
    assert untuned <= {"random", "datamodel"}, untuned  # nothing to tune; a reference


def test_run_tune_searches_the_declared_grid_on_the_tuning_subsets_then_scores_the_winner(
        micro, tmp_path, capsys):
    args = ["--method", "tfidf", "--task", "micro", "--preset", "micro", "--bank", str(tmp_path / "bank"),
            "--results-dir", str(tmp_path / "res")]
    assert cli.main(["run", *args, "--tune"]) == 0
    out = capsys.readouterr().out
    assert "tuning tfidf on micro/micro's tuning subsets over 6 configuration(s)" in out and "min on" in out
    rec = json.loads(next((tmp_path / "res").rglob("tfidf-*.json")).read_text())
    tuning = rec["tuning"]
    assert tuning["grid"] == {"field": ["both", "prompt", "response"], "sublinear_tf": [False, True]}
    assert {k: rec["config"][k] for k in tuning["chosen"]} == tuning["chosen"]  # the winner ran
    assert tuning["protocol"] == {"version": 1, "budget": 6} and "tuning subsets" in tuning["subsets"]
    trials = pd.read_csv(tuning["csv"][0])
    assert len(trials) == 6 and trials["tuning_lds"].is_monotonic_decreasing
    assert cli.main(["run", *args, "--tune", "--config", "field=both", "--config",
                     "sublinear_tf=true"]) == 2  # nothing left to tune
    assert "declares nothing to tune besides the fields you set" in capsys.readouterr().err
    assert cli.main(["tune", "--method", "embedding", "--task", "micro", "--preset", "micro",
                     "--bank", str(tmp_path / "bank"), "--results-dir", str(tmp_path / "res")]) == 0
    assert "similarity=" in capsys.readouterr().out  # the declared grid, no --grid given
