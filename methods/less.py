"""less: LESS (Xia et al., 2024), Adam-preconditioned LoRA gradient cosine over warm-up checkpoints.

1. Warm-up: LoRA adapters (peft; rank ``lora_rank``, scale ``lora_alpha / lora_rank``, no
   dropout) on the tracked linear layers of the task's **base** LM (``tracked``: ``"mlp"`` or
   ``"linear"``; LESS adapts the attention projections, hence ``"linear"``) are trained with the
   task's recipe (``lm.finetune``: AdamW, its lr unless ``lr`` is set, batch size, clipping) for
   ``warmup_epochs`` epochs on a seeded random ``warmup_fraction`` of the pool. After every epoch
   the LoRA weights and AdamW's moments (m, v) are kept: one checkpoint per epoch.
2. Features at checkpoint c, on the LoRA weights only (P of them): a pool example's is the Adam
   update its own gradient g would make, m' / (sqrt(v') + eps) with m' = b1 m + (1 - b1) g and
   v' = b2 v + (1 - b2) g^2 (LESS's Gamma, no bias correction); a target's is its plain gradient.
   g is the gradient of the example's mean response-token cross-entropy (the protocol's model
   output, and the per-token scale the optimizer's moments were built with). Both are projected
   by one seeded Gaussian (P -> ``proj_dim``, drawn once; ``proj_dim = 0``: no projection) and
   scaled to unit norm.
3. score(x, z) = sum over checkpoints c of lr_c * cos(target feature, pool feature), lr_c the
   (constant) learning rate of epoch c. An Adam step along z's update direction lowers the
   target's loss by lr * g_x . Gamma_z to first order, so higher = more helpful.

Pool features are held in memory: checkpoints x N x ``proj_dim`` float32; the projection matrix
takes P x ``proj_dim`` x 4 bytes (about 190 MiB on the tiny presets with the defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from tdabench import gradients, lm
from tdabench.method import FitContext, require
from tdabench.spec import Example
from tdabench.typed import param


class LESS:
    @dataclass
    class Config:
        tracked: Literal[gradients.TRACKED] = param("linear",
                                                    "layers that get LoRA adapters: MLPs or all linear")
        lora_rank: int = param(8, "LoRA rank", ge=1)
        lora_alpha: float = param(32.0, "LoRA scale = lora_alpha / lora_rank (LESS: 512 / 128 = 4)", gt=0)
        warmup_fraction: float = param(0.05,
                                       "share of the pool the LoRA warm-up trains on (LESS: 5%)", gt=0, le=1)
        warmup_epochs: int = param(4, "one checkpoint after each epoch (LESS: 4)", ge=1)
        lr: float | None = param(None, "warm-up learning rate; none: the task's fine-tuning lr", gt=0)
        proj_dim: int = param(1024, "random projection dimension; 0 = no projection", ge=0)
        batch_size: int = param(32, "examples per forward/backward pass", ge=1)
        projector_seed: int = param(0, "seed of the random projection")

    def __init__(self, config: Config) -> None:
        self.config = config

    def fit(self, pool: list[Example], context: FitContext) -> None:
        peft = require("peft", "less", "less")
        c, spec = self.config, context.spec
        torch.manual_seed(context.seed)  # LoRA's A matrices
        target = lm.load_base_model(spec.model, context.data.warmup, context.data.pool)
        target.model.to(context.device)
        self.model, self.tokenizer, self.model_spec = target.model, target.tokenizer, spec.model
        names = list(gradients.tracked_modules(self.model, spec.model, c.tracked))
        peft.inject_adapter_in_model(peft.LoraConfig(
            r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=0.0, target_modules=names), self.model)
        self.modules = {f"{n}.{ab}.default": self.model.get_submodule(f"{n}.{ab}.default")
                        for n in names for ab in ("lora_A", "lora_B")}
        self.params = list(gradients.tracked_parameters(self.modules).values())

        # warm-up: lm.finetune on a random share of the pool; AdamW's state kept after each epoch
        rng = np.random.default_rng(context.seed)
        n_warm = max(1, round(c.warmup_fraction * len(pool)))
        warm = [pool[i] for i in sorted(rng.choice(len(pool), n_warm, replace=False))]
        recipe = replace(spec.finetune, epochs=c.warmup_epochs, lr=c.lr or spec.finetune.lr)
        steps = math.ceil(n_warm / recipe.batch_size)
        self.checkpoints: list[dict] = []

        def snapshot(optimizer, args, kwargs) -> None:
            state = optimizer.state[self.params[0]]
            if int(state["step"]) % steps == 0:
                b1, b2 = optimizer.param_groups[0]["betas"]
                self.checkpoints.append({
                    "weights": [p.detach().clone() for p in self.params],
                    "m": torch.cat([optimizer.state[p]["exp_avg"].flatten() for p in self.params]),
                    "v": torch.cat([optimizer.state[p]["exp_avg_sq"].flatten() for p in self.params]),
                    "betas": (b1, b2), "eps": optimizer.param_groups[0]["eps"],
                    "lr": optimizer.param_groups[0]["lr"]})

        handle = register_optimizer_step_post_hook(snapshot)
        try:
            lm.finetune(self.model, self.params, lm.encode(self.tokenizer, warm, spec.model), recipe,
                        seed=context.seed, pad_id=self.tokenizer.pad_token_id)
        finally:
            handle.remove()
        if len(self.checkpoints) != c.warmup_epochs:
            raise RuntimeError(f"kept {len(self.checkpoints)} warm-up checkpoints, "
                               f"expected {c.warmup_epochs}")

        n_params = sum(p.numel() for p in self.params)
        self.projection = (gradients.GaussianProjection(n_params, c.proj_dim, c.projector_seed,
                                                        context.device) if c.proj_dim else None)
        self.pool_features = []  # per checkpoint: (N, k), unit rows
        for checkpoint in self.checkpoints:
            b1, b2 = checkpoint["betas"]
            chunks = []
            for start in range(0, len(pool), 256):  # bounds the (n, P) temporaries
                g = self._gradients(checkpoint, pool[start:start + 256])
                m = b1 * checkpoint["m"] + (1 - b1) * g
                v = b2 * checkpoint["v"] + (1 - b2) * g.square()
                chunks.append(self._features(m / (v.sqrt() + checkpoint["eps"])))
            self.pool_features.append(torch.cat(chunks))

    def _gradients(self, checkpoint: dict, examples: list[Example]) -> torch.Tensor:
        """(n, P) gradients of each example's mean response-token cross-entropy w.r.t. the LoRA
        weights of ``checkpoint``."""
        with torch.no_grad():
            for p, w in zip(self.params, checkpoint["weights"]):
                p.copy_(w)
        encoded = lm.encode(self.tokenizer, examples, self.model_spec)
        return gradients.per_example_gradients(self.model, self.modules, encoded,
                                               self.tokenizer.pad_token_id, "measurement",
                                               self.config.batch_size)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) -> (n, k): projected and scaled to unit norm."""
        if self.projection is not None:
            x = self.projection(x)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)

    def score(self, targets: list[Example]) -> np.ndarray:
        total = torch.zeros(len(targets), len(self.pool_features[0]), dtype=torch.float64,
                            device=self.pool_features[0].device)
        for checkpoint, pool_features in zip(self.checkpoints, self.pool_features):
            t = self._features(self._gradients(checkpoint, targets))
            total += checkpoint["lr"] * (t @ pool_features.T).double()
        return gradients.to_scores(total, "gradients", len(targets), len(self.pool_features[0]))
