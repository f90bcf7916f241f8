"""The CLI under bad input and faults (issue 18): one clear line before any compute, nothing
left behind; a bug (not a user error) keeps its traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tdabench import checks, cli
from tdabench import groundtruth as gt
from tdabench.errors import ConfigError, UserError
from tdabench.groundtruth.building import bank_lock
from tdabench.method import Method
from tdabench.registry import register_method
from tdabench.store import cache_dir

TESTS = str(Path(__file__).parent)


def _error(argv: list[str], capsys) -> str:
    """The one-line error of a command that must fail as a user error (exit status 2)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("tdabench: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return err[err.index("tdabench: error: "):].strip()


def _nothing_built(before: set[Path]) -> None:
    """No bank, model or method work directory appeared in the cache."""
    after = {p for p in cache_dir().rglob("*")}
    assert after == before, sorted(map(str, after - before))[:5]


@pytest.mark.parametrize("argv, message", [
    (["--method", "nosuch"], "unknown method 'nosuch'; valid methods: airrep, bm25"),
    (["--method", "tfidf", "--config", "ngram_min=abc"], "ngram_min must be int >= 1, not 'abc'"),
    (["--method", "tfidf", "--config", "sublinear_tf=no"], "sublinear_tf must be true or false, not 'no'"),
    (["--method", "tfidf", "--config", "field=title"],
     "field must be one of ['prompt', 'response', 'both'], not 'title'"),
    (["--method", "tfidf", "--config", "ngram_min=3"], "method 'tfidf': need 1 <= ngram_min <= ngram_max"),
    (["--method", "tfidf", "--config", "ngram"], "expected FIELD=VALUE, got 'ngram'"),
    (["--method", "random", "--set", "groundtruth.n_subsets=abc"],
     "groundtruth.n_subsets must be int >= 1, not 'abc'"),
    (["--method", "random", "--set", "groundtruth.n_subsets=-5"],
     "groundtruth.n_subsets must be int >= 1, not '-5'"),
    (["--method", "random", "--set", "groundtruth.n_subsets=1"],
     "groundtruth.n_subsets=1 leaves 0 test subset(s) (every fifth subset is kept for tuning); "
     "an LDS needs at least 3: use --set groundtruth.n_subsets=4 or more"),
    (["--method", "random", "--set", "model.trainable=top"],
     "model.trainable must be 'all' or 'top:K' (K >= 1 blocks), not 'top'"),
    (["--method", "random", "--set", "groundtruth.fraction=0.001"],
     "the pool has 800 examples, so subsets of groundtruth.fraction=0.001 hold 1"),
    # issue 29: infinities are refused like NaN (k1=inf scored every example 0), and a bank too
    # large for memory is refused before numpy runs out of it
    (["--method", "bm25", "--config", "k1=inf"], "k1 must be float >= 0, not 'inf'"),
    (["--method", "bm25", "--config", "stopwords=klingon"],
     "method 'bm25': stopwords='klingon': klingon not recognized"),
    (["--method", "tfidf", "--config", "min_df=1.5"],
     "method 'tfidf': min_df=1.5: a share of the documents is at most 1"),
    (["--method", "bm25", "--config", "k1=-inf"], "k1 must be float >= 0, not '-inf'"),
    (["--method", "random", "--set", "groundtruth.n_subsets=100000000"],
     "groundtruth.n_subsets=100000000 makes a bank of 223.5 GiB in memory (100000000 subsets x 800 pool"),
])
def test_bad_run_input_is_one_line_before_any_compute(argv, message, tmp_path, capsys):
    before = set(cache_dir().rglob("*"))
    start = time.perf_counter()
    err = _error(["run", "--task", "chatterbot", "--results-dir", str(tmp_path), *argv], capsys)
    assert message in err, err
    assert time.perf_counter() - start < 10  # imports only (torch for some methods), no compute
    _nothing_built(before)
    assert list(tmp_path.iterdir()) == []


def test_the_smallest_pool_that_passes_is_what_the_message_says(micro):
    _, spec, _ = micro
    from tdabench.spec import override

    spec = override(spec, {"groundtruth.fraction": "0.1", "groundtruth.n_seeds": "1"})
    with pytest.raises(ConfigError, match="a pool of at least 15 at this fraction"):
        checks.pool_minimums(spec, 14)
    assert checks.pool_minimums(spec, 15) == []  # round(1.5) = 2 examples per subset


def test_a_tiny_data_file_blames_the_pool_before_any_model_is_built(tmp_path, capsys):
    path = tmp_path / "five.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(5)))
    before = set(cache_dir().rglob("*"))
    err = _error(["groundtruth", "--task", f"jsonl:{path}"], capsys)
    assert "the pool has 3 examples, so subsets of groundtruth.fraction=0.1 hold 0" in err, err
    assert "Use more data" in err
    _nothing_built(before)


def test_subsets_within_one_batch_warn_that_the_seeds_measure_nothing(micro):
    # micro: 12 examples per subset, batch 16, 2 seeds
    checked = checks.validate("micro", None, {}, "random")
    assert checked.preset == "micro"  # the task's only preset, without --preset
    assert len(checked.warnings) == 1
    assert "every subset (12 examples) fits in one batch of finetune.batch_size=16" in checked.warnings[0]
    assert "--set finetune.batch_size=6" in checked.warnings[0]
    assert checks.validate("micro", None, {"finetune.batch_size": "6"}).warnings == []


def test_a_task_with_one_preset_uses_it(micro, capsys):
    err = _error(["run", "--method", "nosuch", "--task", "micro"], capsys)
    assert "no preset" not in err and "unknown method 'nosuch'" in err


def test_an_unwritable_results_dir_is_refused_first(micro, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    before = set(cache_dir().rglob("*"))
    err = _error(["run", "--method", "random", "--task", "micro", "--results-dir", str(blocker / "r")],
                 capsys)
    assert f"{blocker} is a file, not a directory; choose another --results-dir" in err
    _nothing_built(before)


def test_train_refuses_a_method_that_does_not_train(micro, capsys):
    err = _error(["train", "--method", "random", "--task", "micro"], capsys)
    assert "method 'random' has nothing to train" in err


def test_a_bad_tuning_grid_value_is_refused_before_any_trial(micro, tmp_path, capsys):
    err = _error(["tune", "--method", "tfidf", "--task", "micro", "--results-dir", str(tmp_path),
                  "--grid", "ngram_max=1,two"], capsys)
    assert "ngram_max must be int >= 1, not 'two'" in err


def test_list_shows_a_methods_config_fields(capsys):
    for argv in (["list", "tfidf"], ["list", "--method", "tfidf"]):
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert "sublinear_tf" in out and "true or false" in out and "default 1" in out
        assert "one of ['prompt', 'response', 'both']" in out and "shortest n-gram" in out
    assert "unknown method 'nosuch'" in _error(["list", "nosuch"], capsys)


class _Broken(Method):
    """A method with a bug: its own ValueError must keep its traceback."""

    FAMILY = "control"

    @dataclass
    class Config:
        pass

    def fit(self, pool, context):
        np.linalg.cholesky(-np.eye(2))  # LinAlgError, a ValueError

    def score(self, targets):
        raise AssertionError


def test_an_error_inside_a_method_keeps_its_traceback(micro, tmp_path):
    register_method("broken", _Broken)
    with pytest.raises(np.linalg.LinAlgError):
        cli.main(["run", "--method", "broken", "--task", "micro", "--results-dir", str(tmp_path),
                  "--workers", "1"])


def test_user_errors_share_one_base_class():
    from tdabench.data import DataError
    from tdabench.groundtruth.bank import BankMismatch, CorruptBank
    from tdabench.method import MissingDependency

    assert all(issubclass(c, UserError) for c in (BankMismatch, CorruptBank, DataError,
                                                   MissingDependency, ConfigError))


def test_help_imports_no_torch():
    code = ("import sys, tdabench.cli as c; c.build_parser(); "
            "print(sorted({'torch', 'scipy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_leaderboard_takes_results_dir_and_the_old_spelling():
    parser = cli.build_parser()
    for flag in ("--results-dir", "--results"):
        args = parser.parse_args(["leaderboard", flag, "a", "b"])
        assert args.results == [Path("a"), Path("b")]
    assert "--results-dir" in parser._subparsers._group_actions[0].choices["leaderboard"].format_help()


def test_compare_leaves_the_methods_after_results_dir_to_its_positionals():
    args = cli.build_parser().parse_args(
        ["compare", "--task", "t", "--results-dir", "a", "m1", "m2", "--results-dir", "b"])
    assert (args.a, args.b, args.results) == ("m1", "m2", [Path("a"), Path("b")])


# --- banks: messages that name the file, versions, locks, orphans ---------------------------

def test_corrupt_manifest_and_membership_name_the_file(micro, tmp_path, capsys):
    base = ["groundtruth", "--task", "micro", "--workers", "1", "--bank", str(tmp_path)]
    assert cli.main(base) == 0
    capsys.readouterr()
    good = (tmp_path / "membership.npy").read_bytes()
    (tmp_path / "membership.npy").write_bytes(good[:30])
    assert f"{tmp_path}/membership.npy is corrupt" in _error(base, capsys)
    (tmp_path / "membership.npy").write_bytes(good)
    (tmp_path / "manifest.json").write_text("{not json")
    assert f"{tmp_path}/manifest.json is corrupt" in _error(base, capsys)


def test_a_discarded_loss_file_is_reported(micro, tmp_path, capsys):
    _, spec, data = micro
    gt.build_bank(spec, data, tmp_path)
    capsys.readouterr()
    victim = sorted((tmp_path / "losses").glob("*.npy"))[3]
    victim.write_bytes(b"garbage")
    bank = gt.build_bank(spec, data, tmp_path)
    assert bank.complete
    err = capsys.readouterr().err
    assert (f"discarded 1 corrupt or truncated loss file(s) of the bank at {tmp_path} "
            f"(first: {victim.name})") in err


def test_a_bank_of_another_groundtruth_version_is_refused_saying_why(micro, tmp_path):
    _, spec, data = micro
    gt.build_bank(spec, data, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["groundtruth_version"] = 0
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(gt.BankMismatch, match="built under ground-truth version 0, and this tdabench "
                                               "computes version 1 .the fine-tuning or loss code"):
        gt.build_bank(spec, data, tmp_path)


def test_merge_advice_names_what_can_be_merged(micro, tmp_path, capsys):
    from tdabench.spec import override

    _, spec, data = micro
    gt.build_bank(spec, data, tmp_path / "a", subsets=slice(0, 2))
    gt.build_bank(override(spec, {"finetune.lr": "0.002"}), data, tmp_path / "b", subsets=slice(0, 2))
    err = _error(["merge-banks", str(tmp_path / "a"), str(tmp_path / "b"), "--into", str(tmp_path / "c")],
                 capsys)
    assert "finetune.lr: 0.002 -> 0.001" in err and "Only parts of one bank" in err
    assert not (tmp_path / "c").exists()


def test_a_second_build_of_one_bank_waits_and_reuses_the_fine_tunes(micro, tmp_path, capsys):
    _, spec, data = micro
    done = {}
    with bank_lock(tmp_path):  # another process is building this bank
        worker = threading.Thread(target=lambda: done.setdefault("bank", gt.build_bank(spec, data, tmp_path)))
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not (tmp_path / "losses").exists()  # waiting, not fine-tuning
    worker.join(timeout=120)
    assert done["bank"].complete
    assert "is being built by pid" in capsys.readouterr().err


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import micro_task
from tdabench.groundtruth.building import build_bank
from tdabench.spec import override
task = micro_task()
spec = override(task.spec("micro"), {{"groundtruth.n_subsets": "60"}})
build_bank(spec, task.load(spec.data), {bank!r}, workers=2)
"""


def _children(pid: int) -> set[int]:
    """The pids whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_the_resource_tracker_die_with_a_killed_parent(micro, tmp_path):
    bank = tmp_path / "bank"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=TESTS, bank=str(bank))],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while len(list((bank / "losses").glob("*.npy"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    children = _children(proc.pid)
    assert len(children) >= 2, "the build should have started its workers"
    proc.kill()  # SIGKILL: no handler, no cleanup in the parent
    proc.wait()
    deadline = time.time() + 15
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.1)
    assert not [c for c in children if _alive(c)], "workers outlived their parent"


INTERRUPT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import micro_task
from tdabench import cli
from tdabench.registry import register_task
register_task(micro_task())
sys.exit(cli.main(["groundtruth", "--task", "micro", "--set", "groundtruth.n_subsets=20000",
                   "--workers", "2", "--bank", {bank!r}]))
"""  # 40,000 fine-tunes: hours, so the interrupt always comes first (a 120-job bank once finished first)


def test_ctrl_c_during_worker_start_up_prints_one_line(micro, tmp_path):
    bank = tmp_path / "bank"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT.format(tests=TESTS, bank=str(bank))],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while len(_children(proc.pid)) < 2 and time.time() < deadline:  # workers are starting
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == ["tdabench: interrupted; finished fine-tunes are kept: run the same command to resume"]


def test_a_paper_task_uses_its_only_preset_without_saying_no_preset_tiny():
    commit = "0123456789abcdef0123456789abcdef01234567"
    commit = {"data.options.revision": commit, "model.revision": commit}  # nothing to pin
    checked = checks.validate("flan", None, commit, "airrep")  # no data is loaded: no hub needed
    assert checked.preset == "paper" and checked.spec.preset == "paper"
    from tdabench.registry import get_task

    with pytest.raises(UserError, match=r"no preset .huge.; valid presets: \[.small., .tiny.\]"):
        get_task("chatterbot").spec("huge")


def test_building_the_base_model_is_announced_once(micro, tmp_path, capsys):
    from tdabench.spec import override

    _, spec, data = micro
    spec = override(spec, {"model.warmup_seed": "12345", "groundtruth.n_subsets": "1"})  # a new model
    gt.build_bank(spec, data, tmp_path)
    assert ("building the base model (1-layer Llama, warm-up of 1 epoch(s) on 120 examples); "
            "cached after this once") in capsys.readouterr().err
    gt.build_bank(spec, data, tmp_path / "again")
    assert "building the base model" not in capsys.readouterr().err


def test_a_worker_process_can_import_the_bank_builder_after_the_cli():
    """A spawned ground-truth worker re-imports the ``tdabench`` script (the CLI) and then
    unpickles its job, which imports the bank builder and torch. With the runner loaded lazily
    that crashed every worker (torch's import inspects sys.modules, which woke the lazy runner
    mid-import: a circular import); the CLI must leave nothing half-imported behind."""
    code = "import tdabench.cli, tdabench.groundtruth.building; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"



@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "random", "--task", "micro", "--seed", "-1"],
     "argument --seed: expected a whole number >= 0, got '-1'"),
    (["merge-banks", "a", "--into", "b", "--atol", "nan"],
     "argument --atol: expected a finite number >= 0, got 'nan'"),
    (["merge-banks", "a", "--into", "b", "--atol", "inf"],
     "argument --atol: expected a finite number >= 0, got 'inf'"),
    (["run", "--method", "random", "--task", "micro", "--results-dir", ""],
     "argument --results-dir: expected a path, got an empty string"),
    (["reproduce", "--results-dir", " "], "argument --results-dir: expected a path, got an empty string"),
])
def test_bad_numbers_are_refused_by_the_parser_in_one_line(argv, message, capsys):
    """Issue 29: a negative seed (a numpy traceback after validation), a NaN or infinite merge
    tolerance (which merged copies 5 nats apart) and an empty --results-dir (records written
    into the working directory) stop at the parser."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_files_where_directories_belong_are_one_line_errors(micro, tmp_path, capsys, monkeypatch):
    """Issue 29: --bank FILE, plot --out FILE and TDABENCH_CACHE set to a file gave tracebacks."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    err = _error(["groundtruth", "--task", "micro", "--bank", str(a_file)], capsys)
    assert f"--bank {a_file} is a file; a bank is a directory" in err
    records = tmp_path / "records"
    records.mkdir()
    assert cli.main(["run", "--method", "random", "--task", "micro", "--results-dir", str(records),
                     "--bank", str(tmp_path / "bank")]) == 0
    capsys.readouterr()
    err = _error(["plot", "--results-dir", str(records), "--out", str(a_file)], capsys)
    assert f"--out {a_file} is a file; figures go into a directory" in err
    monkeypatch.setenv("TDABENCH_CACHE", str(a_file))
    err = _error(["groundtruth", "--task", "micro"], capsys)
    assert f"TDABENCH_CACHE={a_file} is a file; set it to a directory" in err


def test_workers_above_the_cores_warn_and_never_outnumber_the_jobs(micro, capsys, monkeypatch):
    """Issue 29: --workers 1000 started a process per pending job without a word."""
    args = cli.build_parser().parse_args(["groundtruth", "--task", "micro", "--workers", "1000"])
    cli._validate(args)
    assert f"--workers 1000 is more than this machine's {os.cpu_count()} cores" in capsys.readouterr().err
    from tdabench.groundtruth import executors

    started = []

    class Pool:  # records how many processes the local executor asks for; runs nothing
        def __init__(self, max_workers, **kwargs):
            started.append(max_workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            from concurrent.futures import Future

            future = Future()
            future.set_result(None)
            return future

    monkeypatch.setattr(executors, "ProcessPoolExecutor", Pool)
    executors.run_local([1, 2, 3], print, (), print, workers=1000)
    assert started == [3]



def test_impossible_settings_are_refused_before_any_compute(micro, tmp_path, capsys):
    """Issue 29: top:K beyond the model's blocks built another bank; a field both tuned and set
    dropped the --config value silently; an empty --subsets range printed a slice object."""
    before = set(cache_dir().rglob("*"))
    err = _error(["run", "--method", "random", "--task", "micro", "--set", "model.trainable=top:99",
                  "--results-dir", str(tmp_path)], capsys)
    assert "model.trainable=top:99 trains more blocks than the model's model.n_layers=1" in err
    err = _error(["tune", "--method", "tfidf", "--task", "micro", "--grid", "ngram_max=1,2",
                  "--config", "ngram_max=3", "--results-dir", str(tmp_path)], capsys)
    assert "ngram_max: both tuned (--grid) and set (--config)" in err
    _nothing_built(before)
    with pytest.raises(SystemExit):
        cli.main(["groundtruth", "--task", "micro", "--subsets", "50:10"])
    assert "the subset range '50:10' is empty: A:B needs A < B" in capsys.readouterr().err



def test_a_missing_airrep_checkpoint_is_one_line_before_any_compute(micro, tmp_path, capsys):
    """Issue 29: --checkpoint /nonexistent printed 45 lines of traceback after the bank."""
    before = set(cache_dir().rglob("*"))
    err = _error(["run", "--method", "airrep", "--task", "micro", "--checkpoint", str(tmp_path / "none"),
                  "--results-dir", str(tmp_path)], capsys)
    assert f"checkpoint {tmp_path / 'none'}: no such directory" in err
    err = _error(["run", "--method", "airrep", "--task", "micro", "--checkpoint", str(tmp_path),
                  "--results-dir", str(tmp_path)], capsys)
    assert f"checkpoint {tmp_path} holds no config.json" in err
    _nothing_built(before)



def test_settings_only_the_data_or_the_hub_can_refuse_are_one_line(micro, tmp_path, capsys, monkeypatch):
    """Issue 29: tfidf's min_df above the pool's size and an embedding model that is neither a
    directory nor on the (unreachable) hub ended in library tracebacks."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub as this machine sees it, without waiting
    base = ["run", "--task", "micro", "--results-dir", str(tmp_path), "--bank", str(tmp_path / "bank")]
    err = _error([*base, "--method", "tfidf", "--config", "min_df=900"], capsys)
    assert "min_df=900 is more than the pool's 60 documents" in err
    pytest.importorskip("sentence_transformers")
    err = _error([*base, "--method", "embedding", "--config", "model=no/such"], capsys)
    assert "model 'no/such' is neither a sentence-transformers model directory nor reachable" in err
    assert list(tmp_path.glob("micro/**/*.json")) == []  # no record of a failed run


def test_messages_say_what_happened(micro, tmp_path, capsys):
    """Issue 29, item 5: a missing records directory, a directory given as data, a run without
    a noise ceiling, a one-source task's recall, and compare given the run's jsonl:PATH."""
    err = _error(["leaderboard", "--results-dir", str(tmp_path / "none")], capsys)
    assert f"no such directory: {tmp_path / 'none'}" in err
    err = _error(["groundtruth", "--task", f"jsonl:{tmp_path}"], capsys)
    assert f"{tmp_path} is a directory; --task jsonl:PATH takes a .jsonl file" in err
    from tdabench import runner

    rec, _ = runner.run("random", "micro", "micro", spec_overrides={"groundtruth.n_seeds": "1"},
                        results_dir=tmp_path / "records")
    text = runner.summary(rec)
    assert "noise ceiling not measured: one training seed per subset" in text
    assert "one source only" not in text
    rec["metrics"]["recall@1"]["chance"] = rec["metrics"]["recall@1"]["value"] = 1.0
    assert "recall@1   1.000    (random ranking: 1.000); one source only: recall says nothing" in \
        runner.summary(rec)
    data = tmp_path / "defs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"what is {i}?", "response": f"{i} is a number"}) + "\n"
                            for i in range(40)))
    assert cli._task_with_preset(f"jsonl:{data}") == "jsonl-defs"  # what its records are named


def test_an_unknown_data_option_is_refused_before_a_bank_is_built(micro, tmp_path, capsys):
    """Issue 29: --set data.options.foo=1 rebuilt a bit-identical bank under a new spec."""
    before = set(cache_dir().rglob("*"))
    err = _error(["groundtruth", "--task", "chatterbot", "--set", "data.options.foo=1"], capsys)
    assert "unknown data option(s) ['foo'] for task 'chatterbot': it reads none" in err
    err = _error(["groundtruth", "--task", "evalschat", "--set", "data.options.max_warmpu=10"], capsys)
    assert "unknown data option(s) ['max_warmpu'] for task 'evalschat': it reads [" in err
    assert "'max_warmup'" in err
    _nothing_built(before)
    checks.validate("flan", None, {"data.options.path": str(tmp_path)})  # the paper tier reads path
