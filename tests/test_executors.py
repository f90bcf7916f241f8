"""The Ray executor: same banks as the local one, a killed worker's job is retried, an
interrupted build resumes; and banks built in parts merge (duplicates compared, never double
counted). One small Ray instance (2 CPUs) serves the module; most of the time goes into
starting Ray worker processes (each imports torch and transformers)."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from tdabench import cli
from tdabench import groundtruth as gt
from tdabench.groundtruth.building import BankJob, Trainer
from tdabench.groundtruth.executors import run_ray
from tdabench.method import MissingDependency
from tdabench.spec import override

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def ray_cluster():
    """A small local Ray instance (2 CPUs) for this module; its workers can import this file."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS] + ([old] if old else []))
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def reference(micro, tmp_path_factory):
    """The micro bank built by the local executor, one worker."""
    _, spec, data = micro
    return gt.build_bank(spec, data, tmp_path_factory.mktemp("reference"), workers=1)


def _die_once(marker: str, log: str, victim: tuple, state, job):
    """``Trainer.train``, but the first attempt at ``victim`` kills its own worker process."""
    with open(log, "a") as f:
        f.write(f"{job[1]}-{job[2]} {os.getpid()}\n")
    if tuple(job) == victim and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return state.train(job)


def test_a_missing_ray_says_which_extra_installs_it(monkeypatch, micro, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(MissingDependency, match=r'pip install "tdabench\[ray\]"'):
        run_ray([1], int, (), print)
    _, spec, data = micro
    with pytest.raises(ValueError, match="unknown executor"):
        gt.build_bank(spec, data, tmp_path, executor="dask")
    with pytest.raises(ValueError, match="only used by the Ray executor"):
        gt.build_bank(spec, data, tmp_path, address="auto")
    with pytest.raises(MissingDependency, match=r"tdabench\[ray\]"):
        gt.build_bank(spec, data, tmp_path, executor="ray")  # before any model is loaded


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_no_job_runs_twice(micro, reference, ray_cluster, tmp_path):
    from tdabench import lm

    _, spec, data = micro
    fingerprint = lm.load_base_model(spec.model, data.warmup, data.pool).fingerprint
    bank = gt.open_bank(spec, data, fingerprint, tmp_path / "bank")
    jobs = [(0, m, r) for m in range(6) for r in range(2)]
    marker, log = tmp_path / "killed", tmp_path / "calls.log"
    work = functools.partial(_die_once, str(marker), str(log), (0, 2, 1))
    run_ray(jobs, Trainer.load, (data, [BankJob(spec, bank.path, bank.membership, data.targets)]),
            work, workers=2)
    assert marker.exists(), "the worker should have been killed once"
    calls = [line.split() for line in log.read_text().splitlines()]
    attempts = {job: [pid for name, pid in calls if name == job] for job, _ in calls}
    assert len(attempts["2-1"]) == 2 and attempts["2-1"][0] != attempts["2-1"][1]  # a new process
    assert all(len(pids) == 1 for job, pids in attempts.items() if job != "2-1")
    assert len(attempts) == len(jobs)
    rebuilt = gt.open_bank(spec, data, fingerprint, bank.path)
    np.testing.assert_array_equal(rebuilt.losses, reference.losses)


class _Interrupt:
    """An ``on_result`` that presses Ctrl-C in the driver after ``after`` finished jobs."""

    def __init__(self, after: int):
        self.after, self.seen = after, 0

    def __call__(self, job, losses) -> None:
        self.seen += 1
        if self.seen >= self.after:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_an_interrupted_ray_build_resumes_to_the_local_executors_bank(micro, reference, ray_cluster,
                                                                     tmp_path):
    """Ctrl-C in the driver mid-build keeps the finished subsets; ``build_bank(executor="ray")``
    computes only the rest, and the bank is the one the local executor builds."""
    from tdabench import lm

    _, spec, data = micro
    fingerprint = lm.load_base_model(spec.model, data.warmup, data.pool).fingerprint
    bank = gt.open_bank(spec, data, fingerprint, tmp_path / "bank")
    jobs = [(0, m, r) for m in range(6) for r in range(2)]
    with pytest.raises(KeyboardInterrupt):
        run_ray(jobs, Trainer.load, (data, [BankJob(spec, bank.path, bank.membership, data.targets)]),
                Trainer.train, workers=2, on_result=_Interrupt(after=3))
    finished = sorted((bank.path / "losses").glob("*.npy"))
    assert 3 <= len(finished) < len(jobs), "the build should have been interrupted midway"
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished}
    resumed = gt.build_bank(spec, data, bank.path, workers=2, executor="ray")
    assert resumed.complete
    assert all((f.stat().st_ino, f.stat().st_mtime_ns) == stamps[f] for f in finished)
    np.testing.assert_array_equal(resumed.losses, reference.losses)


