"""trak: TRAK (Park et al., 2023) through MadryLab's ``traker`` (import ``trak``).

One TRAKer featurizes the pool at the reference model (the base LM fine-tuned on the whole
pool, :func:`tdabench.gradients.reference_model`) and scores the targets. The model output is
our own causal-LM one (``CausalLMOutput``): the sum over an example's response tokens of the
log-odds log(p / (1 - p)) of the correct next token, TRAK's margin applied per token; the
out-to-loss term Q of a pool example is the mean over its response tokens of 1 - p. Gradients
are taken with respect to the tracked weights only (``tracked``: ``"mlp"`` or ``"linear"``, as
for graddot) by traker's ``torch.func`` gradient computer, restricted to those weights (traker
would differentiate every parameter and drop the rest), on the model's eager attention (vmap
cannot batch the SDPA mask path).

On CPU traker uses its dense Gaussian projector (``BasicProjector``), here in float32
(``use_half_precision=False``): projecting costs N x P x ``proj_dim`` multiply-adds, most of the
fit time (P = tracked weights). ``proj_dim = 0`` skips the projection (exact gradients; only for
small P). ``damping`` sets traker's ridge term ``lambda_reg`` on X^T X to that fraction of
trace(X^T X) / N (the mean eigenvalue of the N x N kernel X X^T, which the projection scales
by ``proj_dim``, so a damping means the same at every ``proj_dim``). Without it X^T X is singular
once ``proj_dim`` exceeds the pool size, and a single model's TRAK was noisy here (LDS 0.12 on
chatterbot/tiny at ``proj_dim=512``, 0.20 with ``damping=0.1``); 0.1 mirrors kronfluence's
heuristic of 0.1 x the mean eigenvalue. traker returns (n_train, n_targets), higher = more
helpful; :func:`tdabench.gradients.to_scores` transposes it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tdabench import gradients, lm
from tdabench.method import FitContext, require
from tdabench.spec import Example
from tdabench.typed import param


def _margins(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-odds of the next token and the response mask, for (L, V) logits and (L,)
    labels (shifted inside); written without data-dependent indexing so that it runs under vmap."""
    logits, target = logits[:-1], labels[1:]
    valid = target != lm.IGNORE
    target = target.clamp(min=0)
    correct = logits.gather(-1, target[:, None])[:, 0]
    is_target = torch.arange(logits.shape[-1], device=logits.device) == target[:, None]
    others = logits.masked_fill(is_target, -torch.inf).logsumexp(-1)
    return correct - others, valid


def model_output_class():
    trak = require("trak", "trak", "trak")

    class CausalLMOutput(trak.modelout_functions.AbstractModelOutput):
        """TRAK model output of a causal LM: summed log-odds of the correct response tokens."""

        def __init__(self) -> None:
            super().__init__()

        @staticmethod
        def get_output(model, weights, buffers, input_ids, attention_mask, labels) -> torch.Tensor:
            logits = torch.func.functional_call(model, (weights, buffers), args=(), kwargs={
                "input_ids": input_ids[None], "attention_mask": attention_mask[None]}).logits[0]
            margins, valid = _margins(logits.float(), labels)
            return (margins * valid).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch) -> torch.Tensor:
            input_ids, attention_mask, labels = batch
            with torch.no_grad():
                logits = torch.func.functional_call(model, (weights, buffers), args=(), kwargs={
                    "input_ids": input_ids, "attention_mask": attention_mask}).logits.float()
                target = labels[:, 1:]
                valid = target != lm.IGNORE
                logp = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
                q = ((1 - logp.exp()) * valid).sum(1) / valid.sum(1)
            return q[:, None]

    return CausalLMOutput


def tracked_gradient_computer():
    trak = require("trak", "trak", "trak")

    class TrackedGradientComputer(trak.gradient_computers.FunctionalGradientComputer):
        """traker's vmap gradient computer, differentiating only the ``grad_wrt`` weights (traker
        differentiates every parameter and drops the others afterwards: the embedding's per-example
        gradients alone are V x d each)."""

        def load_model_params(self, model) -> None:
            super().load_model_params(model)
            keep = getattr(self, "grad_wrt", None)  # set after the first call, in __init__
            if keep is not None:
                keep = set(keep)
                self.func_weights = {k: v for k, v in self.func_weights.items() if k in keep}

    return TrackedGradientComputer


