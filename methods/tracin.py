"""tracin: TracIn-CP, lr-weighted gradient dot products summed over the epoch checkpoints.

TracIn-CP (Pruthi et al., 2020): graddot with ``checkpoint="trajectory"``. The checkpoints are
those of the reference fine-tune on the whole pool (:func:`tdabench.method.gradients.reference_model`):
the weights after each epoch of the task's recipe (the last is the final model).
score(x, z) = sum over checkpoints c of lr * g_x(c) . g_z(c), with g_z the gradient of the pool
example's summed response-token cross-entropy and g_x that of the target's mean response-token
cross-entropy, over the tracked weights (``tracked``, as for graddot). The recipe's AdamW
preconditioning and gradient clipping are ignored (plain SGD steps), as in TracIn-CP. Higher =
more helpful. Another ``checkpoint`` (e.g. ``"pool"``: the final model alone) is an ablation.

Pool gradients are kept on disk in the method's work directory (one N x P float32 ``.npy`` per
checkpoint, :class:`tdabench.method.innerproduct.InnerProductMethod`), read back one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdabench.method import gradients
from tdabench.methods.graddot import GradDot
from tdabench.typed import param


class TracIn(GradDot):
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"tracked": ["mlp", "attention", "linear"]}
    @dataclass
    class Config(GradDot.Config):
        checkpoint: gradients.CheckpointName = param(
            "trajectory", gradients.CHECKPOINT_HELP + "; TracIn-CP: the epoch checkpoints")
