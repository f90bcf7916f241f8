"""logra: LoGra (Choe et al., 2024), influence functions on low-rank projected gradients (dattri).

dattri 0.3.0's ``LoGraAttributor`` at the model ``checkpoint`` names (default: the base LM
fine-tuned on the whole pool; :data:`tdabench.method.gradients.CHECKPOINTS`). For each tracked linear
layer (``tracked``: ``"mlp"``, ``"attention"`` or ``"linear"``, as for graddot) LoGra projects
the layer's per-token input a and output gradient d by two seeded Gaussian matrices of
sqrt(``proj_dim``) rows each, so that an example's layer gradient sum_t d_t a_t^T becomes a
``proj_dim``-vector without ever being
formed (dattri computes it inside the layer's backward). Features: projected gradients of the pool
example's summed response-token cross-entropy and of the target's mean response-token
cross-entropy (the protocol's model output). ``hessian="eFIM"`` preconditions each layer by the
inverse of its projected empirical Fisher (mean of g g^T over the pool) plus ``damping`` times its
mean eigenvalue; ``"Identity"`` skips it (a projected gradient dot product).

score(x, z) = g_x^T (F + damping)^-1 g_z, returned by dattri as (n_train, n_test); positive =
a step on z lowers the target's loss = helpful, so :func:`tdabench.method.gradients.to_scores` only
transposes it. Pool features (N x layers x ``proj_dim`` float32) are held in memory.
Memory and time, with L tracked layers of O x I weights, N pool and T target examples of about t
tokens, k = ``proj_dim`` per layer: features (N + T) x L x k x 4 bytes, the per-layer Fisher and
its inverse L x k^2 x 4 x 2, the projections L x (O + I) x sqrt(k) floats; a layer's gradient is
never formed. Time: (N + T) x (a forward and backward pass + t x L x (O + I) x sqrt(k) for the
projected factors) + L x k^3 for the inverses + T x N x L x k for the scores.

LogIX's defaults and what was kept: LogIX's LoGra projects each factor to rank 64 per layer,
``proj_dim = 64^2 = 4096`` (dattri's default too). ``tdabench tune`` on chatterbot/tiny's tuning
subsets (grid ``damping`` 0.01 to 30 x ``proj_dim`` 256, 1024, 4096; ``results/configs.json``)
chose ``proj_dim = 1024`` (32 per factor; LDS 0.372 at damping 3 against 0.334 for 4096 at
damping 1) and ``damping = 3``, so those are the defaults; ``proj_dim=4096`` restores LogIX's
rank. LogIX can initialise the projections from the PCA of each layer's activations and output
gradients (``init="pca"``); dattri 0.3.0's ``LoGraAttributor`` offers only seeded Gaussian
(``"normal"``) projections, so the projection here is random (LogIX's default, ``init="random"``).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from tdabench import lm
from tdabench.method import FitContext, Method, gradients, require
from tdabench.spec import Example
from tdabench.typed import param

HESSIANS = ("eFIM", "Identity")


def eager():
    """dattri's compressor is ``torch.compile``-d: on CPU every new sequence-length shape compiled
    for seconds (15 s of a 20 s fit on the micro task); run it eagerly instead."""
    return torch.compiler.set_stance("force_eager")


class _LossModel(torch.nn.Module):
    """The LM as dattri's LoGra wants it: called on a dict batch, it returns ``.loss``, the mean
    over the batch of each target's measurement. dattri rescales per-example gradients by the
    batch size (it assumes a batch-mean loss), so each example's feature is the gradient of its
    own loss."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.lm = model

    def forward(self, **batch: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=gradients.measurement(self.lm, batch).mean())


