"""Shared machinery of the gradient-based attribution methods (graddot, gradcos, tracin, trak, ekfac,
logra, less).

* :func:`reference_model`: the task's base target LM fine-tuned with the task's recipe
  (``lm.finetune``, seeded, one torch thread, on ``context.device``) on the **whole pool** or on
  a given part of it, cached as safetensors under ``cache_dir()/"reference"/<key>`` with a
  checkpoint after every epoch (TracIn uses them).
* :data:`CHECKPOINTS`, :class:`GradientConfig` and :func:`prepare`: **where the gradients are
  taken**, one option shared by every gradient method (``checkpoint``): the base LM, the pool
  fine-tune, a fine-tune on a random half of the pool or on a random subset of the ground
  truth's size, or the pool fine-tune's trajectory (its epoch checkpoints, lr-weighted).
  :func:`prepare` is the one place where a method's model is loaded, moved to
  ``context.device`` and set up.
* Losses in the forms libraries need: :func:`train_losses` (summed response-token cross-entropy
  of each training example: what a fine-tuning step on it descends, up to the batch's token
  count) and :func:`measurement` (the protocol's model output: mean response-token
  cross-entropy of each target).
* Tracked parameters (:data:`TRACKED`): ``"mlp"`` = the ``nn.Linear`` layers of the blocks' MLPs,
  ``"attention"`` = the attention projections (q, k, v, o), ``"linear"`` = every ``nn.Linear``
  in the blocks. Embeddings, norms
  and the LM head are never tracked, nor blocks that the recipe does not train (``top:K``).
* :func:`batches`, :func:`per_example_gradients` and :func:`to_scores`, the one place where a
  library's output becomes a (T, N) float64 array with the protocol's sign (higher = the pool
  example helps the target more, i.e. lowers its loss); each adapter states its library's
  orientation and sign beside its call.
* :class:`GaussianProjection`: a seeded (P, k) Gaussian random projection, drawn once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tdabench import lm
from tdabench.data import examples_fingerprint
from tdabench.method import FitContext
from tdabench.seeds import pool_part_rng
from tdabench.spec import Example, ModelSpec, stable_hash
from tdabench.store import atomic_dir, atomic_write_json, cache_dir, read_json
from tdabench.typed import param

TRACKED = ("mlp", "linear", "attention")
DEFAULT_TRACKED = "mlp"  # the MLPs hold most of a block's weights; attention adds little on these models


# --- the reference model --------------------------------------------------------------------

@dataclass
class Reference:
    """A fine-tuned reference model. ``lm.model`` holds the final weights (eval mode);
    ``checkpoints[e]`` are the weights after epoch e + 1 (the last is the final model), each
    trained with learning rate ``lr``."""

    lm: lm.TargetLM
    checkpoints: list[Path]
    lr: float
    path: Path


def reference_key(context: FitContext, base_fingerprint: str, seed: int,
                  train: Sequence[Example] | None = None) -> str:
    """Cache key: the spec's model and fine-tuning fields, the training examples (default: the
    pool), the base weights, the seed (and, other than on the CPU in fp32, the device kind and
    dtype it was fine-tuned with)."""
    spec, compute = context.spec, context.device
    train = context.data.pool if train is None else train
    on_cpu = not compute.is_cuda and compute.dtype == "fp32"
    where = {} if on_cpu else {"device": "cuda", "dtype": compute.dtype}
    return stable_hash({"model": spec.model, "finetune": spec.finetune,
                        "pool": examples_fingerprint(train), "base": base_fingerprint,
                        "seed": seed, "torch": torch.__version__.split("+")[0], **where})


def reference_model(context: FitContext, seed: int | None = None,
                    train: Sequence[Example] | None = None) -> Reference:
    """The base target LM fine-tuned on ``train`` (default: the whole pool), built once, then
    loaded from the cache.

    Fine-tuning is ``lm.finetune`` itself, single-threaded and seeded with ``seed`` (default:
    ``context.seed``), so the reference is what a ground-truth fine-tune on ``train`` would
    give; the per-epoch checkpoints are taken from inside that one run (see ``_build``).
    """
    from safetensors.torch import load_model

    seed = context.seed if seed is None else seed
    train = list(context.data.pool if train is None else train)
    target = load_base(context)
    path = cache_dir() / "reference" / reference_key(context, target.fingerprint, seed, train)
    if not (path / "reference.json").exists():
        _build(context, target, train, seed, path)
        target = load_base(context)  # fresh base weights
    meta = read_json(path / "reference.json")
    checkpoints = [path / name for name in meta["checkpoints"]]
    load_model(target.model, checkpoints[-1])
    target.model.eval()
    return Reference(target, checkpoints, float(meta["lr"]), path)


def load_base(context: FitContext) -> lm.TargetLM:
    """The task's base target LM, on ``context.device`` (training mode, as loaded)."""
    data = context.data
    target = lm.load_base_model(context.spec.model, data.warmup, data.pool)
    target.model.to(context.device.name)
    return target


