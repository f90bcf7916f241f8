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
this adapter adds the unit norm of gradcos and the choice of exact or sketched gradients.

Exact or sketched (``projection``): ``"none"`` keeps every example's exact gradient over the P
tracked weights; ``"kron:K"`` keeps a Kronecker sketch of each tracked layer's, K x K per layer
(:class:`tdabench.method.gradients.KroneckerProjection`: an unbiased estimate of the exact dot
product, taken from the layer's factors without forming its gradient); ``"auto"`` (the default)
is exact while the pool's gradients, S states x N x P x 4 bytes, fit :data:`EXACT_BUDGET_BYTES`
(48 GiB: every committed record, the largest being tracin's 36 GB on bigbench/small, is exact),
and ``kron:``:data:`AUTO_K` otherwise, said on stderr and recorded (``resolved.projection``).
Memory and time, with L tracked layers of O x I weights, N pool and T target examples of about
t tokens, S states:

* exact: S x N x P x 4 bytes of pool gradients (in memory up to 4 GiB, then in chunks on disk,
  ``InnerProductMethod``), one batch's B x P x 4 bytes while they are taken (B capped so that this
  stays under 1 GiB); time S x (N + T) x (a forward and backward pass + t x P for the gradients)
  + S x T x N x P for the dot products;
* ``kron:K``: S x N x L x K^2 x 4 bytes (48 MB at N = 1,000 with K = 16 and 72 layers); time S x
  (N + T) x (a forward and backward pass + t x L x (O + I) x K) + S x T x N x L x K^2.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import torch

from tdabench.method import FitContext, gradients
from tdabench.method.innerproduct import InnerProductMethod
from tdabench.typed import param

# The pool gradients (all states) kept exact under "auto": above it, they are sketched.
EXACT_BUDGET_BYTES = 48 * 2**30
AUTO_K = 16  # "auto"'s sketch: 16 x 16 per tracked layer (256 floats); a memory choice, not tuned
PROJECTION = re.compile(r"auto|none|kron:[1-9][0-9]*")


def unit(x: torch.Tensor) -> torch.Tensor:
    """(n, P) rows scaled to unit norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)


class GradDot(InnerProductMethod):
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"checkpoint": ["base", "pool", "half", "subset", "trajectory"]}
    @dataclass
    class Config(gradients.GradientConfig):
        checkpoint: gradients.CheckpointName = param(
            "subset", gradients.CHECKPOINT_HELP + "; tuned on chatterbot/tiny (results/configs.json)")
        normalize: bool = param(False, "true: cosine of the gradients (gradcos)")
        projection: str = param("auto", "none: exact gradients; kron:K: a K x K sketch of each tracked "
                                        "layer's; auto: exact while the pool's fit 48 GiB, else kron:16",
                                added=True)

    def check_config(self) -> None:
        if not PROJECTION.fullmatch(self.config.projection):
            raise ValueError(f"projection must be 'auto', 'none' or 'kron:K' (K >= 1), not "
                             f"{self.config.projection!r}")

    chosen_projection = ""  # what "auto" resolved to, once fit has run

    def gradient_sketch(self, n_pool: int, context: FitContext) -> gradients.KroneckerProjection | None:
        chosen = self.config.projection
        if chosen == "auto":
            exact = len(self.prepared.states) * n_pool * gradients.n_tracked(self.prepared.modules) * 4
            chosen = "none" if exact <= EXACT_BUDGET_BYTES else f"kron:{AUTO_K}"
            if chosen != "none":
                print(f"{type(self).__name__.lower()}: exact pool gradients would take "
                      f"{exact / 2**30:,.0f} GiB (more than {EXACT_BUDGET_BYTES / 2**30:.0f}); sketching "
                      f"each tracked layer's: projection={chosen} (--config projection=none keeps them "
                      "exact)", file=sys.stderr)
        self.chosen_projection = chosen
        if chosen == "none":
            return None
        return gradients.KroneckerProjection(self.prepared.modules, int(chosen.split(":")[1]),
                                             seed=context.seed, device=context.device.name)

    def resolved(self) -> dict[str, str]:
        auto = self.config.projection == "auto" and self.chosen_projection
        return {"projection": self.chosen_projection} if auto else {}

    def transform_train(self, state: gradients.State, rep: torch.Tensor) -> torch.Tensor:
        return unit(rep) if self.config.normalize else rep

    transform_target = transform_train


class GradCos(GradDot):
    VERSION = 1  # bump when a change may move this adapter's numbers
    @dataclass
    class Config(GradDot.Config):
        normalize: bool = param(True, "true: cosine of the gradients (gradcos)")
