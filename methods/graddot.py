"""graddot, gradcos: similarity of per-example loss gradients at the reference model.

Gradients are taken where ``checkpoint`` says (:data:`tdabench.method.gradients.CHECKPOINTS`; default
``"subset"``: the base target LM fine-tuned with the task's recipe on a seeded random subset of
the ground truth's subset size, chosen with ``tdabench tune`` on chatterbot/tiny's tuning
subsets over base, pool, half, subset and trajectory, for graddot and gradcos alike). A pool
example's gradient is that of its summed response-token cross-entropy, a target's that of its
mean response-token cross-entropy (the protocol's model output), both with respect to the
tracked weights (``tracked``: ``"mlp"``, the blocks' MLP linear layers, ``"attention"``, or
``"linear"``, every linear layer of the blocks). The score is their dot product (graddot) or
cosine (gradcos, ``normalize=True``): a gradient step on a pool example with a positive score
lowers the target's loss, so higher = more helpful. With ``checkpoint="trajectory"`` the score is
summed over the epoch checkpoints, lr-weighted: that is TracIn (``tracin``).

The structure (states, representations, weighted sum) is
:class:`tdabench.method.innerproduct.InnerProductMethod`;
this adapter only adds the unit norm of gradcos. Pool gradients are held in memory: N x P float32
(P = tracked parameters; 800 x 393k = 1.2 GiB on chatterbot/tiny with ``"mlp"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tdabench.method import gradients
from tdabench.method.innerproduct import InnerProductMethod
from tdabench.typed import param


def unit(x: torch.Tensor) -> torch.Tensor:
    """(n, P) rows scaled to unit norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


class GradDot(InnerProductMethod):
    VERSION = 1  # bump when a change may move this adapter's numbers
    @dataclass
    class Config(gradients.GradientConfig):
        checkpoint: gradients.CheckpointName = param(
            "subset", gradients.CHECKPOINT_HELP + "; tuned on chatterbot/tiny (results/configs.json)")
        normalize: bool = param(False, "true: cosine of the gradients (gradcos)")

    def transform_train(self, state: gradients.State, rep: torch.Tensor) -> torch.Tensor:
        return unit(rep) if self.config.normalize else rep

    transform_target = transform_train


class GradCos(GradDot):
    VERSION = 1  # bump when a change may move this adapter's numbers
    @dataclass
    class Config(GradDot.Config):
        normalize: bool = param(True, "true: cosine of the gradients (gradcos)")
