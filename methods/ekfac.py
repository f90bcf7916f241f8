"""ekfac: influence functions, Gauss-Newton approximated by EK-FAC or K-FAC (``kronfluence``).

Influence functions as in Grosse et al. (2023). At the model ``checkpoint`` names (default: the
base LM fine-tuned on the whole pool; :data:`tdabench.method.gradients.CHECKPOINTS`) kronfluence fits
the Kronecker factors of the tracked linear layers (``tracked``: ``"mlp"``, ``"attention"`` or
``"linear"``; kronfluence handles only ``nn.Linear``/``Conv2d``, so embeddings and the LM head
are left out) on the pool, then scores grad(target's measurement)^T (G + damping)^-1
grad(pool example's loss). Training loss: summed
response-token cross-entropy of each pool example; measurement: the protocol's model output,
the target's mean response-token cross-entropy. G is the true Fisher (labels sampled from the
model, seeded) unless ``empirical_fisher``. ``strategy`` is kronfluence's: ``"ekfac"``,
``"kfac"``, ``"diagonal"`` or ``"identity"``. ``damping`` = None is kronfluence's heuristic
(0.1 x the mean eigenvalue). kronfluence returns (n_query, n_train), positive = the pool example
lowers the target's loss; pool gradients are recomputed at scoring time (kronfluence's design).
``damping`` was tuned on chatterbot/tiny's tuning subsets (``tdabench tune``: heuristic, 1e-5,
1e-4, 1e-3, 1e-2; ``results/configs.json``): 1e-4 scored 0.452, the heuristic 0.447, within one
bootstrap interval (about +-0.04). The default stays the heuristic: it scales with each task's
Fisher, where an absolute damping tuned on one task does not transfer.

Memory and time, with L tracked layers of O x I weights, N pool and T target examples of about
t tokens: the factors hold per layer two covariances and their eigenvectors, 2 x (O^2 + I^2)
floats, and the eigenvalue corrections O x I (at Qwen2.5-0.5B's MLPs, 2 x (4,864^2 + 896^2) x 4
bytes = 196 MB per layer, 14 GB for its 72: the factors, not the pool, are what grows); the pool's
gradients are recomputed while scoring, one batch's B x O x I per layer at a time, so nothing
grows with N x P. Time: N x (a forward and backward pass + t x (O^2 + I^2)) per layer for the
covariances, L x (O^3 + I^3) for the eigendecompositions, another pass over the pool for the
corrections, and T x N x (a pass + O x I per layer) for the scores.

kronfluence 1.0.1 declares a dependency on torchvision, which it does not import and which
breaks transformers next to the CPU torch: install it with ``pip install --no-deps``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from tdabench import lm
from tdabench.method import FitContext, Method, MissingDependency, gradients, require
from tdabench.spec import Example
from tdabench.typed import param

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
INSTALL = "pip install --no-deps kronfluence==1.0.1"


def kronfluence():
    """Import kronfluence, or say how to install it without torchvision."""
    try:
        return require("kronfluence", "influence", "ekfac")
    except MissingDependency as err:
        raise MissingDependency(f"{err}, then {INSTALL} (without --no-deps, pip also installs "
                                "torchvision, which breaks transformers beside the CPU torch)") from err


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """kronfluence 1.0.1 warns on every call that torch.cuda.amp.GradScaler is deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler.*", category=FutureWarning)
        yield


def task_class():
    kf = kronfluence()

    class LMTask(kf.Task):
        """Summed response-token cross-entropy per training example; mean per query."""

        def __init__(self, modules: list[str]) -> None:
            self.modules = modules

        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            logits, targets, _ = lm.response_logits(model, batch)
            if sample:  # labels drawn from the model: the true Fisher
                with torch.no_grad():
                    targets = torch.multinomial(logits.softmax(-1), 1)[:, 0]
            return F.cross_entropy(logits, targets, reduction="sum")

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return gradients.measurement(model, batch).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return self.modules

        def get_attention_mask(self, batch) -> torch.Tensor:
            return batch["attention_mask"]

    return LMTask


class EKFAC(Method):
    FAMILY = "gradient"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"damping": [None, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]}
    @dataclass
    class Config(gradients.GradientConfig):
        checkpoint: gradients.OneModelCheckpoint = param("pool", gradients.CHECKPOINT_HELP)
        strategy: Literal[STRATEGIES] = param("ekfac", "kronfluence's Hessian approximation")
        damping: float | None = param(None, "none: kronfluence's heuristic, 0.1 x mean eigenvalue", ge=0)
        empirical_fisher: bool = param(False, "true: observed labels instead of sampled ones")
        query_batch_size: int = param(32, "targets per batch (batch_size: pool examples per batch)", ge=1)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        kf = kronfluence()
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs
        from kronfluence.utils.state import State

        c = self.config
        prepared = gradients.prepare(context, c.tracked, c.checkpoint)  # seeds the sampled labels
        model, tokenizer = prepared.lm.model, prepared.lm.tokenizer
        self.model_spec, self.tokenizer = prepared.model_spec, tokenizer
        task = task_class()(list(prepared.modules))
        self.model = kf.prepare_model(model, task)
        State._reset_state()  # a process-wide singleton: it would keep the first analyzer's device
        self.analyzer = kf.Analyzer("tdabench", self.model, task, cpu=not context.device.is_cuda,
                                    disable_tqdm=True, log_level=logging.WARNING,
                                    output_dir=str(context.workdir / "kronfluence"))
        pad = tokenizer.pad_token_id
        self.analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: lm.collate(b, pad)))
        self.pool = lm.encode(tokenizer, pool, self.model_spec)
        with quiet():
            self.analyzer.fit_all_factors(
                "factors", dataset=self.pool, per_device_batch_size=c.batch_size,
                factor_args=FactorArguments(strategy=c.strategy, use_empirical_fisher=c.empirical_fisher),
                overwrite_output_dir=True)

    def score(self, targets: list[Example]) -> np.ndarray:
        from kronfluence.arguments import ScoreArguments

        c = self.config
        queries = lm.encode(self.tokenizer, targets, self.model_spec)
        with quiet():
            self.analyzer.compute_pairwise_scores(
                "scores", "factors", query_dataset=queries, train_dataset=self.pool,
                per_device_query_batch_size=c.query_batch_size, per_device_train_batch_size=c.batch_size,
                score_args=ScoreArguments(damping_factor=c.damping), overwrite_output_dir=True)
        native = self.analyzer.load_pairwise_scores("scores")["all_modules"]  # (n_query, n_train)
        # kronfluence 1.0.1, load_pairwise_scores(...)["all_modules"]: (n_query, n_train),
        # grad(measurement)^T (H + damping)^-1 grad(train loss). Up-weighting the train example
        # moves the parameters by -H^-1 grad(train loss), so a positive score means it lowers the
        # measurement (the target's loss): helpful.
        return gradients.to_scores(native, "TN", +1, len(targets), len(self.pool), "kronfluence")