def load_checkpoint(model: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    """Load a reference checkpoint (safetensors) into ``model`` in place."""
    from safetensors.torch import load_model

    load_model(model, checkpoint)
    return model.eval()


def _build(context: FitContext, target: lm.TargetLM, pool: Sequence[Example], seed: int,
           path: Path) -> None:
    from safetensors.torch import save_model

    spec = context.spec
    model, pad = target.model, target.tokenizer.pad_token_id
    encoded = lm.encode(target.tokenizer, pool, spec.model)
    recipe = spec.finetune
    with atomic_dir(path) as tmp:  # another process may build the same reference first
        # Checkpoints from inside one uninterrupted run (same shuffles, same AdamW state) instead
        # of restarting the optimizer every epoch.
        def snapshot(epoch: int) -> None:
            save_model(model, str(tmp / f"epoch{epoch}.safetensors"))

        with lm.torch_threads(1), context.device.autocast():
            lm.finetune(model, lm.trainable_parameters(model, spec.model), encoded, recipe, seed=seed,
                        pad_id=pad, micro_batch=context.device.micro_batch, after_epoch=snapshot)
        names = [f"epoch{e}.safetensors" for e in range(1, recipe.epochs + 1)]
        atomic_write_json(tmp / "reference.json", {
            "checkpoints": names, "lr": recipe.lr, "seed": seed, "base_fingerprint": target.fingerprint,
            "n_pool": len(pool), "finetune": recipe})


# --- where the gradients are taken ----------------------------------------------------------

# checkpoint -> what it is. "half" and "subset" draw their part of the pool with the model's seed.
CHECKPOINTS = {
    "base": "the base LM before any fine-tuning on the pool",
    "pool": "the base LM fine-tuned on the whole pool (the task's recipe)",
    "half": "the base LM fine-tuned on a random half of the pool (TRAK's reference models)",
    "subset": "the base LM fine-tuned on a random subset of the ground truth's subset size",
    "trajectory": "every epoch checkpoint of the pool fine-tune, each weighted by its lr (TracIn)",
}


SINGLE = ("base", "pool", "half", "subset")  # the choices of a method that uses one model
# The field types (make_config checks a value against them): an adapter that changes a default
# re-declares the field with one of these.
TrackedName = Literal[TRACKED]
CheckpointName = Literal[tuple(CHECKPOINTS)]
OneModelCheckpoint = Literal[SINGLE]
TRACKED_HELP = "weights differentiated: the blocks' MLPs, attention projections or every linear layer"
CHECKPOINT_HELP = "where the gradients are taken (tdabench.method.gradients.CHECKPOINTS)"


@dataclass
class GradientConfig:
    """Settings shared by the gradient methods; an adapter's ``Config`` subclasses it. A method
    that uses one model narrows ``checkpoint`` to :data:`OneModelCheckpoint` (its choices are checked
    by ``make_config`` from the type)."""

    tracked: TrackedName = param(DEFAULT_TRACKED, TRACKED_HELP)
    checkpoint: CheckpointName = param("pool", CHECKPOINT_HELP)
    batch_size: int = param(32, "examples per forward/backward pass", ge=1)


@dataclass
class State:
    """One set of weights at which representations are taken: a safetensors file (None: the
    weights the model was loaded with) and the weight of its scores in the sum over states."""

    path: Path | None
    weight: float = 1.0


@dataclass
class Prepared:
    """A method's model, ready: the LM (eval mode), its spec, the tracked modules and the states
    (weights) at which the method differentiates it."""

    lm: lm.TargetLM
    model_spec: ModelSpec
    modules: dict[str, torch.nn.Linear]
    states: list[State]

    def load(self, state: State) -> torch.nn.Module:
        """Put ``state``'s weights into the model (nothing to do for the loaded weights)."""
        if state.path is not None:
            load_checkpoint(self.lm.model, state.path)
        return self.lm.model


def training_part(pool: Sequence[Example], checkpoint: str, fraction: float, seed: int
                  ) -> list[Example] | None:
    """The examples the reference of ``checkpoint`` is fine-tuned on: None (the whole pool) for
    "pool"/"trajectory", a seeded random half for "half", a seeded random ``fraction`` (the
    ground truth's subset size) for "subset"."""
    share = {"half": 0.5, "subset": fraction}.get(checkpoint)
    if share is None:
        return None
    rng = pool_part_rng(seed)
    n = max(1, round(share * len(pool)))
    return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]