# --- merging banks built in parts (local executor, no Ray) ---------------------------------

def test_parts_merge_into_the_full_bank_counting_duplicates_once(micro, reference, tmp_path):
    _, spec, data = micro
    gt.build_bank(spec, data, tmp_path / "a", subsets=slice(0, 3))
    part = gt.build_bank(spec, data, tmp_path / "b", subsets=slice(3, None))
    assert not part.complete and np.isfinite(part.losses[3:]).all() and np.isnan(part.losses[:3]).all()
    gt.build_bank(spec, data, tmp_path / "c", subsets=slice(2, 4))  # overlaps both
    report = gt.merge_banks([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "all")
    assert (report.found, report.unique, report.duplicates, report.written) == (16, 12, 4, 12)
    assert report.max_abs_diff == 0.0 and report.complete
    merged = gt.build_bank(spec, data, tmp_path / "all")  # nothing left to compute
    np.testing.assert_array_equal(merged.losses, reference.losses)
    again = gt.merge_banks([tmp_path / "c"], tmp_path / "all")  # into an existing bank
    assert again.written == 0 and again.duplicates == 4


def test_merge_refuses_disagreeing_copies_and_other_specs(micro, reference, tmp_path):
    _, spec, data = micro
    copy = tmp_path / "copy"
    shutil.copytree(reference.path, copy)
    file = copy / "losses" / "m0001-r0.npy"
    np.save(file, np.load(file) + 1e-7)  # float noise: within tolerance
    report = gt.merge_banks([reference.path, copy], tmp_path / "ok")
    assert report.duplicates == 12 and 0 < report.max_abs_diff < gt.MERGE_ATOL
    np.save(file, np.load(file) + 1e-3)  # beyond it
    with pytest.raises(gt.BankMismatch, match=r"1 fine-tune\(s\).*disagree.*subset 1 seed 0"):
        gt.merge_banks([reference.path, copy], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert gt.merge_banks([reference.path, copy], tmp_path / "loose", atol=1e-2).max_abs_diff > 1e-3
    other = gt.build_bank(override(spec, {"finetune.lr": "0.005"}), data, tmp_path / "other",
                          subsets=slice(0, 1))
    with pytest.raises(gt.BankMismatch, match=r"finetune\.lr"):
        gt.merge_banks([reference.path, other.path], tmp_path / "mixed")


def test_cli_builds_parts_and_merges_them(micro, reference, tmp_path, capsys):
    base = ["--task", "micro", "--preset", "micro", "--workers", "1"]
    assert cli.main(["groundtruth", *base, "--bank", str(tmp_path / "a"), "--subsets", ":4"]) == 0
    assert "8 of 12 fine-tunes" in capsys.readouterr().out
    assert cli.main(["groundtruth", *base, "--bank", str(tmp_path / "b"), "--subsets", "3:"]) == 0
    assert cli.main(["merge-banks", str(tmp_path / "a"), str(tmp_path / "b"),
                     "--into", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "12 distinct fine-tunes of 12" in out and "2 fine-tune(s) found in more than one" in out
    assert cli.main(["merge-banks", str(tmp_path / "nothing"), "--into", str(tmp_path / "x")]) == 2
    assert "not a ground-truth bank" in capsys.readouterr().err


def test_progress_is_plain_lines_when_redirected_and_its_eta_skips_worker_start_up(monkeypatch):
    import io

    from tdabench.groundtruth import executors

    clock = iter([0.0, 100.0, 101.0, 102.0, 103.0])  # 100 s of worker start-up, then 1 s a job
    monkeypatch.setattr(executors.time, "monotonic", lambda: next(clock))
    out = io.StringIO()  # not a terminal
    progress = executors.Progress(4, "ground truth", every_s=0, file=out)
    for _ in range(4):
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[1] == "ground truth: 2/4 jobs, 1:41 elapsed, about 0:02 left"  # not 1:41 left
    assert lines[3] == "ground truth: 4/4 jobs, 1:43 elapsed"
