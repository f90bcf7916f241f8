"""less: LESS (Xia et al., 2024), Adam-preconditioned LoRA gradient cosine over warm-up checkpoints.

Read beside princeton-nlp/LESS (``less/data_selection/collect_grad_reps.py`` and its warm-up
scripts); departures are marked *.

1. Warm-up: LoRA adapters (peft, no dropout) on the tracked linear layers (``tracked``) of the
   model ``checkpoint`` names (default ``"base"``: LESS warms up the pretrained model) are
   trained with the task's recipe (``lm.finetune``: AdamW, its lr unless ``lr`` is set, batch
   size, clipping) for ``warmup_epochs`` epochs (LESS: 4) on a seeded random part of the pool.
   After every epoch the LoRA weights and AdamW's moments (m, v) are kept: one checkpoint per
   epoch.
   *Size.* LESS warms up on 5% of its pool (``warmup_fraction``), some 13k examples, hundreds
   of Adam steps; 5% of an 800-example pool is 40 examples, 3 steps an epoch, too few to form
   the moments. The part is therefore enlarged until the warm-up makes ``min_warmup_steps``
   (default 100) optimizer steps: 400 examples (25 steps x 4 epochs at batch 16) on the tiny
   presets; the pool caps it.
   *Layers.* LESS adapts the attention projections q, k, v, o (``tracked="attention"``). The
   default here is ``"linear"`` (attention and MLP): on chatterbot/tiny's tuning subsets it
   gave LDS 0.357 against 0.282 for attention only (``tdabench tune``, 20 subsets; CSV in
   ``results/chatterbot/tiny/tuning/less-settings.csv``); on the tiny model the attention
   projections hold a quarter of a block's weights (4 x 128^2 of 4 x 128^2 + 3 x 128 x 512).
   *Rank.* LESS uses r = 128, alpha = 512 on 4096-wide models: r = d_model / 32 and a LoRA scale
   alpha / r = 4. ``lora_rank = 0`` and ``lora_alpha = 0`` keep those ratios at the task's width
   (r = 4, alpha = 16 at d_model = 128). The default rank is 16 (alpha 0: still 4 x rank), the
   tuning winner: 0.394 against 0.375 for r = 4, both without projection (``tdabench tune``,
   ``results/chatterbot/tiny/tuning/less-proj-rank.csv``).
2. Features at checkpoint c, on the LoRA weights only (P of them): a pool example's is the Adam
   update its own gradient g would make, :func:`adam_term` = m' / sqrt(v' + eps) with
   m' = b1 m + (1 - b1) g and v' = b2 v + (1 - b2) g^2 (LESS's ``obtain_gradients_with_adam``:
   eps inside the square root, no bias correction; b1, b2, eps = AdamW's 0.9, 0.999, 1e-8, the
   values LESS hard-codes); a target's is its plain gradient (LESS's SGD gradients). g is the
   gradient of the example's mean response-token cross-entropy (LESS: the model's mean token
   loss of one example). Both are projected by one seeded Gaussian (P -> ``proj_dim``, drawn
   once; ``proj_dim = 0``: no projection, the default, chosen on the tuning subsets (0.394
   against 0.363 at 1024); *LESS projects millions of LoRA weights to 8192 with traker's
   Rademacher projector, a storage need the tiny models do not have) and scaled to unit norm.
3. score(x, z) = sum over checkpoints c of lr_c * cos(target feature, pool feature), lr_c the
   (constant) learning rate of epoch c. An Adam step along z's update direction lowers the
   target's loss by lr * g_x . Gamma_z to first order, so higher = more helpful.

The loop over checkpoints is :class:`tdabench.method.innerproduct.InnerProductMethod`; pool features
(checkpoints x N x ``proj_dim`` float32, or x P without projection: P = 94k LoRA weights, 300 MB
per checkpoint on chatterbot/tiny) go to the work directory; a projection matrix takes
P x ``proj_dim`` x 4 bytes. Memory and time, with C checkpoints, N pool and T target examples, P
LoRA weights (r x (O + I) per adapted layer) and k = ``proj_dim`` (P without projection): features
C x N x k x 4 bytes, the projection P x k x 4; time: the warm-up's steps, then C x (N + T) x (a
forward and backward pass + P x k for the projection) + C x T x N x k for the scores. At
Qwen2.5-0.5B with r = 16 on every linear layer, P is 8.8M, so LESS's k = 8192 projection is a
288 GB matrix: the authors' CUDA projector makes it on the fly; here projection is for the small
tiers only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from tdabench import lm
from tdabench.method import FitContext, gradients, require
from tdabench.method.innerproduct import InnerProductMethod
from tdabench.methods.graddot import unit
from tdabench.seeds import pool_part_rng
from tdabench.spec import Example
from tdabench.typed import param


def adam_term(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, betas: tuple[float, float],
              eps: float) -> torch.Tensor:
    """(n, P) LESS's Adam update direction of each gradient row g given AdamW's moments (P,):
    (b1 m + (1 - b1) g) / sqrt(b2 v + (1 - b2) g^2 + eps)."""
    b1, b2 = betas
    return (b1 * m + (1 - b1) * g) / (b2 * v + (1 - b2) * g.square() + eps).sqrt()


@dataclass
class Checkpoint(gradients.State):
    """A warm-up checkpoint: the LoRA weights and AdamW's moments after one epoch."""

    weights: list[torch.Tensor] | None = None
    m: torch.Tensor | None = None  # (P,) exp_avg
    v: torch.Tensor | None = None  # (P,) exp_avg_sq
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def lora_size(rank: int, alpha: float, d_model: int) -> tuple[int, float]:
    """(r, alpha): as given, or LESS's ratios (r = d_model / 32, alpha = 4 r) where 0."""
    rank = rank or max(1, d_model // 32)
    return rank, alpha or 4.0 * rank


class LESS(InnerProductMethod):
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"tracked": ["attention", "linear"], "checkpoint": ["base", "pool"]}
    @dataclass
    class Config(gradients.GradientConfig):
        tracked: gradients.TrackedName = param(
            "linear", "layers that get LoRA adapters (LESS: attention, q, k, v, o); tuned")
        checkpoint: gradients.OneModelCheckpoint = param(
            "base", "the model the warm-up starts from (LESS: the pretrained LM)")
        lora_rank: int = param(16, "LoRA rank; tuned; 0: LESS's ratio d_model / 32", ge=0)
        lora_alpha: float = param(0.0, "LoRA scale = lora_alpha / lora_rank; 0: 4 x rank (LESS: 512 / 128)",
                                  ge=0)
        warmup_fraction: float = param(0.05,
                                       "share of the pool the LoRA warm-up trains on (LESS: 5%)", gt=0, le=1)
        min_warmup_steps: int = param(100, "the share grows until the warm-up makes this many steps", ge=0)
        warmup_epochs: int = param(4, "one checkpoint after each epoch (LESS: 4)", ge=1)
        lr: float | None = param(None, "warm-up learning rate; none: the task's fine-tuning lr", gt=0)
        proj_dim: int = param(0, "random projection dimension; 0 = no projection (tuned)", ge=0)
        projector_seed: int = param(0, "seed of the random projection")

    def setup(self, pool: list[Example], context: FitContext) -> gradients.Prepared:
        peft = require("peft", "less", "less")
        c = self.config
        base = gradients.prepare(context, c.tracked, c.checkpoint)  # seeds LoRA's A matrices
        model, names = base.lm.model, list(base.modules)
        rank, alpha = lora_size(c.lora_rank, c.lora_alpha, context.spec.model.d_model)
        peft.inject_adapter_in_model(peft.LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=names), model)
        modules = {f"{n}.{ab}.default": model.get_submodule(f"{n}.{ab}.default")
                   for n in names for ab in ("lora_A", "lora_B")}
        self.params = list(gradients.tracked_parameters(modules).values())
        prepared = gradients.Prepared(base.lm, base.model_spec, modules, [])
        prepared.states = self._warm_up(prepared, pool, context)
        n_params = sum(p.numel() for p in self.params)
        self.projection = (gradients.GaussianProjection(n_params, c.proj_dim, c.projector_seed,
                                                        context.device.name) if c.proj_dim else None)
        return prepared

    def warmup_examples(self, pool: list[Example], batch_size: int, seed: int) -> list[Example]:
        """A seeded random part of the pool: ``warmup_fraction`` of it, or enough for
        ``min_warmup_steps`` optimizer steps over ``warmup_epochs`` epochs, whichever is larger."""
        c = self.config
        for_steps = math.ceil(c.min_warmup_steps / c.warmup_epochs) * batch_size
        n = min(len(pool), max(1, round(c.warmup_fraction * len(pool)), for_steps))
        rng = pool_part_rng(seed)
        return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]

    def _warm_up(self, prepared: gradients.Prepared, pool: list[Example], context: FitContext
                 ) -> list[Checkpoint]:
        """lm.finetune of the LoRA weights; AdamW's state kept after each epoch."""
        c, spec, tokenizer = self.config, context.spec, prepared.lm.tokenizer
        recipe = replace(spec.finetune, epochs=c.warmup_epochs, lr=c.lr or spec.finetune.lr)
        warm = self.warmup_examples(pool, recipe.batch_size, context.seed)
        steps = math.ceil(len(warm) / recipe.batch_size)
        kept: list[Checkpoint] = []

        def snapshot(optimizer, args, kwargs) -> None:
            if int(optimizer.state[self.params[0]]["step"]) % steps == 0:
                group = optimizer.param_groups[0]
                kept.append(Checkpoint(
                    None, group["lr"], [p.detach().clone() for p in self.params],
                    torch.cat([optimizer.state[p]["exp_avg"].flatten() for p in self.params]),
                    torch.cat([optimizer.state[p]["exp_avg_sq"].flatten() for p in self.params]),
                    tuple(group["betas"]), group["eps"]))

        handle = register_optimizer_step_post_hook(snapshot)
        try:
            lm.finetune(prepared.lm.model, self.params, lm.encode(tokenizer, warm, spec.model), recipe,
                        seed=context.seed, pad_id=tokenizer.pad_token_id)
        finally:
            handle.remove()
        if len(kept) != c.warmup_epochs:
            raise RuntimeError(f"kept {len(kept)} warm-up checkpoints, expected {c.warmup_epochs}")
        return kept

    def load(self, state: Checkpoint) -> None:
        with torch.no_grad():
            for p, w in zip(self.params, state.weights):
                p.copy_(w)

    def train_rep(self, state: Checkpoint, examples: list[Example]) -> torch.Tensor:
        """(n, P) the Adam update direction of each pool example at ``state``."""
        return adam_term(self.gradients(examples, "measurement"), state.m, state.v, state.betas,
                         state.eps)

    def target_rep(self, state: Checkpoint, examples: list[Example]) -> torch.Tensor:
        """(n, P) each target's plain gradient (LESS's SGD gradient of the validation set)."""
        return self.gradients(examples, "measurement")

    def transform_train(self, state: Checkpoint, rep: torch.Tensor) -> torch.Tensor:
        """(n, P) -> (n, k): projected and scaled to unit norm."""
        return unit(self.projection(rep) if self.projection is not None else rep)

    transform_target = transform_train
