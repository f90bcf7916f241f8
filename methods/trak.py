"""trak: TRAK (Park et al., 2023) through MadryLab's ``traker`` (import ``trak``).

One TRAKer featurizes the pool at each of ``n_models`` independently trained reference models
and scores the targets with all of them, as TRAK's ensemble (traker's ``load_checkpoint(...,
model_id=i)`` loop). Model i is the base LM fine-tuned with seed ``context.seed + i``
(:func:`tdabench.method.gradients.prepare`) on its own seeded random subset of the ground truth's
subset size (``checkpoint="subset"``, the default), on a random half (``"half"``, the TRAK
paper's models) or on the whole pool (``"pool"``: models differ in their data order only);
``"base"`` allows one model. The ensemble is traker's
(``TRAKer.finalize_scores``, traker 0.3.2): with S_i = Phi_i (X_i^T X_i + lambda_i)^-1
X_target,i^T of model i and Q_i its out-to-loss vector over the pool,
score = (sum_i S_i / M) * (sum_i Q_i / M), the mean single-model score times the mean Q, not
the mean of the single models' Q-weighted scores; traker also draws model i's projection from
``projector_seed + 10^4 i``. lambda_i is set from model i's own features (below). The model output is
our own causal-LM one (``CausalLMOutput``): the sum over an example's response tokens of the
log-odds log(p / (1 - p)) of the correct next token, TRAK's margin applied per token; the
out-to-loss term Q of a pool example is the mean over its response tokens of 1 - p. Gradients
are taken with respect to the tracked weights only (``tracked``: ``"mlp"`` or ``"linear"``, as
for graddot) by traker's ``torch.func`` gradient computer, restricted to those weights (traker
would differentiate every parameter and drop the rest), on the model's eager attention (vmap
cannot batch the SDPA mask path).

``projector="kron:K"`` replaces traker's projector with a Kronecker sketch of each tracked
layer's gradient, R_o^T G R_i with K x K per layer (:func:`kronecker_projector`; unbiased dot
products like the dense JL, a different variance, no P x k matrix): a named departure for P too
large for a dense projection on a CPU. The default, ``"dense"``, is TRAK's:

On CPU traker uses its dense Gaussian projector (``BasicProjector``), here in float32
(``use_half_precision=False``): projecting costs N x P x ``proj_dim`` multiply-adds, most of the
fit time (P = tracked weights). ``proj_dim = 0`` skips the projection (exact gradients; only for
small P). ``damping`` sets traker's ridge term ``lambda_reg`` on X^T X to that fraction of
trace(X^T X) / N (the mean eigenvalue of the N x N kernel X X^T, which the projection scales
by ``proj_dim``, so a damping means the same at every ``proj_dim``). Without it X^T X is singular
once ``proj_dim`` exceeds the pool size.

Settings chosen with ``tdabench tune`` on chatterbot/tiny's tuning subsets only (grids, trials
and CSVs in ``results/configs.json``, key ``_tuned``): ``damping`` over 0.01 to 30 at one model
(0.18 at 0.01, 0.26 at 0.1, 0.35 at 1, 0.37 at 3, 0.36 at 10); ``n_models`` 1, 2, 5, 10 at damping
3 (LDS 0.37, 0.41, 0.45, 0.45: 10 models add 0.005 for twice the cost, so 5); ``checkpoint`` at
5 models: "subset" 0.56, "half" 0.53, "pool" 0.45, so each model is fine-tuned on its own random
subset of the ground truth's subset size (the TRAK paper's models see random halves); at that
ensemble damping 3 still led (1: 0.556, 3: 0.564, 10: 0.538).
traker returns (n_train, n_targets), higher = more
helpful; :func:`tdabench.method.gradients.to_scores` transposes it.

Memory and time, with M models, N pool and T target examples, P tracked weights, k =
``proj_dim``: features M x (N + T) x k x 4 bytes (traker's store, on disk) and its k x k kernel
inverse; one batch's per-example gradients B x P x 4 bytes while they are projected; on the CPU,
``BasicProjector`` draws its Gaussian in blocks of P x k for every batch, so a fit costs M x
(N + T) x (a forward and backward pass) plus M x (N + T) / B x P x k random draws and M x (N + T)
x P x k multiply-adds. That last term is what does not scale on a CPU: at P = 314M (Qwen2.5-0.5B's
MLPs) and k = 2048 it is 6.4e11 multiply-adds and as many draws per example, minutes each on two
cores; on a GPU traker's CUDA projector makes the draws on the fly. Scoring: T x N x k per model.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from tdabench import lm
from tdabench.errors import ConfigError
from tdabench.method import FitContext, Method, gradients, require
from tdabench.seeds import ensemble_member_seed
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


# Bytes that one vmap call of the gradient computer may hold, estimated per example as its
# gradient (P floats) and three (L, V) float tensors of its output (logits, their masked copy,
# their gradient). At ``small`` (P = 5.3M, L = 128, V = 49,152: 97 MB an example) a 200-example
# batch in one call needed more than the machine's 24 GB; the ``tiny`` batches fit in one call.
VMAP_BYTES = 2**31


def kronecker_projector(modules: dict[str, torch.nn.Linear], k: int, seed: int, device: str):
    """A traker projector that sketches each tracked layer's per-example gradient as
    :class:`tdabench.method.gradients.KroneckerProjection` does (``projector="kron:K"``), model
    i's drawn from ``seed + 10^4 i`` as traker draws its own. A departure from TRAK's dense JL
    projection: the same unbiased dot products, a different variance, and no P x k matrix."""
    trak = require("trak", "trak", "trak")

    class KroneckerProjector(trak.projectors.AbstractProjector):
        def __init__(self) -> None:
            self.sketches: dict[int, gradients.KroneckerProjection] = {}
            width = gradients.KroneckerProjection(modules, k, seed, "cpu").width
            super().__init__(gradients.n_tracked(modules), width, seed, "normal", device)

        def project(self, grads, model_id: int) -> torch.Tensor:
            if model_id not in self.sketches:
                self.sketches[model_id] = gradients.KroneckerProjection(
                    modules, k, self.seed + 10**4 * model_id, self.device)
            if isinstance(grads, dict):  # traker's own (unchunked) gradients: the weights in order
                grads = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
            return self.sketches[model_id].sketch_flat(grads)

    return KroneckerProjector()


def tracked_gradient_computer():
    trak = require("trak", "trak", "trak")

    class TrackedGradientComputer(trak.gradient_computers.FunctionalGradientComputer):
        """traker's vmap gradient computer, differentiating only the ``grad_wrt`` weights (traker
        differentiates every parameter and drops the others afterwards: the embedding's per-example
        gradients alone are V x d each). A batch that would hold more than :data:`VMAP_BYTES` is
        differentiated in pieces whose gradients are flattened into one (B, P) tensor, what
        traker's projectors make of its dict (``vectorize``: the weights in order, each
        flattened), so the batch is still projected in one pass."""

        def load_model_params(self, model) -> None:
            super().load_model_params(model)
            keep = getattr(self, "grad_wrt", None)  # set after the first call, in __init__
            if keep is not None:
                keep = set(keep)
                self.func_weights = {k: v for k, v in self.func_weights.items() if k in keep}

        def compute_per_sample_grad(self, batch):
            rows, length = batch[0].shape
            n_weights = sum(w.numel() for w in self.func_weights.values())
            n_vocab = self.model.get_output_embeddings().out_features
            step = max(1, VMAP_BYTES // (4 * (n_weights + 3 * length * n_vocab)))
            if step >= rows:
                return super().compute_per_sample_grad(batch)
            flat = None
            for start in range(0, rows, step):
                grads = super().compute_per_sample_grad([x[start:start + step] for x in batch])
                piece = torch.cat([g.flatten(1) for g in grads.values()], dim=1)
                if flat is None:
                    flat = piece.new_empty(rows, piece.shape[1])
                flat[start:start + len(piece)] = piece
            return flat

    return TrackedGradientComputer


class Trak(Method):
    FAMILY = "gradient"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"damping": [1.0, 3.0, 10.0], "checkpoint": ["half", "subset"]}
    @dataclass
    class Config(gradients.GradientConfig):
        checkpoint: gradients.OneModelCheckpoint = param(
            "subset", "each reference model's training data (tuned; TRAK's: half)")
        n_models: int = param(5, "independently trained reference models in the ensemble; tuned", ge=1)
        proj_dim: int = param(2048, "JL projection dimension (traker's default); 0 = no projection", ge=0)
        damping: float = param(3.0, "traker's lambda_reg, as a fraction of the mean squared feature "
                               "norm; tuned", ge=0)
        batch_size: int = param(200,
                                "examples per featurize/score call (one projection-matrix pass each)", ge=1)
        projector_seed: int = param(0, "seed of the random projection")
        projector: str = param("dense", "dense: traker's Gaussian JL projection to proj_dim (TRAK's); "
                                        "kron:K: a K x K Kronecker sketch of each tracked layer's "
                                        "gradient (proj_dim is then layers x K^2; for P too large "
                                        "for a dense projection on a CPU)", added=True)

    def check_config(self) -> None:
        if self.config.checkpoint == "base" and self.config.n_models > 1:
            raise ConfigError(f"n_models must be 1 with checkpoint='base' (there is one base model), "
                              f"not {self.config.n_models}")
        if not re.fullmatch(r"dense|kron:[1-9][0-9]*", self.config.projector):
            raise ConfigError(f"projector must be 'dense' or 'kron:K' (K >= 1), not "
                              f"{self.config.projector!r}")

    def _batches(self, encoded: list):
        """Batches of tokenised examples on the device, with their sizes."""
        for rows, batch in gradients.batches(encoded, self.config.batch_size, self.tokenizer.pad_token_id):
            batch = lm.to_device(batch, self.device)
            yield rows.stop - rows.start, (batch["input_ids"], batch["attention_mask"], batch["labels"])

    def _reference(self, context: FitContext, i: int) -> torch.nn.Module:
        """Reference model i: fine-tuned with seed ``context.seed + i`` (on its own random half
        of the pool with ``checkpoint="half"``), on eager attention, no weight requiring grad."""
        prepared = gradients.prepare(context, self.config.tracked, self.config.checkpoint,
                                     seed=ensemble_member_seed(context.seed, i))
        self.tokenizer, self.model_spec = prepared.lm.tokenizer, prepared.model_spec
        model = prepared.lm.model
        model.requires_grad_(False)  # torch.func differentiates the tracked weights by itself
        if hasattr(model, "set_attn_implementation"):  # else an older transformers
            model.set_attn_implementation("eager")  # torch.func.vmap cannot batch the SDPA mask path
        else:
            model.config._attn_implementation = "eager"
        self.grad_wrt = list(gradients.tracked_parameters(prepared.modules))
        self.modules = prepared.modules
        return model

    def _traker(self, model: torch.nn.Module, n_pool: int, context: FitContext):
        trak = require("trak", "trak", "trak")
        c = self.config
        save_dir = context.workdir / "trak"
        shutil.rmtree(save_dir, ignore_errors=True)  # traker resumes from what it finds there
        # projector None: traker's CudaProjector on a GPU (fast_jl), its BasicProjector on the CPU
        projector = trak.projectors.NoOpProjector(device=context.device.name) if c.proj_dim == 0 else None
        proj_dim = c.proj_dim
        if c.projector != "dense":
            projector = kronecker_projector(self.modules, int(c.projector.split(":")[1]), c.projector_seed,
                                            context.device.name)
            proj_dim = projector.proj_dim
        return trak.TRAKer(
            model=model, task=model_output_class()(), train_set_size=n_pool,
            save_dir=str(save_dir), device=context.device.name,
            projector=projector, proj_dim=proj_dim, use_half_precision=False,
            projector_seed=c.projector_seed, grad_wrt=self.grad_wrt,
            gradient_computer=tracked_gradient_computer(), logging_level=logging.WARNING)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        require("trak", "trak", "trak")
        self.device = context.device.name  # where prepare put the models and traker works
        # per model, for scoring: model 0's whole state; model i > 0's entries that differ from
        # it (with trainable="top:K" the top blocks only: at small 5 full copies were 2.7 GB)
        self.states: list[dict[str, torch.Tensor]] = []
        for i in range(self.config.n_models):
            model = self._reference(context, i)
            if i == 0:
                self.traker = self._traker(model, len(pool), context)
                encoded = lm.encode(self.tokenizer, pool, self.model_spec)  # once for every model
            base = self.states[0] if self.states else {}
            self.states.append({k: v.clone() for k, v in model.state_dict().items()
                                if k not in base or not torch.equal(v, base[k])})
            self._featurize(i, encoded)
        self.n_pool = len(pool)

    def _state(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's whole state dict (what traker loads: strictly, every entry)."""
        return self.states[0] if i == 0 else {**self.states[0], **self.states[i]}

    def _featurize(self, i: int, pool: list) -> None:
        """Featurize the pool at model i and finalize its features with its own damping."""
        self.traker.load_checkpoint(self._state(i), model_id=i)
        for n, batch in self._batches(pool):
            self.traker.featurize(batch=batch, num_samples=n)
        features = np.asarray(self.traker.saver.current_store["grads"], dtype=np.float64)  # (N, k)
        lambda_reg = self.config.damping * float(np.square(features).sum()) / len(pool)
        self.traker.score_computer.lambda_reg = lambda_reg
        self.traker.finalize_features(model_ids=[i])
        projector = self.traker.projector
        if getattr(projector, "proj_matrix_available", True) is False:
            # traker 0.3.2 frees the projection matrix in finalize_features; with proj_dim <= 100
            # (one block) BasicProjector.project never regenerates it
            projector.generate_sketch_matrix(projector.generator_states[0])

    def score(self, targets: list[Example]) -> np.ndarray:
        encoded = lm.encode(self.tokenizer, targets, self.model_spec)  # once for every model
        for i in range(len(self.states)):
            self.traker.start_scoring_checkpoint(exp_name="targets", checkpoint=self._state(i),
                                                 model_id=i, num_targets=len(targets))
            for n, batch in self._batches(encoded):
                self.traker.score(batch=batch, num_samples=n)
        native = self.traker.finalize_scores(exp_name="targets")  # (n_train, n_targets), all models
        # traker 0.3.2, TRAKer.finalize_scores: (n_train, n_targets). The score predicts the change
        # of the target's model output (our causal-LM output: log-odds of the correct response
        # tokens) when the train example is included: positive raises its likelihood = helpful.
        return gradients.to_scores(native, "NT", +1, len(targets), self.n_pool, "traker")
