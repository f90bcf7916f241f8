"""One Compute value reaches every phase: end-to-end checks with device doubles (recording
stand-ins for where work goes) that the run's workers, device and micro-batch reach a method's
own banks (the datamodel's, AirRep's training bank), a library's encoder, and the fine-tunes
started from the command line. They run on the CPU: the doubles record, nothing needs a GPU."""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

from tdabench import cli, groundtruth, lm, runner
from tdabench.device import Compute, Device
from tdabench.method import FitContext, make_config

MICRO_BATCH = 3
COMPUTE = Compute(workers=1, device=Device("cpu", "fp32", micro_batch=MICRO_BATCH))


class Recorder:
    """Doubles for ``tdabench.groundtruth.build_banks`` (the builder of a method's own banks) and
    ``tdabench.lm.accumulate_gradients`` (where every fine-tune step's micro-batch ends up):
    each records its arguments and calls the real function."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds: list[dict] = []  # build_banks' arguments, by name
        self.steps: list[tuple[bool, int, int]] = []  # (inside build_banks, micro_batch, batch size)
        self._inside = False
        real_build, real_accumulate = groundtruth.build_banks, lm.accumulate_gradients
        signature = inspect.signature(real_build)

        def build_banks(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.builds.append(dict(bound.arguments))
            self._inside = True
            try:
                return real_build(*args, **kwargs)
            finally:
                self._inside = False

        def accumulate_gradients(model, batch, micro_batch=0):
            self.steps.append((self._inside, micro_batch, len(batch["input_ids"])))
            return real_accumulate(model, batch, micro_batch)

        monkeypatch.setattr(groundtruth, "build_banks", build_banks)
        monkeypatch.setattr(lm, "accumulate_gradients", accumulate_gradients)

    def own_bank_steps(self) -> list[int]:
        """The micro-batches of the fine-tune steps run inside the method's own bank builds."""
        return [micro for inside, micro, _ in self.steps if inside]


@pytest.fixture
def base_model(micro):
    """The micro task's base LM built (and cached) before any double records: its warm-up is
    no fine-tune of a bank."""
    _, spec, data = micro
    lm.load_base_model(spec.model, data.warmup, data.pool)
    return micro


