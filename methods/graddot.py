"""graddot, gradcos: similarity of per-example loss gradients at the reference model.

The reference model is the base target LM fine-tuned on the whole pool with the task's recipe
(:func:`tdabench.gradients.reference_model`). A pool example's gradient is that of its summed
response-token cross-entropy, a target's that of its mean response-token cross-entropy (the
protocol's model output), both with respect to the tracked weights (``tracked``: ``"mlp"``, the
blocks' MLP linear layers, or ``"linear"``, every linear layer of the blocks). The score is
their dot product (graddot) or cosine (gradcos, ``normalize=True``): a gradient step on a pool
example with a positive score lowers the target's loss, so higher = more helpful.

Pool gradients are held in memory: N x P float32 (P = tracked parameters; 800 x 393k = 1.2 GiB
on chatterbot/tiny with ``"mlp"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tdabench import gradients, lm
from tdabench.method import FitContext
from tdabench.spec import Example
from tdabench.typed import param


class GradDot:
    @dataclass
    class Config:
        tracked: Literal[gradients.TRACKED] = param(gradients.DEFAULT_TRACKED,
                                                    "layers whose gradients are used: MLPs or all linear")
        normalize: bool = param(False, "true: cosine of the gradients (gradcos)")
        batch_size: int = param(32, "examples per forward/backward pass", ge=1)

    def __init__(self, config: Config) -> None:
        self.config = config

    def _gradients(self, examples: list[Example], loss: str) -> torch.Tensor:
        encoded = lm.encode(self.reference.lm.tokenizer, examples, self.model_spec)
        g = gradients.per_example_gradients(self.reference.lm.model, self.modules, encoded,
                                            self.reference.lm.tokenizer.pad_token_id, loss,
                                            self.config.batch_size)
        if self.config.normalize:
            g /= g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return g

    def fit(self, pool: list[Example], context: FitContext) -> None:
        torch.manual_seed(context.seed)
        self.reference = gradients.reference_model(context)
        self.model_spec = context.spec.model
        self.modules = gradients.tracked_modules(self.reference.lm.model, self.model_spec,
                                                 self.config.tracked)
        self.pool_gradients = self._gradients(pool, "train")  # (N, P)

    def score(self, targets: list[Example]) -> np.ndarray:
        scores = self._gradients(targets, "measurement") @ self.pool_gradients.T
        return gradients.to_scores(scores, "gradients", len(targets), len(self.pool_gradients))


class GradCos(GradDot):
    @dataclass
    class Config(GradDot.Config):
        normalize: bool = param(True, "true: cosine of the gradients (gradcos)")
