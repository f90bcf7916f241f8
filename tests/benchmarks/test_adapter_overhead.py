"""Adapter overhead (pytest-benchmark): fit + score through the tdabench adapter vs the same work
called on the library directly, for ``trak`` (traker) and ``ekfac`` (kronfluence).

Same reference model, pool, targets and settings on both sides: the library side gets the model
already loaded and the examples already encoded (its setup, untimed), and is configured exactly as
the adapter configures it (traker: our causal-LM model output and its tracked-weights gradient
computer, since traker has neither for causal LMs; kronfluence: our ``Task``). The adapter side
is timed whole: loading the cached reference model, encoding, the library calls, conversion of
the scores. The goal is adapter / library <= 1.10. Each pair prints the best rounds' wall-clock and
CPU times (one torch thread: CPU time is what a busy, shared machine disturbs least) and two
ratios: against the library call alone, and against the library call plus loading the model and
tokenizing the examples (the library side's setup), which a direct caller pays too.

Run with ``pytest tests/benchmarks/test_adapter_overhead.py --benchmark-enable``; the default
test run executes each benchmark once, as a test, without timing assertions.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tdabench import lm
from tdabench.method import FitContext, gradients, make_config
from tdabench.registry import get_method

ROUNDS = 3
TIMES: dict[tuple[str, str], np.ndarray] = {}  # (method, side) -> best (wall, CPU) seconds


@pytest.fixture(scope="module")
def context(micro, tmp_path_factory):
    """The micro task's model (1 layer, d=32, MLP 32 x 64) with 300 pool examples, 30 targets."""
    torch.set_num_threads(1)
    task, spec, _ = micro
    spec = replace(spec, data=replace(spec.data, n_pool=300, n_targets=30))
    context = FitContext(spec, task.load(spec.data), tmp_path_factory.mktemp("overhead"))
    gradients.reference_model(context)  # build the cached reference once, outside the timings
    return context


def timed(method: str, side: str, fn):
    def run(*args):
        start = np.array([time.perf_counter(), time.process_time()])
        out = fn(*args)
        spent = np.array([time.perf_counter(), time.process_time()]) - start
        TIMES[method, side] = np.minimum(TIMES.get((method, side), np.inf), spent)
        return out
    return run


def report(method: str, capsys) -> None:
    """Print adapter / library, and adapter / (library + loading the model and tokenizing, the
    library side's untimed setup, which a direct caller pays too)."""
    if all((method, side) in TIMES for side in ("adapter", "library", "prep")):
        adapter, library, prep = (TIMES[method, side] for side in ("adapter", "library", "prep"))
        with capsys.disabled():
            print(f"\n{method} (wall, CPU s): adapter {adapter.round(2)}, library {library.round(2)}, "
                  f"loading + tokenizing {prep.round(2)}; adapter / library {(adapter / library).round(3)}, "
                  f"adapter / (library + loading) {(adapter / (library + prep)).round(3)} (goal <= 1.10)")


def reference_inputs(context):
    """A freshly loaded reference model, its tokenizer, the encoded pool and targets, the model spec."""
    ref = gradients.reference_model(context)
    tok, spec = ref.lm.tokenizer, context.spec.model
    return (ref.lm.model, tok, lm.encode(tok, context.data.pool, spec),
            lm.encode(tok, context.data.targets, spec), spec)


def adapter_run(name: str, context, config: dict):
    def run():
        cls = get_method(name)
        method = cls(make_config(cls, config))
        method.fit(context.data.pool, context)
        return method.score(context.data.targets)
    return run


# --- trak -------------------------------------------------------------------------------------

# the adapter's settings, with one model on the whole pool, as the library side
TRAK = {"proj_dim": 2048, "damping": 3.0, "batch_size": 200, "n_models": 1, "checkpoint": "pool"}


