"""tracin: TracIn-CP, lr-weighted gradient dot products summed over the epoch checkpoints.

TracIn-CP (Pruthi et al., 2020). Checkpoints are those of the reference fine-tune on the whole pool
(:func:`tdabench.gradients.reference_model`): the weights after each epoch of the task's recipe
(the last is the final model). score(x, z) = sum over checkpoints c of lr * g_x(c) . g_z(c),
with g_z the gradient of the pool example's summed response-token cross-entropy and g_x that of
the target's mean response-token cross-entropy, over the tracked weights (``tracked``, as for
graddot). The recipe's AdamW preconditioning and gradient clipping are ignored (plain SGD
steps), as in TracIn-CP. Higher = more helpful.

Pool gradients are kept on disk in the method's work directory (one N x P float32 ``.npy`` per
checkpoint) and read back memory-mapped at scoring time.
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


class TracIn:
    @dataclass
    class Config:
        tracked: Literal[gradients.TRACKED] = param(gradients.DEFAULT_TRACKED,
                                                    "layers whose gradients are used: MLPs or all linear")
        batch_size: int = param(32, "examples per forward/backward pass", ge=1)

    def __init__(self, config: Config) -> None:
        self.config = config

    def _gradients(self, checkpoint, examples: list[Example], loss: str) -> torch.Tensor:
        model, tokenizer = self.reference.lm.model, self.reference.lm.tokenizer
        gradients.load_checkpoint(model, checkpoint)
        encoded = lm.encode(tokenizer, examples, self.model_spec)
        return gradients.per_example_gradients(model, self.modules, encoded, tokenizer.pad_token_id,
                                               loss, self.config.batch_size)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        torch.manual_seed(context.seed)
        self.reference = gradients.reference_model(context)
        self.model_spec = context.spec.model
        self.modules = gradients.tracked_modules(self.reference.lm.model, self.model_spec,
                                                 self.config.tracked)
        self.files = []
        context.workdir.mkdir(parents=True, exist_ok=True)
        for c, checkpoint in enumerate(self.reference.checkpoints):
            file = context.workdir / f"pool-gradients-{c}.npy"
            np.save(file, self._gradients(checkpoint, pool, "train").cpu().numpy())
            self.files.append(file)
        self.n_pool = len(pool)

    def score(self, targets: list[Example]) -> np.ndarray:
        total = np.zeros((len(targets), self.n_pool))
        for checkpoint, file in zip(self.reference.checkpoints, self.files):
            g = self._gradients(checkpoint, targets, "measurement").cpu().numpy()
            total += self.reference.lr * (g @ np.load(file, mmap_mode="r").T)
        return gradients.to_scores(total, "gradients", len(targets), self.n_pool)