def _train_loss(model: _LossModel, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
    """Mean over the batch of each pool example's summed response-token cross-entropy."""
    return gradients.train_losses(model.lm, batch).mean()


class LoGra(Method):
    FAMILY = "gradient"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"damping": [0.3, 3.0, 30.0], "proj_dim": [256, 1024]}
    @dataclass
    class Config(gradients.GradientConfig):
        checkpoint: gradients.OneModelCheckpoint = param("pool", gradients.CHECKPOINT_HELP)
        proj_dim: int = param(1024, "per layer: a perfect square, sqrt(proj_dim) rows per factor; tuned",
                              ge=1)
        hessian: Literal[HESSIANS] = param("eFIM", "eFIM (projected empirical Fisher) or Identity")
        damping: float = param(3.0, "fraction of each layer's mean Fisher eigenvalue added to its "
                               "diagonal; tuned", ge=0)
        projector_seed: int = param(0, "seed of the random projection")

    def check_config(self) -> None:
        if math.isqrt(self.config.proj_dim) ** 2 != self.config.proj_dim or self.config.proj_dim <= 0:
            raise ValueError(f"proj_dim must be a positive perfect square (LoGra projects the "
                             f"two factors to sqrt(proj_dim) each), not {self.config.proj_dim}")

    def _loader(self, examples: list[Example]) -> DataLoader:
        tokenizer = self.tokenizer
        encoded = lm.encode(tokenizer, examples, self.model_spec)
        pad = tokenizer.pad_token_id
        return DataLoader(encoded, batch_size=self.config.batch_size, shuffle=False,
                          collate_fn=lambda b: lm.collate(b, pad))

    def fit(self, pool: list[Example], context: FitContext) -> None:
        require("dattri", "logra", "logra")
        from dattri.algorithm.logra import LoGraAttributor
        from dattri.task import AttributionTask

        c = self.config
        prepared = gradients.prepare(context, c.tracked, c.checkpoint)
        self.model_spec, self.tokenizer = prepared.model_spec, prepared.lm.tokenizer
        model, modules = prepared.lm.model, prepared.modules
        model.requires_grad_(False)  # backward stops below the lowest tracked layer
        for p in gradients.tracked_parameters(modules).values():
            p.requires_grad_(True)
        cache = context.workdir / "logra"  # dattri's batch metadata; without it, in the working dir
        shutil.rmtree(cache, ignore_errors=True)  # dattri would read a previous fit's metadata
        wrapped = _LossModel(model)
        task = AttributionTask(loss_func=_train_loss, model=wrapped,
                               checkpoints=["loaded"],  # a name only: the weights are in the model
                               checkpoints_load_func=lambda m, _: m.eval())
        self.attributor = LoGraAttributor(task, layer_names=[f"lm.{name}" for name in modules],
                                          hessian=c.hessian, damping=c.damping, device=context.device.name,
                                          proj_dim=c.proj_dim, offload="cpu", cache_dir=str(cache))
        self.attributor.sparsifier_kwargs["proj_seed"] = c.projector_seed
        self.pool_loader = self._loader(pool)
        with eager():
            self.attributor.cache(self.pool_loader)
        self.n_pool = len(pool)
        # what dattri's CPU offload holds, as attributes the harness's storage count can see
        offload = self.attributor.offload_manager
        self.pool_gradients = getattr(offload, "cached_gradients", {})  # batch -> (B, features)
        self.pool_ifvp = getattr(offload, "cached_ifvp", {})  # batch -> (B, features)
        self.preconditioners = getattr(offload, "preconditioners", [])  # per layer

    def score(self, targets: list[Example]) -> np.ndarray:
        with eager():
            native = self.attributor.attribute(self.pool_loader, self._loader(targets))  # (N, T)
        # dattri 0.3.0, BlockProjectedIFAttributor.attribute (LoGra): (n_train, n_test),
        # g_train^T H^-1 g_test with g the gradients of the losses its task computes (ours: the
        # train example's summed response-token cross-entropy, the target's mean). A step along
        # -g_train lowers the target's loss when the product is positive: helpful.
        return gradients.to_scores(native, "NT", +1, len(targets), self.n_pool, "dattri")