def prepare(context: FitContext, tracked: str | None = DEFAULT_TRACKED, checkpoint: str = "pool",
            seed: int | None = None) -> Prepared:
    """Load the model a gradient method works on (see :data:`CHECKPOINTS`), seed torch with
    ``context.seed`` and pick the tracked modules (``tracked=None``: none).

    ``seed`` (default ``context.seed``) seeds the reference fine-tune and the draw of its part
    of the pool, so TRAK's independently trained models are ``seed = context.seed + i``.
    """
    torch.manual_seed(context.seed)
    seed = context.seed if seed is None else seed
    spec, data = context.spec, context.data
    if checkpoint == "base":
        target, states = load_base(context), [State(None)]
        target.model.eval()
    else:
        train = training_part(data.pool, checkpoint, spec.groundtruth.fraction, seed)
        ref = reference_model(context, seed, train)
        target = ref.lm
        states = ([State(path, ref.lr) for path in ref.checkpoints] if checkpoint == "trajectory"
                  else [State(None)])
    modules = {} if tracked is None else tracked_modules(target.model, spec.model, tracked)
    return Prepared(target, spec.model, modules, states)


# --- losses ---------------------------------------------------------------------------------

def _per_example(values: torch.Tensor, rows: torch.Tensor, n: int, mean: bool) -> torch.Tensor:
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    return sums / torch.bincount(rows, minlength=n).to(values.dtype) if mean else sums


def train_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) summed response-token cross-entropy of each training example."""
    losses, rows = lm.token_losses(model, batch)
    return _per_example(losses, rows, len(batch["input_ids"]), mean=False)


def measurement(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) the protocol's model output: mean response-token cross-entropy of each target."""
    losses, rows = lm.token_losses(model, batch)
    return _per_example(losses, rows, len(batch["input_ids"]), mean=True)


LOSSES = {"train": train_losses, "measurement": measurement}


# --- tracked parameters ---------------------------------------------------------------------

def tracked_modules(model: torch.nn.Module, model_spec, which: str = DEFAULT_TRACKED
                    ) -> dict[str, torch.nn.Linear]:
    """The ``nn.Linear`` modules whose weights a method attributes through, by their names in
    ``model.named_modules()``: ``"mlp"`` (inside each block's ``mlp``), ``"attention"`` (inside its
    ``self_attn``: q, k, v, o) or ``"linear"`` (anywhere in
    the blocks). Only blocks that fine-tuning trains (``model.trainable``) count."""
    if which not in TRACKED:
        raise ValueError(f"tracked must be one of {list(TRACKED)}, not {which!r}")
    trained = {id(p) for p in lm.trainable_parameters(model, model_spec)}
    layers = model.base_model.layers
    prefix = next(name for name, module in model.named_modules() if module is layers)
    out = {}
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.startswith(prefix + ".")):
            continue
        if which != "linear" and {"mlp": ".mlp.", "attention": ".self_attn."}[which] not in name:
            continue
        if id(module.weight) in trained:
            out[name] = module
    if not out:
        raise ValueError(f"no trainable nn.Linear modules match tracked={which!r}")
    return out