class Trak:
    @dataclass
    class Config:
        tracked: Literal[gradients.TRACKED] = param(gradients.DEFAULT_TRACKED,
                                                    "layers whose gradients are used: MLPs or all linear")
        proj_dim: int = param(2048, "JL projection dimension (traker's default); 0 = no projection", ge=0)
        damping: float = param(0.1,
                               "traker's lambda_reg, as a fraction of the mean squared feature norm", ge=0)
        batch_size: int = param(200,
                                "examples per featurize/score call (one projection-matrix pass each)", ge=1)
        projector_seed: int = param(0, "seed of the random projection")

    def __init__(self, config: Config) -> None:
        self.config = config

    def _batches(self, examples: list[Example]):
        tokenizer = self.reference.lm.tokenizer
        encoded = lm.encode(tokenizer, examples, self.model_spec)
        for rows, batch in gradients.batches(encoded, self.config.batch_size, tokenizer.pad_token_id):
            batch = lm.to_device(batch, lm.model_device(self.reference.lm.model))
            yield rows.stop - rows.start, (batch["input_ids"], batch["attention_mask"], batch["labels"])

    def fit(self, pool: list[Example], context: FitContext) -> None:
        trak = require("trak", "trak", "trak")
        c = self.config
        torch.manual_seed(context.seed)
        self.reference = gradients.reference_model(context)
        self.model_spec = context.spec.model
        model = self.reference.lm.model
        model.requires_grad_(False)  # torch.func differentiates the tracked weights by itself
        if hasattr(model, "set_attn_implementation"):  # else an older transformers
            model.set_attn_implementation("eager")  # torch.func.vmap cannot batch the SDPA mask path
        else:
            model.config._attn_implementation = "eager"
        modules = gradients.tracked_modules(model, self.model_spec, c.tracked)
        save_dir = context.workdir / "trak"
        shutil.rmtree(save_dir, ignore_errors=True)  # traker resumes from what it finds there
        # projector None: traker's CudaProjector on a GPU (fast_jl), its BasicProjector on the CPU
        projector = trak.projectors.NoOpProjector(device=context.device) if c.proj_dim == 0 else None
        self.traker = trak.TRAKer(
            model=model, task=model_output_class()(), train_set_size=len(pool),
            save_dir=str(save_dir), device=context.device,
            projector=projector, proj_dim=c.proj_dim, use_half_precision=False,
            projector_seed=c.projector_seed, grad_wrt=list(gradients.tracked_parameters(modules)),
            gradient_computer=tracked_gradient_computer(), logging_level=logging.WARNING)
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.traker.load_checkpoint(self.state, model_id=0)
        for n, batch in self._batches(pool):
            self.traker.featurize(batch=batch, num_samples=n)
        features = np.asarray(self.traker.saver.current_store["grads"], dtype=np.float64)  # (N, k)
        self.traker.score_computer.lambda_reg = c.damping * float(np.square(features).sum()) / len(pool)
        self.traker.finalize_features()
        projector = self.traker.projector
        if getattr(projector, "proj_matrix_available", True) is False:
            # traker 0.3.2 frees the projection matrix in finalize_features; with proj_dim <= 100
            # (one block) BasicProjector.project never regenerates it
            projector.generate_sketch_matrix(projector.generator_states[0])
        self.n_pool = len(pool)

    def score(self, targets: list[Example]) -> np.ndarray:
        self.traker.start_scoring_checkpoint(exp_name="targets", checkpoint=self.state, model_id=0,
                                             num_targets=len(targets))
        for n, batch in self._batches(targets):
            self.traker.score(batch=batch, num_samples=n)
        native = self.traker.finalize_scores(exp_name="targets")  # (n_train, n_targets)
        return gradients.to_scores(native, "trak", len(targets), self.n_pool)
