"""AirRep's training, as the authors' ``airrep/airrep_trainer.py`` (github.com/sunnweiwei/AirRep),
scaled (the adapter's docstring, :mod:`tdabench.methods.airrep`, states the recipe and every
departure): its training bank, the weighted RankNet objective and a resumable two-pass trainer.
``method`` below is the :class:`~tdabench.methods.airrep.AirRep` adapter being trained (its
config, device and encoding helpers)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tdabench import lm, metrics
from tdabench.errors import ConfigError
from tdabench.groundtruth import GroundTruthBank, sample_subsets
from tdabench.groundtruth.executors import Progress
from tdabench.method import FitContext, Method
from tdabench.method.pooling import group_pool, mean_pool, pooled_group_scores
from tdabench.methods.airrep.model import (
    AirRepEncoder,
    base_model_path,
    init_projector,
    load_encoder,
    save_encoder,
    trainable_groups,
    trained_layers,
)
from tdabench.seeds import epoch_order_rng, method_rng, training_split_rng, training_split_seed
from tdabench.spec import Example, GroundTruthSpec, TaskSpec
from tdabench.store import atomic_write_json
from tdabench.task import TaskData

TRAINING_FIELDS = ("base_model", "max_length", "text", "pooling", "n_splits", "n_dev", "subsets_per_split",
                   "fraction", "steps", "train_encoder", "projector_init", "lr", "projector_lr",
                   "warmup_steps", "grad_clip", "subsets_per_step", "dev_per_step", "train_seed")
COST_FILE = "cost.json"  # a training's measured cost, beside its checkpoint


# --- the training bank -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingBankSpec:
    """AirRep's own training ground truth: ``n_splits`` splits, each with ``n_dev`` dev targets
    drawn from the pool and ``n_subsets`` subsets of ``fraction`` of the rest of the pool,
    fine-tuned once each on a seed stream of its own (the paper: 100 splits x 100 subsets).

    Split ``i`` depends only on (``seed``, ``i``, ``n_dev``, ``n_subsets``, ``fraction``), so a
    bank of fewer splits is the first splits of a larger one and shares its fine-tunes."""

    n_splits: int = 8
    n_dev: int = 100
    n_subsets: int = 50
    fraction: float = 0.1
    seed: int = 0


def training_splits(spec: TaskSpec, data: TaskData, tb: TrainingBankSpec
                    ) -> list[tuple[TaskSpec, TaskData]]:
    """The (spec, data) of each training split: its dev examples are the split's targets.

    No leakage: dev targets are pool examples, never evaluation targets (checked); a split's
    subsets never hold its own dev targets; fine-tuning seeds come from the ``training``
    stream, which evaluation banks never use; no training subset equals an evaluation subset
    (checked against the evaluation bank's membership, which is drawn without building it).
    """
    eval_ids = {ex.id for ex in data.targets}
    if any(ex.id in eval_ids for ex in data.pool):
        raise ValueError("the pool contains evaluation targets; a training bank would leak them")
    if not 0 < tb.n_dev < len(data.pool):
        raise ValueError(f"n_dev={tb.n_dev} must be between 1 and the pool size {len(data.pool)}")
    out = []
    for split in range(tb.n_splits):
        rng = training_split_rng(tb.seed, split)
        dev = [data.pool[i] for i in np.sort(rng.choice(len(data.pool), tb.n_dev, replace=False))]
        gt = GroundTruthSpec(n_subsets=tb.n_subsets, fraction=tb.fraction, n_seeds=1,
                             seed=training_split_seed(tb.seed, split), stream="training")
        out.append((replace(spec, groundtruth=gt), replace(data, targets=dev)))
    return out


def check_no_evaluation_subset(spec: TaskSpec, data: TaskData, splits: list[tuple[TaskSpec, TaskData]]
                               ) -> None:
    """Refuse a training bank with a subset identical to one of the evaluation bank's."""
    evaluation = {row.tobytes() for row in sample_subsets(data, spec)}
    for split_spec, split_data in splits:
        if any(row.tobytes() in evaluation for row in sample_subsets(split_data, split_spec)):
            raise ConfigError(f"training split seed {split_spec.groundtruth.seed} draws an evaluation "
                              "subset; change train_seed")


def build_training_bank(context: FitContext, tb: TrainingBankSpec) -> list[tuple[TaskData, GroundTruthBank]]:
    """Build (or resume) every split of the training bank of ``context``'s task through the
    harness (:meth:`FitContext.own_banks`: the run's workers, executor and device); returns
    (split data, bank) pairs. Each split's bank is keyed by its own spec and dev targets, so a
    bank of fewer splits shares the fine-tunes of a larger one."""
    spec, data = context.spec, context.data
    splits = training_splits(spec, data, tb)
    check_no_evaluation_subset(spec, data, splits)
    banks = context.own_banks(splits, f"training bank {spec.task}/{spec.preset}").banks
    return [(d, bank) for (_, d), bank in zip(splits, banks)]


def read_cost(checkpoint: Path) -> dict | None:
    """The measured cost written beside a checkpoint trained here (None for one from elsewhere)."""
    file = checkpoint / COST_FILE
    return json.loads(file.read_text()) if file.exists() else None


def ranknet_loss(group_scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Weighted RankNet: mean over pairs with y_a > y_b of min(y_a - y_b, 10) * softplus(-(g_a - g_b)).

    group_scores, labels: (D, S) for D dev examples and S subsets.
    """
    diff_y = labels[:, :, None] - labels[:, None, :]
    diff_g = group_scores[:, :, None] - group_scores[:, None, :]
    mask = diff_y > 0
    if not mask.any():
        return group_scores.sum() * 0.0
    return (diff_y.clamp(max=10.0)[mask] * F.softplus(-diff_g[mask])).mean()


def zscore_labels(losses: np.ndarray) -> np.ndarray:
    """(M, D) losses of D dev examples over M subsets -> (D, M) labels: per dev example, the
    z-score of minus the loss over the subsets, clipped to [-10, 10] (std 0 counts as 1)."""
    neg = -losses.T
    std = neg.std(axis=1, keepdims=True)
    return np.clip((neg - neg.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0), -10, 10)


@dataclass
class FrozenCache:
    """The frozen part of the encoder, run once per text so that a step runs only what trains.

    ``top`` = 0: ``pooled``, (N, d) mean-pooled encoder outputs; 0 < ``top`` < L: ``hidden``, each
    text's (len_i, d) hidden states after the L - ``top`` frozen layers; ``top`` = L: nothing
    (each step encodes the tokens)."""

    top: int
    texts: list[str]
    pooled: torch.Tensor | None = None
    hidden: list[torch.Tensor] | None = None


def frozen_cache(method: Method, encoder: AirRepEncoder, tokenizer, texts: list[str], top: int
                 ) -> FrozenCache:
    """Run the frozen layers over ``texts`` once (no gradients, length-sorted batches)."""
    n_layers = len(encoder.bert.encoder.layer)
    if top == 0:
        return FrozenCache(top, texts, pooled=method._encode(encoder, tokenizer, texts, pooled=True))
    if top == n_layers:
        return FrozenCache(top, texts)
    hidden: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    encoder.eval()
    with torch.no_grad():
        for idx in lm.length_batches([len(t) for t in texts], method.config.batch_size):
            batch = method._tokens(tokenizer, [texts[i] for i in idx])
            out = encoder.bert(**batch, output_hidden_states=True).hidden_states[n_layers - top]
            for row, i in enumerate(idx):
                hidden[i] = out[row, : int(batch["attention_mask"][row].sum())].float()
    return FrozenCache(top, texts, hidden=hidden)


def cached_forward(method: Method, encoder: AirRepEncoder, tokenizer, cache: FrozenCache,
                   indices: np.ndarray) -> torch.Tensor:
    """(len(indices), d) representations of texts ``indices``, running only the trained part
    (gradients flow when enabled)."""
    if cache.pooled is not None:
        return encoder.projector(cache.pooled[torch.as_tensor(indices)])
    if cache.hidden is None:
        return encoder(**method._tokens(tokenizer, [cache.texts[i] for i in indices]))
    from transformers.masking_utils import create_bidirectional_mask

    parts = [cache.hidden[i] for i in indices]
    hidden = torch.nn.utils.rnn.pad_sequence(parts, batch_first=True)
    mask = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    for row, part in enumerate(parts):
        mask[row, : len(part)] = 1
    attention = create_bidirectional_mask(config=encoder.bert.config, inputs_embeds=hidden,
                                          attention_mask=mask)
    for layer in encoder.bert.encoder.layer[len(encoder.bert.encoder.layer) - cache.top:]:
        hidden = layer(hidden, attention)
    return encoder.projector(mean_pool(hidden, mask))


# --- the objective -----------------------------------------------------------------------------

@dataclass
class Split:
    """One training split: its dev examples (pool positions), (M, N) subset membership and
    (D, M) labels (z-scored minus losses)."""

    dev: np.ndarray
    membership: np.ndarray
    labels: np.ndarray


def prepare_splits(pool: list[Example], bank: list[tuple[TaskData, GroundTruthBank]]) -> list[Split]:
    """A built training bank as :class:`Split` s (dev targets are pool examples)."""
    position = {ex.id: i for i, ex in enumerate(pool)}
    return [Split(np.array([position[ex.id] for ex in d.targets]), b.membership,
                  zscore_labels(b.losses[:, 0, :])) for d, b in bank]


def least_seen(rng: np.random.Generator, seen: np.ndarray, k: int) -> np.ndarray:
    """``k`` indices, the least often drawn first, ties broken at random (as the authors'
    sampler draws dev examples and subsets); counts ``seen`` are updated."""
    order = rng.permutation(len(seen))
    chosen = order[np.argsort(seen[order], kind="stable")][:k]
    seen[chosen] += 1
    return chosen


# --- training ----------------------------------------------------------------------------------

SAVE_EVERY = 100  # steps between resumable checkpoints (and held-out LDS points)


@dataclass
class Trainer:
    """What one training holds: the method, encoder, frozen cache, optimiser and sampler state."""

    method: Method
    encoder: AirRepEncoder
    tokenizer: object
    cache: FrozenCache
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    seen: list[tuple[np.ndarray, np.ndarray]]  # per split: draws of each dev example, each subset

    def batches(self, indices: np.ndarray) -> list[list[int]]:
        """Positions in ``indices`` in batches of texts of similar length."""
        return lm.length_batches([len(self.cache.texts[i]) for i in indices], self.method.config.batch_size)

    def embed(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), d) representations, in length-sorted batches, no gradients."""
        with torch.no_grad():
            out = [(idx, cached_forward(self.method, self.encoder, self.tokenizer, self.cache, indices[idx]))
                   for idx in self.batches(indices)]
        embeddings = torch.empty(len(indices), out[0][1].shape[1], device=out[0][1].device)
        for idx, part in out:
            embeddings[torch.as_tensor(idx)] = part
        return embeddings

    def step(self, split: int, data: Split) -> float:
        """One optimisation step on one split: sample dev examples and subsets, then two passes
        (as GradCache): representations without gradients, the loss's gradient with respect to
        them, then re-encoding in batches that back-propagate it. Returns the loss."""
        c = self.method.config
        seen_dev, seen_sets = self.seen[split]
        dev = least_seen(self.rng, seen_dev, c.dev_per_step)
        chosen = least_seen(self.rng, seen_sets, c.subsets_per_step)
        members = data.membership[chosen]  # (S, N)
        used = np.flatnonzero(members.any(axis=0))  # each pool example is encoded once per step
        indices = np.concatenate([data.dev[dev], used])
        device = self.method.device
        y = torch.tensor(data.labels[dev][:, chosen], dtype=torch.float32, device=device)
        embeddings = self.embed(indices).requires_grad_()
        scores = embeddings[: len(dev)] @ embeddings[len(dev):].T  # (D, U)
        loss = ranknet_loss(group_pool(scores, torch.as_tensor(members[:, used], device=device),
                                       self.method.config.pooling), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.encoder.eval()  # dropout off, as the authors
        for idx in self.batches(indices):
            out = cached_forward(self.method, self.encoder, self.tokenizer, self.cache, indices[idx])
            out.backward(embeddings.grad[torch.as_tensor(idx)])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        return float(loss.detach())

    def lds(self, data: Split) -> float:
        """LDS of the current encoder on a split (its dev examples as targets)."""
        every = np.arange(len(self.cache.texts))
        scores = (self.embed(data.dev) @ self.embed(every).T).cpu().numpy()
        return metrics.lds(pooled_group_scores(scores, data.membership, self.method.config.pooling),
                           data.labels)

    def state(self, step: int, curve: list, train_s: float) -> dict:
        """Everything a resumed training needs (torch.save-able with weights_only)."""
        return {"model": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": json.dumps(self.rng.bit_generator.state),
                "seen": json.dumps([[d.tolist(), m.tolist()] for d, m in self.seen]),
                "curve": json.dumps(curve), "step": step, "train_s": train_s}

    def restore(self, state: dict) -> tuple[int, list, float]:
        """Load :meth:`state`'s output; returns (step, curve, train seconds so far)."""
        self.encoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.seen = [(np.array(d), np.array(m)) for d, m in json.loads(state["seen"])]
        return int(state["step"]), json.loads(state["curve"]), float(state["train_s"])


def make_trainer(method: Method, texts: list[str], splits: list[Split]) -> Trainer:
    """The base encoder with a fresh projector, what trains frozen apart, AdamW with linear
    warm-up then a constant rate, and the frozen layers run once over ``texts``."""
    c = method.config
    torch.manual_seed(c.train_seed)
    encoder, tokenizer = load_encoder(base_model_path(c))
    init_projector(encoder, c.projector_init)
    encoder.to(method.device)
    top = trained_layers(c.train_encoder, len(encoder.bert.encoder.layer))
    optimizer = torch.optim.AdamW(trainable_groups(encoder, top, c.lr, c.projector_lr))
    warmup = max(1, c.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    seen = [(np.zeros(len(s.dev), dtype=np.int64), np.zeros(len(s.membership), dtype=np.int64))
            for s in splits]
    return Trainer(method, encoder, tokenizer, frozen_cache(method, encoder, tokenizer, texts, top),
                   optimizer, schedule, method_rng(c.train_seed), seen)


def split_order(seed: int, n_splits: int, step: int) -> int:
    """The split of step ``step``: every split once per epoch, in an order drawn per epoch."""
    return int(epoch_order_rng(seed, step // n_splits).permutation(n_splits)[step % n_splits])


def fit_encoder(method: Method, texts: list[str], splits: list[Split], root: Path
                ) -> tuple[Trainer, list[dict], float]:
    """Train for ``config.steps`` steps on every split but the last (held out: its LDS is the
    training curve's), checkpointing to ``root/last.pt`` every :data:`SAVE_EVERY` steps and
    resuming from it. Returns the trainer, the curve and the seconds spent in steps."""
    c = method.config
    train_splits, held_out = (splits[:-1], splits[-1]) if len(splits) > 1 else (splits, None)
    trainer = make_trainer(method, texts, train_splits)
    curve, start, train_s = [], 0, 0.0
    last = root / "last.pt"
    if last.exists():  # resume after an interruption
        start, curve, train_s = trainer.restore(torch.load(last, map_location="cpu", weights_only=True))
        print(f"airrep: resuming after step {start}")
    if start == 0:
        curve.append({"step": 0, "loss": None, "held_out_lds": held_out and trainer.lds(held_out)})
    losses = []
    progress = Progress(c.steps - start, f"airrep: training steps {start + 1}-{c.steps}", unit="step")
    for step in range(start, c.steps):
        tic = time.perf_counter()
        split = split_order(c.train_seed, len(train_splits), step)
        losses.append(trainer.step(split, train_splits[split]))
        train_s += time.perf_counter() - tic
        progress.update()
        if (step + 1) % SAVE_EVERY and step + 1 < c.steps:
            continue
        curve.append({"step": step + 1, "loss": float(np.mean(losses)),
                      "held_out_lds": held_out and trainer.lds(held_out)})
        losses = []
        print(f"airrep: step {step + 1}/{c.steps} loss {curve[-1]['loss']:.4f} "
              f"held-out LDS {curve[-1]['held_out_lds']}")
        root.mkdir(parents=True, exist_ok=True)
        torch.save(trainer.state(step + 1, curve, train_s), root / "last.pt.tmp")
        (root / "last.pt.tmp").replace(last)
    progress.close()
    return trainer, curve, train_s


def train_airrep(method: Method, context: FitContext, root: Path) -> dict:
    """Build the training bank, train with the weighted RankNet objective (resumable), save the
    checkpoint with ``curve.json`` and ``cost.json`` beside it; returns the measured cost."""
    c = method.config
    tb = TrainingBankSpec(n_splits=c.n_splits, n_dev=c.n_dev, n_subsets=c.subsets_per_split,
                          fraction=c.fraction, seed=c.train_seed)
    tic = time.perf_counter()
    bank = build_training_bank(context, tb)
    bank_s = time.perf_counter() - tic
    trainer, curve, train_s = fit_encoder(method, method._texts(context.data.pool),
                                          prepare_splits(context.data.pool, bank), root)
    save_encoder(trainer.encoder.cpu(), trainer.tokenizer, root / "final")
    trainer.encoder.to(method.device)
    cost = {"bank_fine_tunes": tb.n_splits * tb.n_subsets, "bank_splits": tb.n_splits,
            "bank_build_s": bank_s, "train_encoder": str(c.train_encoder),
            "trained_layers": trainer.cache.top, "steps": c.steps, "train_s": train_s,
            "s_per_step": train_s / max(1, c.steps), "host_cpus": os.cpu_count()}
    atomic_write_json(root / "final" / "curve.json", {"config": asdict(c), "training_bank": asdict(tb),
                                                      "curve": curve})
    atomic_write_json(root / "final" / COST_FILE, cost)
    return cost
