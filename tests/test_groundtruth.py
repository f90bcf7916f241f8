"""Ground-truth banks: deterministic, resumable after a kill, corruption-safe, spec-checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tdabench import groundtruth as gt
from tdabench.spec import override


def test_bank_is_complete_deterministic_and_labels_are_minus_losses(micro, tmp_path):
    _, spec, data = micro
    a = gt.build_bank(spec, data, tmp_path / "a")
    b = gt.build_bank(spec, data, tmp_path / "b")
    assert a.complete and a.losses.shape == (6, 2, 12)
    np.testing.assert_array_equal(a.losses, b.losses)
    np.testing.assert_array_equal(a.labels(), -a.losses.mean(axis=1).T)  # mean over the 2 seeds
    assert a.membership.shape == (6, 60) and a.membership.dtype == bool
    assert a.membership.sum(axis=1).tolist() == [12] * 6
    assert len({row.tobytes() for row in a.membership}) == 6  # distinct subsets
    # different subsets give different losses: the bank carries signal
    assert a.losses[:, 0, :].std(axis=0).mean() > 1e-4


def test_two_workers_give_the_same_bank_as_one(micro, tmp_path):
    _, spec, data = micro
    one = gt.build_bank(spec, data, tmp_path / "one", workers=1)
    two = gt.build_bank(spec, data, tmp_path / "two", workers=2)
    np.testing.assert_array_equal(one.losses, two.losses)


def test_several_seeds_per_subset(micro, tmp_path):
    _, spec, data = micro
    spec2 = override(spec, {"groundtruth.n_seeds": "2", "groundtruth.n_subsets": "3"})
    bank = gt.build_bank(spec2, data, tmp_path)
    assert bank.losses.shape == (3, 2, 12)
    assert not np.array_equal(bank.losses[:, 0], bank.losses[:, 1])  # seeds differ
    np.testing.assert_allclose(bank.labels(), -bank.losses.mean(axis=1).T)


def test_a_bank_for_another_spec_is_refused(micro, tmp_path):
    _, spec, data = micro
    gt.build_bank(spec, data, tmp_path)
    other = override(spec, {"finetune.lr": "0.005"})
    with pytest.raises(gt.BankMismatch, match=r"finetune\.lr: 0\.001 -> 0\.005"):
        gt.build_bank(other, data, tmp_path)
    fewer_targets = replace(data, targets=data.targets[:-1])
    with pytest.raises(gt.BankMismatch, match="data"):
        gt.open_bank(spec, fewer_targets, "x", tmp_path)


def test_a_corrupt_subset_file_is_recomputed_alone(micro, tmp_path):
    _, spec, data = micro
    bank = gt.build_bank(spec, data, tmp_path)
    files = sorted((tmp_path / "losses").glob("*.npy"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[2].write_bytes(files[2].read_bytes()[:40])  # truncated mid-write by a crash
    files[4].unlink()
    rebuilt = gt.build_bank(spec, data, tmp_path)
    np.testing.assert_array_equal(rebuilt.losses, bank.losses)
    changed = [f.name for f in files if f.stat().st_mtime_ns != stamps[f]]
    assert changed == [files[2].name, files[4].name]


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import micro_task
from tdabench.groundtruth import build_bank
from tdabench.spec import override
task = micro_task()
spec = override(task.spec("micro"), {{"groundtruth.n_subsets": "40"}})
build_bank(spec, task.load(spec.data), {bank!r}, workers=1)
"""


def test_a_killed_build_resumes_without_recomputing_finished_subsets(micro, tmp_path):
    _, spec, data = micro
    spec40 = override(spec, {"groundtruth.n_subsets": "40"})
    reference = gt.build_bank(spec40, data, tmp_path / "reference", workers=1)
    bank_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), bank=str(bank_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while len(list((bank_dir / "losses").glob("*.npy"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted((bank_dir / "losses").glob("*.npy"))
    assert 3 <= len(finished) < 40, "the build should have been killed midway"
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished}
    resumed = gt.build_bank(spec40, data, bank_dir, workers=1)
    assert resumed.complete
    assert all((f.stat().st_ino, f.stat().st_mtime_ns) == stamps[f] for f in finished)
    np.testing.assert_array_equal(resumed.losses, reference.losses)


def test_seed_derivations_are_pinned(micro):
    """Every seed comes from tdabench.seeds, with the values of the code before the split
    (pinned: a change here changes every bank and record)."""
    from tdabench import seeds

    _, spec, data = micro
    training = replace(spec, groundtruth=replace(spec.groundtruth, stream="training"))
    assert seeds.training_seed(spec, 3, 1) == 3679268941
    assert seeds.training_seed(training, 3, 1) == 908297570  # its own stream
    assert np.flatnonzero(gt.sample_subsets(data, spec)[0]).tolist() == [0, 2, 4, 9, 14, 16, 26, 31,
                                                                         38, 41, 47, 54]
    assert seeds.training_split_rng(0, 2).integers(1000, size=3).tolist() == [202, 250, 741]
    assert (seeds.training_split_seed(2, 5), seeds.reference_bank_seed(7)) == (2005, 1_000_007)
    # a reference method's own bank (the datamodel's; stream once named "datamodel", same number)
    reference = replace(spec, groundtruth=replace(spec.groundtruth, stream="reference"))
    assert seeds.training_seed(reference, 3, 1) == 920000641


def test_the_trainer_api_fine_tunes_one_subset_as_a_bank_build_does(micro, tmp_path):
    from tdabench.groundtruth.building import BankJob, Trainer

    _, spec, data = micro
    bank = gt.build_bank(spec, data, tmp_path / "bank")
    trainer = Trainer.load(data, [BankJob(spec, tmp_path / "one", bank.membership, data.targets)])
    np.testing.assert_array_equal(trainer.train((0, 4, 1)), bank.losses[4, 1])
    assert [p.name for p in (tmp_path / "one" / "losses").iterdir()] == ["m0004-r1.npy"]
    assert trainer.device.name == "cpu"