def tracked_parameters(modules: dict[str, torch.nn.Linear]) -> dict[str, torch.nn.Parameter]:
    """The weights (and biases) of ``modules``, by their names in ``model.named_parameters()``."""
    out = {}
    for name, module in modules.items():
        for pname, p in module.named_parameters(recurse=False):
            out[f"{name}.{pname}"] = p
    return out


def n_tracked(modules: dict[str, torch.nn.Linear]) -> int:
    return sum(p.numel() for p in tracked_parameters(modules).values())


# --- batching and per-example gradients -----------------------------------------------------

def batches(encoded: Sequence[lm.Encoded], batch_size: int, pad_id: int
            ) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """``(rows, collated batch)`` over ``encoded`` in order, ``batch_size`` at a time."""
    for start in range(0, len(encoded), batch_size):
        rows = slice(start, min(start + batch_size, len(encoded)))
        yield rows, lm.collate(encoded[rows], pad_id)


def per_example_gradients(model: torch.nn.Module, modules: dict[str, torch.nn.Linear],
                          encoded: Sequence[lm.Encoded], pad_id: int, loss: str = "train",
                          batch_size: int = 32, projection: KroneckerProjection | None = None
                          ) -> torch.Tensor:
    """(n, P) float32: the gradient of each example's loss (``"train"``: :func:`train_losses`;
    ``"measurement"``: :func:`measurement`) with respect to the tracked weights, flattened in
    the order of :func:`tracked_parameters`; with ``projection``, (n, projection.width): each
    tracked layer's gradient sketched by :class:`KroneckerProjection`, the full gradient never
    formed.

    One batched forward and backward per batch: a linear layer's per-example weight gradient is
    the sum over the example's tokens of (output gradient) x (input)^T, so hooks on the tracked
    modules give it exactly, without a backward pass per example.
    """
    loss_fn = LOSSES[loss]
    params = tracked_parameters(modules)
    P = projection.width if projection else sum(p.numel() for p in params.values())
    out = torch.empty(len(encoded), P, dtype=torch.float32, device=lm.model_device(model))
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def hook(name):
        def save(module, args, output):
            inputs[name] = args[0].detach()
            output.register_hook(lambda g: grads.__setitem__(name, g.detach()))
        return save

    was_training = model.training
    model.eval()
    saved_flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        for rows, batch in batches(encoded, batch_size, pad_id):
            torch.autograd.grad(loss_fn(model, batch).sum(), list(params.values()))
            parts = []
            for name, module in modules.items():
                d, a = grads[name].float(), inputs[name].float()
                if projection:
                    d, a, bias = projection.factors(name, d, a)
                parts.append(torch.einsum("blo,bli->boi", d, a).flatten(1))
                if module.bias is not None:
                    parts.append(d.sum(1) if not projection else bias)
            out[rows] = torch.cat(parts, dim=1)
            inputs.clear()
            grads.clear()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(saved_flags[id(p)])
        model.train(was_training)
    return out


# --- random projection ----------------------------------------------------------------------