def test_the_datamodels_own_bank_is_built_with_the_runs_compute(base_model, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    rec, _ = runner.run("datamodel", "micro", "micro", config={"n_subsets": "7"}, compute=COMPUTE,
                        results_dir=tmp_path, bank_path=tmp_path / "evaluation-bank")
    assert len(recorder.builds) == 1, "the datamodel builds its bank through the harness, once"
    build = recorder.builds[0]
    assert build["device"] == COMPUTE.device and build["workers"] == 1 and build["executor"] == "local"
    assert "datamodel" in build["desc"] and len(build["items"]) == 1
    spec, _, path = build["items"][0]
    assert spec.groundtruth.n_subsets == 7 and spec.groundtruth.stream is not None  # a seed stream of its own
    assert path == groundtruth.own_bank_path(spec, build["items"][0][1], COMPUTE.device)
    # every fine-tune step of that bank ran in pieces of the run's micro-batch (7 fresh fine-tunes)
    steps = recorder.own_bank_steps()
    assert len(steps) >= 7 and set(steps) == {MICRO_BATCH}
    assert all(size > MICRO_BATCH for inside, _, size in recorder.steps if inside)  # really split
    assert rec["cost"]["train"]["cached"] is False
    assert rec["cost"]["device"]["micro_batch"] == MICRO_BATCH  # what the record says it ran with


def test_airreps_training_bank_is_built_with_the_runs_compute(base_model, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    asked = []
    real_own_banks = groundtruth.own_banks

    def own_banks(parts, label, compute):
        asked.append((list(parts), label, compute))
        return real_own_banks(parts, label, compute)

    monkeypatch.setattr(groundtruth, "own_banks", own_banks)  # what FitContext.own_banks calls
    config = {"n_splits": "2", "n_dev": "6", "subsets_per_split": "4", "steps": "1",
              "subsets_per_step": "3", "batch_size": "16", "train_encoder": "none",
              "train_seed": "7"}  # a training of its own: its bank is fine-tuned here
    rec, _ = runner.run("airrep", "micro", "micro", config=config, compute=COMPUTE, results_dir=tmp_path,
                        bank_path=tmp_path / "evaluation-bank")
    assert len(asked) == 1
    parts, label, compute = asked[0]
    assert compute == COMPUTE and "training bank" in label
    assert len(parts) == 2 and all(s.groundtruth.stream == "training" and s.groundtruth.n_subsets == 4
                                   and len(d.targets) == 6 for s, d in parts)
    assert [b["device"] for b in recorder.builds] == [COMPUTE.device]
    assert recorder.builds[0]["workers"] == 1 and len(recorder.builds[0]["items"]) == 2
    steps = recorder.own_bank_steps()
    assert len(steps) >= 8 and set(steps) == {MICRO_BATCH}  # 2 splits x 4 fresh fine-tunes
    train = rec["cost"]["train"]
    assert train["cached"] is False and train["original"]["bank_fine_tunes"] == 8
    assert rec["resolved"] == {"dtype": "fp32"}  # "auto" on the CPU


class FakeSentenceTransformer:
    """A double of ``sentence_transformers.SentenceTransformer``: records the device it was
    asked for and returns fixed embeddings (a seeded vector per text)."""

    made: list[tuple[str, object]] = []

    def __init__(self, model_name_or_path, device=None, **kwargs):
        FakeSentenceTransformer.made.append((str(model_name_or_path), device))

    @staticmethod
    def vector(text: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(text.encode())).normal(size=8).astype(np.float32)

    def encode(self, texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False, **kwargs):
        out = np.stack([self.vector(t) for t in texts])
        return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize_embeddings else out


def test_the_embedding_method_puts_its_encoder_on_the_runs_device(micro, tmp_path, monkeypatch):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from tdabench.method import field_texts, text_view
    from tdabench.methods.embedding import Embedding

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeSentenceTransformer)
    FakeSentenceTransformer.made.clear()
    _, spec, data = micro
    # a GPU run: the encoder is asked for that GPU by name (the double moves nothing)
    gpu = FitContext(spec, data, tmp_path / "gpu", compute=Compute(device=Device("cuda:1", "bf16")))
    method = Embedding(make_config(Embedding, {}))
    method.fit(data.pool, gpu)
    assert FakeSentenceTransformer.made[-1][1] == "cuda:1"
    # and the scores are the double's embeddings' dot products (the adapter used that encoder)
    view = text_view("model", gpu)

    def embedded(examples):
        return np.stack([FakeSentenceTransformer.vector(t) for t in field_texts(view(examples), "both", 256)])

    np.testing.assert_allclose(method.score(data.targets), embedded(data.targets) @ embedded(data.pool).T,
                               rtol=1e-5)
    # end to end on the CPU: the run's device, as a name, never the library's own pick (None)
    rec, _ = runner.run("embedding", "micro", "micro", compute=Compute(workers=1), results_dir=tmp_path)
    assert FakeSentenceTransformer.made[-1][1] == "cpu"
    assert all(isinstance(device, str) for _, device in FakeSentenceTransformer.made)
    assert rec["cost"]["storage_bytes"]["memory"] == 60 * 8 * 4  # the double's float32 embeddings


@pytest.mark.parametrize("command", ["groundtruth", "run"])
def test_micro_batch_on_the_command_line_reaches_every_fine_tune(base_model, tmp_path, monkeypatch,
                                                                command):
    """``--micro-batch K`` splits each fine-tune step of the bank the command builds into pieces
    of K examples (seen where the step's gradients are accumulated); without it, whole batches."""
    _, spec, _ = base_model
    seen: list[tuple[int, int]] = []
    real = lm.accumulate_gradients

    def accumulate_gradients(model, batch, micro_batch=0):
        seen.append((micro_batch, len(batch["input_ids"])))
        return real(model, batch, micro_batch)

    monkeypatch.setattr(lm, "accumulate_gradients", accumulate_gradients)
    n_subsets = 4  # the fewest that leave an LDS 3 test subsets
    k = round(spec.groundtruth.fraction * spec.data.n_pool)  # 12 examples per subset
    steps_per_finetune = spec.finetune.epochs * -(-k // spec.finetune.batch_size)
    expected = n_subsets * spec.groundtruth.n_seeds * steps_per_finetune
    for micro_batch in ([], ["--micro-batch", "3"]):
        seen.clear()
        where = tmp_path / f"mb{len(micro_batch)}"
        argv = [command, "--task", "micro", "--preset", "micro", "--workers", "1", "--device", "cpu",
                "--set", f"groundtruth.n_subsets={n_subsets}", "--bank", str(where / "bank"), *micro_batch]
        if command == "run":
            argv += ["--method", "random", "--results-dir", str(where / "results")]
        assert cli.main(argv) == 0
        want = int(micro_batch[1]) if micro_batch else 0
        assert len(seen) == expected and {m for m, _ in seen} == {want}, seen[:3]
        assert {size for _, size in seen} == {k}  # whole batches of 12 (> 3): the split is real
