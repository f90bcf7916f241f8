"""Devices: resolving --device/--dtype, CPU results unchanged, one GPU per worker, the selftest.

Tests marked ``cuda`` need a CUDA GPU and skip without one (this repository's CI has none)."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench import device, groundtruth, lm, selftest
from tdabench.device import CPU, Compute, Device
from tdabench.groundtruth import building
from tdabench.method import FitContext, make_config
from tdabench.registry import get_method
from tdabench.store import read_json

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible)")
REFERENCE = Path(__file__).parent / "data" / "cpu_reference.npz"


def test_resolve_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve("auto") == CPU
    assert device.resolve("CPU", "fp32", 4) == Device("cpu", "fp32", 4)


@pytest.mark.parametrize("args, message", [
    (("cuda",), "does not see"),
    (("cuda:1",), "does not see"),
    (("tpu",), "unknown --device"),
    (("cpu", "fp16"), "unknown --dtype"),
    (("cpu", "bf16"), "on the CPU use --dtype fp32"),
    (("cpu", "fp32", -1), "--micro-batch"),
])
def test_resolve_refuses_what_cannot_run(monkeypatch, args, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        device.resolve(*args)


def test_resolve_refuses_a_gpu_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="2 GPU"):
        device.resolve("cuda:2")


def test_one_gpu_per_worker_process(monkeypatch):
    """``cuda`` spreads a pool's consecutive worker processes over the GPUs; Ray actors and
    the main process take cuda:0; ``cuda:N`` stays N."""
    import multiprocessing

    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    process = multiprocessing.current_process()
    names = []
    for identity in [(4,), (5,), (6,), ()]:
        monkeypatch.setattr(process, "_identity", identity)
        names.append(Device("cuda").for_worker().name)
    assert names == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert Device("cuda:2", "bf16").for_worker() == Device("cuda:2", "bf16")
    assert chosen == [0, 1, 2, 0, 2]
    assert Device("cuda").n_workers() == 3 and Device("cuda:1").n_workers() == 1


def test_ray_fine_tunes_ask_for_a_gpu_on_cuda():
    assert building.finetune_resources(CPU) == {"num_cpus": 1}
    assert building.finetune_resources(Device("cuda")) == {"num_cpus": 1, "num_gpus": 1}


def test_cpu_description_suffix_and_precision():
    assert CPU.describe() == {"device": "cpu", "dtype": "fp32", "gpu": None}
    assert CPU.suffix == "" and Device("cuda", "bf16").suffix == "-bf16"
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cuda")


def test_bank_manifest_states_the_device_and_refuses_another_precision(micro, tmp_path):
    _, spec, data = micro
    bank = groundtruth.build_bank(spec, data, tmp_path / "bank", workers=1)
    manifest = read_json(bank.path / "manifest.json")
    assert manifest["compute"] == {"device": "cpu", "dtype": "fp32", "gpu": None}
    bf16 = dict(manifest, compute={"device": "cuda:0", "dtype": "bf16"})  # as a GPU machine writes it
    with pytest.raises(groundtruth.BankMismatch, match="dtype"):
        groundtruth.check_manifest(manifest, bf16, bank.path)
    legacy = {k: v for k, v in manifest.items() if k != "compute"}  # banks made before devices
    groundtruth.check_manifest(legacy, manifest, bank.path)
    assert groundtruth.default_bank_path(spec, Device("cuda", "bf16")).name.endswith("-bf16")


def _cpu_results(spec, data, root: Path, context_device: dict) -> dict[str, np.ndarray]:
    """The micro bank (all weights trained; top:1 of 2 layers, frozen block cached) and graddot
    (at the pool fine-tune, the only model it used at 4c7e86e) and repsim scores, built in
    ``root`` on the device resolved from ``context_device`` (none: the defaults)."""
    top = replace(spec, model=replace(spec.model, n_layers=2, trainable="top:1"))
    extra = {"device": device.resolve(**context_device)} if context_device else {}
    compute = {"compute": Compute(device=extra["device"])} if context_device else {}
    out = {"bank_losses": groundtruth.build_bank(spec, data, root / "bank", **extra).losses,
           "bank_top_losses": groundtruth.build_bank(top, data, root / "bank-top", **extra).losses}
    for name, config in (("graddot", {"checkpoint": "pool"}), ("repsim", {})):
        cls = get_method(name)
        adapter = cls(make_config(cls, config))
        context = FitContext(spec=spec, data=data, workdir=root / name, seed=0, **compute)
        context.workdir.mkdir(parents=True)
        adapter.fit(data.pool, context)
        out[f"{name}_scores"] = adapter.score(data.targets)
    return out


def _cpu_model() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def test_cpu_results_are_those_computed_before_devices_existed(micro, tmp_path, monkeypatch):
    """tests/data/cpu_reference.npz was computed by the code before --device existed (commit
    4c7e86e). The default path and an explicit device='cpu', dtype='fp32' agree bit for bit, and
    reproduce the file bit for bit on the CPU it was made on (same torch, CPU capability and CPU
    model, where the file names its model); elsewhere float32 kernels may round differently, so
    there it is compared to 1e-5. The capability alone does not fix the kernels: on an AMD EPYC
    with the same torch and AVX512 the bank losses differed by up to 2.4e-7 (2026-12-06)."""
    _, spec, data = micro
    monkeypatch.setenv("TDABENCH_CACHE", str(tmp_path / "cache-default"))
    default = _cpu_results(spec, data, tmp_path / "default", {})
    monkeypatch.setenv("TDABENCH_CACHE", str(tmp_path / "cache-explicit"))
    explicit = _cpu_results(spec, data, tmp_path / "explicit", {"device": "cpu", "dtype": "fp32"})
    stored = np.load(REFERENCE)
    same_kind = (str(stored["torch"]) == torch.__version__
                 and str(stored["cpu_capability"]) == torch.backends.cpu.get_cpu_capability()
                 and "cpu_model" in stored.files and str(stored["cpu_model"]) == _cpu_model())
    for key in ("bank_losses", "bank_top_losses", "graddot_scores", "repsim_scores"):
        np.testing.assert_array_equal(explicit[key], default[key], err_msg=key)
        if same_kind:
            np.testing.assert_array_equal(default[key], stored[key], err_msg=key)
        else:
            np.testing.assert_allclose(default[key], stored[key], rtol=0, atol=1e-5, err_msg=key)


def test_measure_reports_no_gpu_memory_on_the_cpu():
    from tdabench.timing import measure

    value, cost = measure(lambda: torch.ones(3).sum().item(), device=CPU)
    assert value == 3.0 and cost.cuda_peak_bytes is None and cost.wall_s >= 0


def test_selftest_cpu_side_reproduces_the_stored_reference(micro, tmp_path):
    """The selftest's CPU side (the reference every device is checked against) builds the
    micro bank that tests/data/cpu_reference.npz stores (made before devices existed): its
    first 6 subsets are the reference bank's (subsets and fine-tuning seeds do not depend on
    the bank's size). A CPU comparison is exact, and the fp32 tolerances refuse a perturbed
    run where they should."""
    cpu = selftest.run_side(CPU, tmp_path / "cpu", "chatterbot", "graddot")
    assert cpu.losses.shape == (selftest.N_SUBSETS, 2, 12) and np.isfinite(cpu.losses).all()
    stored = np.load(REFERENCE)
    np.testing.assert_allclose(cpu.losses[:6], stored["bank_losses"], rtol=0, atol=1e-5)
    assert cpu.lds > 0.1  # graddot finds signal on the micro task
    assert cpu.peak_gpu_bytes is None
    nudged = replace(cpu, scores=cpu.scores + 1e-9 * np.abs(cpu.scores).max())  # same ranks
    exact = selftest.compare(CPU, cpu, nudged)
    assert [c.passed for c in exact.checks] == [True, True, True, False] and not exact.passed
    worse = replace(cpu, losses=cpu.losses + 2e-3, lds=cpu.lds + 0.05)
    failed = selftest.compare(Device("cuda"), cpu, worse)  # the fp32 tolerances
    assert [c.passed for c in failed.checks] == [False, True, False] and not failed.passed
    within = replace(cpu, losses=cpu.losses + 5e-4, lds=cpu.lds + 0.01)
    assert selftest.compare(Device("cuda"), cpu, within).passed


def test_cli_refuses_bf16_on_the_cpu_in_one_line(capsys, monkeypatch):
    from tdabench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["selftest", "--dtype", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--dtype fp32" in err


@cuda
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_selftest_on_a_gpu_agrees_with_the_cpu(micro, dtype):
    report = selftest.run(device.resolve("cuda", dtype))
    assert report.passed, report.render()
    assert report.sides[1].peak_gpu_bytes > 0


@cuda
def test_accumulation_on_a_gpu_equals_one_batch(micro):
    _, spec, data = micro
    tlm = lm.load_base_model(spec.model, data.warmup, data.pool)
    model = tlm.model.to("cuda")
    batch = lm.collate(lm.encode(tlm.tokenizer, data.pool[:16], spec.model), tlm.tokenizer.pad_token_id)
    params = lm.trainable_parameters(model, spec.model)
    lm.prepare_training(model, params, spec.finetune)
    grads = []
    for micro_batch in (0, 8):
        for p in params:
            p.grad = None
        lm.accumulate_gradients(model, batch, micro_batch)
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