class KroneckerProjection:
    """A seeded sketch of every tracked linear layer's per-example gradient, taken from the
    layer's factors so that the (O, I) gradient is never formed.

    A layer's per-example gradient is G = sum_t d_t a_t^T (d: output gradients, O; a: inputs, I;
    t: the example's tokens). Its sketch is S = R_o^T G R_i = sum_t (R_o^T d_t)(R_i^T a_t)^T, a
    (k, k) matrix, with R_o (O, k) and R_i (I, k) of independent N(0, 1/k) entries drawn once per
    layer from ``seed``; a bias gradient sum_t d_t becomes R_o^T sum_t d_t. Since E[R R^T] = I,
    <S_x, S_z> is an unbiased estimate of <G_x, G_z>, summed over layers: of the full gradient dot
    product, with a variance that falls as 1/k^2 per layer (a Kronecker-structured
    Johnson-Lindenstrauss sketch; LoGra's projection, without its Hessian).

    Memory: sum over layers of (O + I) x k floats for the R's, n x width for the sketches (width =
    layers x k^2, + k per biased layer). Time per batch: tokens x sum (O + I) x k for the factor
    products plus tokens x k^2 per layer, against tokens x O x I for the exact gradient.
    """

    def __init__(self, modules: dict[str, torch.nn.Linear], k: int, seed: int = 0,
                 device: str = "cpu") -> None:
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same R's everywhere
        self.k = k
        self.matrices = {}
        for name, module in modules.items():  # in the order of tracked_parameters, as the sketch is laid out
            r_out = torch.randn(module.out_features, k, generator=generator) / math.sqrt(k)
            r_in = torch.randn(module.in_features, k, generator=generator) / math.sqrt(k)
            self.matrices[name] = (r_out.to(device), r_in.to(device))
        self.width = sum(k * k + (k if m.bias is not None else 0) for m in modules.values())
        self._biased = [m.bias is not None for m in modules.values()]

    def sketch_flat(self, grads: torch.Tensor) -> torch.Tensor:
        """(B, P) per-example gradients, flattened in the order of :func:`tracked_parameters`
        (each layer's (O, I) weight, then its bias), -> (B, width): each layer's R_o^T G R_i and
        R_o^T bias, the layout :meth:`factors` gives."""
        out, start = [], 0
        for (r_out, r_in), has_bias in zip(self.matrices.values(), self._biased):
            n = r_out.shape[0] * r_in.shape[0]
            g = grads[:, start:start + n].reshape(-1, r_out.shape[0], r_in.shape[0]).float()
            out.append((r_out.T @ g @ r_in).flatten(1))
            start += n
            if has_bias:
                out.append(grads[:, start:start + r_out.shape[0]].float() @ r_out)
                start += r_out.shape[0]
        return torch.cat(out, dim=1)

    def factors(self, name: str, d: torch.Tensor, a: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``name``'s (B, L, O) output gradients and (B, L, I) inputs projected to
        (B, L, k) each, and the projected bias gradient (B, k)."""
        r_out, r_in = self.matrices[name]
        d = d @ r_out
        return d, a @ r_in, d.sum(1)


class GaussianProjection:
    """A seeded Johnson-Lindenstrauss projection from P to k dimensions: ``x @ R`` with R a (P, k)
    float32 matrix of N(0, 1/k) entries, drawn **once** here (not per call), so every projected
    batch uses the same R; the same seed, P and k give the same R. Dot products are preserved in
    expectation. R takes P x k x 4 bytes."""

    def __init__(self, n_in: int, n_out: int, seed: int = 0, device: str = "cpu") -> None:
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same R everywhere
        self.matrix = (torch.randn(n_in, n_out, generator=generator) / math.sqrt(n_out)).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, P) -> (n, k)."""
        return x.float() @ self.matrix


# --- library output -> (T, N), higher = more helpful ----------------------------------------

def to_scores(native, orientation: str, sign: int, n_targets: int, n_pool: int,
              library: str = "the method") -> np.ndarray:
    """A library's score matrix as a (T, N) float64 array with the protocol's sign: ``native``
    is (T, N) (``orientation`` ``"TN"``) or (N, T) (``"NT"``); ``sign`` +1 where a positive
    native score already means "the pool example lowers the target's loss", -1 otherwise. Each
    adapter states its library's orientation and sign (and why) beside its call."""
    if isinstance(native, torch.Tensor):
        native = native.detach().cpu().numpy()
    array = np.asarray(native, dtype=np.float64)
    expected = (n_targets, n_pool) if orientation == "TN" else (n_pool, n_targets)
    if array.shape != expected:
        raise ValueError(f"{library} returned scores of shape {array.shape}, expected {expected} "
                         f"({orientation}: {n_targets} targets, {n_pool} pool examples)")
    if orientation == "NT":
        array = array.T
    return np.ascontiguousarray(sign * array)