def trak_library(model, tok, pool, targets, model_spec, save_dir):
    import trak

    from tdabench.methods.trak import model_output_class, tracked_gradient_computer

    model.requires_grad_(False)
    model.set_attn_implementation("eager")
    modules = gradients.tracked_modules(model, model_spec, "mlp")
    shutil.rmtree(save_dir, ignore_errors=True)
    traker = trak.TRAKer(model=model, task=model_output_class()(), train_set_size=len(pool),
                         save_dir=str(save_dir), device="cpu", proj_dim=TRAK["proj_dim"],
                         use_half_precision=False, projector_seed=0,
                         grad_wrt=list(gradients.tracked_parameters(modules)),
                         gradient_computer=tracked_gradient_computer(), logging_level=logging.WARNING)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    traker.load_checkpoint(state, model_id=0)
    pad = tok.pad_token_id

    def split(encoded):
        for rows, b in gradients.batches(encoded, TRAK["batch_size"], pad):
            yield rows.stop - rows.start, (b["input_ids"], b["attention_mask"], b["labels"])

    for n, batch in split(pool):
        traker.featurize(batch=batch, num_samples=n)
    features = np.asarray(traker.saver.current_store["grads"], dtype=np.float64)
    traker.score_computer.lambda_reg = TRAK["damping"] * float(np.square(features).sum()) / len(pool)
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="t", checkpoint=state, model_id=0, num_targets=len(targets))
    for n, batch in split(targets):
        traker.score(batch=batch, num_samples=n)
    return traker.finalize_scores(exp_name="t").T


@pytest.mark.benchmark(group="trak: adapter vs traker")
def test_trak_library(benchmark, context, tmp_path):
    pytest.importorskip("trak")
    def setup():
        return (*reference_inputs(context), tmp_path / "trak"), {}
    scores = benchmark.pedantic(timed("trak", "library", trak_library), rounds=ROUNDS,
                                setup=timed("trak", "prep", setup))
    assert scores.shape == (len(context.data.targets), len(context.data.pool))


@pytest.mark.benchmark(group="trak: adapter vs traker")
def test_trak_adapter(benchmark, context, capsys):
    pytest.importorskip("trak")
    scores = benchmark.pedantic(timed("trak", "adapter", adapter_run("trak", context, TRAK)), rounds=ROUNDS)
    assert np.isfinite(scores).all()
    report("trak", capsys)


# --- ekfac ------------------------------------------------------------------------------------

EKFAC = {"batch_size": 32, "query_batch_size": 32}


def ekfac_library(model, tok, pool, targets, model_spec, output_dir):
    import kronfluence as kf
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    from tdabench.methods.ekfac import quiet, task_class

    task = task_class()(list(gradients.tracked_modules(model, model_spec, "mlp")))
    model = kf.prepare_model(model, task)
    analyzer = kf.Analyzer("bench", model, task, cpu=True, disable_tqdm=True, log_level=logging.WARNING,
                           output_dir=str(output_dir))
    pad = tok.pad_token_id
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: lm.collate(b, pad)))
    with quiet():
        analyzer.fit_all_factors("factors", dataset=pool, per_device_batch_size=EKFAC["batch_size"],
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        analyzer.compute_pairwise_scores(
            "scores", "factors", query_dataset=targets, train_dataset=pool,
            per_device_query_batch_size=EKFAC["query_batch_size"],
            per_device_train_batch_size=EKFAC["batch_size"], score_args=ScoreArguments(),
            overwrite_output_dir=True)
    return analyzer.load_pairwise_scores("scores")["all_modules"]


@pytest.mark.benchmark(group="ekfac: adapter vs kronfluence")
def test_ekfac_library(benchmark, context, tmp_path):
    pytest.importorskip("kronfluence")

    def setup():
        torch.manual_seed(context.seed)  # the true Fisher's sampled labels, as the adapter does
        return (*reference_inputs(context), tmp_path / "kf"), {}
    scores = benchmark.pedantic(timed("ekfac", "library", ekfac_library), rounds=ROUNDS,
                                setup=timed("ekfac", "prep", setup))
    assert scores.shape == (len(context.data.targets), len(context.data.pool))


@pytest.mark.benchmark(group="ekfac: adapter vs kronfluence")
def test_ekfac_adapter(benchmark, context, capsys):
    pytest.importorskip("kronfluence")
    scores = benchmark.pedantic(timed("ekfac", "adapter", adapter_run("ekfac", context, EKFAC)),
                                rounds=ROUNDS)
    assert np.isfinite(scores).all()
    report("ekfac", capsys)
