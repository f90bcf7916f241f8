"""airrep: AirRep, a text encoder trained for attribution (Sun et al., arXiv 2505.18513).

Model: a BERT-style encoder, mean pooling over the attention mask, then a trainable
Linear(d, d) projector; no normalisation. s(x, z) = dot product of the two representations
(higher = more helpful). Group score (``pooling``): ``attention`` (default, as the authors
train) g(x, S) = sum_{z in S} softmax_{z in S}(|s(x, z)|) * s(x, z); ``attention-eval`` (as
their ``scripts/04_evaluate.py`` computes the published LDS) the same without the absolute
value; ``sum``. On a published bank (the paper tier) the harness's headline LDS uses
``EVALUATION_POOLING`` = ``attention-eval`` over all subsets, as the paper does.
Text, as the authors' ``format_item``: "Question: " + the prompt's first 256 words joined by
single spaces + "\\nAnswer: " + the response, at most 512 tokens. Precision (``dtype``): ``bf16``
as the authors encode (every weight cast to bf16, as their loader's ``torch_dtype=bfloat16``
does, whatever the file stores), ``fp32``, or ``auto`` (the default: bf16 on a task whose ground
truth the authors published (the paper tier, so that its figure is theirs) and wherever the
run's ``--device`` is a GPU; fp32 on the CPU elsewhere; the config and its hash keep ``auto``,
the record's ``resolved`` says which it was, and names fp32 on the paper tier as a departure);
the encoder runs eager attention as theirs does (:data:`~tdabench.methods.airrep.model.ATTENTION`);
the representations are cast to fp32 before the dot products, as the authors' ``encode`` does.

The prompt and response formatted are, by default (``text="model"``), those the target LM
sees, cut to the preset's token limits (``tdabench.method.text_view``; this needs the target
LM's tokenizer); ``text="full"`` reads them whole, as the authors do (the paper tier's
reproduction of their LDS uses it).

Training (``train``, timed apart from ``fit``), as the authors' ``airrep/airrep_trainer.py``
(github.com/sunnweiwei/AirRep), scaled: a training bank of ``n_splits`` splits, each with
``n_dev`` dev targets drawn from the pool and ``subsets_per_split`` subsets of ``fraction`` of the
rest, fine-tuned once each on a seed stream of its own (never an evaluation target, subset or
seed; :func:`~tdabench.methods.airrep.training.build_training_bank`, through the harness's
``FitContext.own_banks``; the paper: 100 x 100). Labels: per dev example, the z-score
over its split's subsets of minus the loss, clipped to [-10, 10]. Loss: weighted RankNet over
subset pairs, w * softplus(-(g_a - g_b)) for y_a > y_b, w = min(y_a - y_b, 10), mean over pairs,
with g the configured pooling. A step takes one split (each once per epoch, in a random order)
and samples ``dev_per_step`` dev examples and ``subsets_per_step`` subsets, the least often drawn
first (the authors' sampler). Projector: random start (BERT's N(0, 0.02), the authors') or
identity. AdamW (1e-4 encoder, ``projector_lr`` the projector), linear warm-up over
``warmup_steps`` then constant, gradient clipping 1.0, dropout off, ``steps`` steps (the paper:
about 5,000). ``train_encoder``: ``"none"`` (projector only), ``"top:K"`` (the top K layers and the
projector; the frozen lower layers run once per text and their output is cached, so a step runs
only what trains) or ``"all"`` (the paper). Memory stays bounded by a two-pass step: encode
everything without gradients, take the loss's gradient with respect to the embeddings, then
re-encode in batches and back-propagate those gradients (as GradCache does). The last split is
held out: its LDS is the training curve's. Departures: the training bank's scale and the step
count (CPU), the base encoder (all-MiniLM-L6-v2 offline; the paper: gte-small), the dev and
subset members' exact gradient in one two-pass step (the authors accumulate it subset by
subset), a step's split drawn per epoch without the authors' DataLoader, and ``pooling="sum"``
also training the sum (the authors train attention pooling only).
A resumable state is saved every :data:`SAVE_EVERY` steps, the result in the released AirRep
format (``config.json`` of a BERT config with ``model_type="airrep"``, ``model.safetensors``
with ``bert.*`` and ``projector.*``), with ``curve.json`` and ``cost.json`` (bank size, regime,
steps, seconds, as measured when trained) beside it. A trained checkpoint loaded from the cache
reports that original cost (``Trained.cost``) with the phase marked cached.

The package: this adapter; :mod:`~tdabench.methods.airrep.model` (the encoder, its I/O, the text
it reads, what trains); :mod:`~tdabench.methods.airrep.training` (the training bank, the
objective, the resumable trainer).

``checkpoint`` takes such a directory or a hub id (e.g. ``sunweiwei/AirRep-Flan-Small``, or
``id@revision``); a hub id's revision (``main`` when none is given) is resolved to its commit
before anything is read, and the record's ``resolved.checkpoint`` names it (``id@<commit>``).
Empty, on a task whose ground truth the authors published (the paper tier) the authors' released
:data:`RELEASED_CHECKPOINT` is used, as their evaluation script scores it; elsewhere the
task's own trained checkpoint is used, trained first when there is none, on the
training bank of the preset scored or of ``train_preset`` (e.g. ``tiny`` when scoring at
``small``: the encoder reads text, so what changes between tiers is the target LM that labels the
training bank; its checkpoint is the one that preset's own run trains and caches).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tdabench import lm
from tdabench.method import FitContext, Method, TextView, Trained, text_view
from tdabench.method.pooling import pooled_group_scores
from tdabench.methods.airrep.model import (
    DTYPES,
    AirRepEncoder,
    authors_text,
    load_encoder,
    pin_checkpoint,
    trained_layers,
)
from tdabench.methods.airrep.training import TRAINING_FIELDS, read_cost, train_airrep
from tdabench.spec import Example, setup_hash, stable_hash
from tdabench.store import cache_dir
from tdabench.typed import param

# The authors' released encoder, trained on flan's training bank; their evaluation scores it on
# all four benchmarks (scripts/README.md: "~0.21 for flan").
RELEASED_CHECKPOINT = "sunweiwei/AirRep-Flan-Small"


class AirRep(Method):
    FAMILY = "representation"
    VERSION = 1  # bump when a change may move this adapter's numbers
    GRID = {"train_encoder": ["none", "top:2", "all"]}
    @dataclass
    class Config:
        checkpoint: str = param("", 'a trained AirRep (directory or hub id); "" = this task\'s own')
        train_preset: str = param("", "the preset whose training bank trains this task's own encoder; "
                                      '"" = the preset scored (the encoder reads text, so one trained '
                                      "at a cheap tier can score another)")
        pooling: Literal["attention", "attention-eval", "sum"] = param(
            "attention", "group score: attention (softmax(|s|)·s, as trained), attention-eval "
            "(softmax(s)·s, as the paper evaluates) or sum")
        dtype: Literal["auto", "fp32", "bf16"] = param(
            "auto", "encoder precision: bf16 as the authors encode, fp32, or auto: bf16 where the run's "
                    "--device is a GPU, fp32 on the CPU (the record states what it resolved to)")
        batch_size: int = param(64, "examples per encoder batch", ge=1)
        # training, used when no checkpoint is given
        base_model: str = param("", 'encoder to start from; "" = the offline all-MiniLM-L6-v2')
        max_length: int = param(512, "encoder tokens per example", ge=1)
        text: TextView = param("model", "model: prompt and response as the target LM reads them "
                                        "(the preset's token cut); full: whole")
        n_splits: int = param(40,
                              "training-bank splits; the last one is held out for the training curve", ge=1)
        n_dev: int = param(100, "dev targets per split, drawn from the pool", ge=1)
        subsets_per_split: int = param(100, "fine-tuned subsets per split", ge=2)
        fraction: float = param(0.1, "share of the pool in each training subset", gt=0, lt=1)
        steps: int = param(1000, "optimiser steps", ge=1)
        train_encoder: str = param("all", "what trains: none (the projector only), top:K (the top K "
                                          "layers and the projector) or all (the paper); false/true "
                                          "= none/all")
        projector_init: Literal["random", "identity"] = param(
            "random", "the projector's start: random (the authors') or identity")
        lr: float = param(1e-4, "the encoder's AdamW learning rate", gt=0)
        projector_lr: float = param(1e-4, "the projector's AdamW learning rate", gt=0)
        warmup_steps: int = param(10, "learning-rate warm-up steps", ge=0)
        grad_clip: float = param(1.0, "gradient-norm clip", gt=0)
        subsets_per_step: int = param(32, "subsets per optimiser step", ge=1)
        dev_per_step: int = param(1000, "dev targets per optimiser step", ge=1)
        train_seed: int = param(0, "seed of the encoder's training")

    # The group score the authors' evaluation script uses: the paper tier's headline.
    EVALUATION_POOLING = "attention-eval"
    device = "cpu"  # where the encoder runs: the run's device, set in train and fit
    published = False  # scoring against the authors' published ground truth (set in train and fit)

    def check_config(self) -> None:
        trained_layers(self.config.train_encoder)  # K <= the encoder's depth is checked once it is loaded
        checkpoint = self.config.checkpoint
        folder = Path(checkpoint).expanduser()
        if checkpoint and folder.exists() and not (folder / "config.json").is_file():
            raise ValueError(f"checkpoint {checkpoint} holds no config.json: name a directory with an "
                             "AirRep checkpoint (or a hub id)")
        if checkpoint and not folder.exists() and checkpoint.startswith(("/", ".", "~")):
            raise ValueError(f"checkpoint {checkpoint}: no such directory; name an AirRep checkpoint's "
                             "directory or a hub id (e.g. sunweiwei/AirRep-Flan-Small)")

    # --- encoding ----------------------------------------------------------------------------

    def _tokens(self, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                          return_tensors="pt")
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def _encode(self, encoder: AirRepEncoder, tokenizer, texts: list[str], pooled: bool = False
                ) -> torch.Tensor:
        """(len(texts), d) representations (``pooled``: before the projector), no gradients,
        in length-sorted batches."""
        encoder.eval()
        forward = encoder.pooled if pooled else encoder
        out = torch.empty(len(texts), encoder.projector.out_features, device=self.device)
        with torch.no_grad():
            for idx in lm.length_batches([len(t) for t in texts], self.config.batch_size):
                batch = self._tokens(tokenizer, [texts[i] for i in idx])
                out[torch.as_tensor(idx)] = forward(**batch).float()
        return out

    def _texts(self, examples: list[Example]) -> list[str]:
        return [authors_text(ex) for ex in self._view(examples)]

    # --- the method protocol -----------------------------------------------------------------

    def _trained_dir(self, context: FitContext) -> Path:
        c = asdict(self.config)
        key = stable_hash({k: c[k] for k in TRAINING_FIELDS})
        spec = context.spec
        return cache_dir() / "airrep" / f"{spec.task}-{spec.preset}-{setup_hash(spec)}" / key

    def train(self, context: FitContext) -> Trained:
        """Train this task's AirRep unless a checkpoint is given or already trained (then the
        phase is cached, with the cost measured when it trained, where that was here)."""
        self._use(context)
        self._view = text_view(self.config.text, context)
        given = self.config.checkpoint or (RELEASED_CHECKPOINT if self.published else "")
        if given:
            self.checkpoint = pin_checkpoint(given)
            return Trained(cached=True, artifact=self.checkpoint, cost=read_cost(Path(self.checkpoint)))
        training = self._training_context(context)
        root = self._trained_dir(training)
        self.checkpoint = str(root / "final")
        if (root / "final" / "config.json").exists():
            print(f"airrep: using the trained checkpoint {root / 'final'}")
            return Trained(cached=True, artifact=self.checkpoint, cost=read_cost(root / "final"))
        print(f"airrep: no trained checkpoint for {training.spec.task}/{training.spec.preset} yet; "
              f"training one in {root}")
        scoring_view = self._view
        if training is not context:  # train on the texts as that preset's target LM reads them
            self._view = text_view(self.config.text, training)
        try:
            cost = train_airrep(self, training, root)
        finally:
            self._view = scoring_view
        return Trained(cached=False, artifact=self.checkpoint, cost=cost)

    def _training_context(self, context: FitContext) -> FitContext:
        """Where this task's own encoder trains: ``context``, or the same task at
        ``train_preset`` (its spec as registered, without this run's ``--set`` overrides)."""
        preset = self.config.train_preset
        if not preset or preset == context.spec.preset:
            return context
        return context.at_preset(preset)

    def _dtype(self) -> str:
        """The encoder precision this run uses: the config's, ``auto`` resolved by the ground
        truth (the authors' bf16 where it is theirs) and the device (bf16 on a GPU)."""
        if self.config.dtype != "auto":
            return self.config.dtype
        return "bf16" if self.published or self.device.startswith("cuda") else "fp32"

    def resolved(self) -> dict[str, str]:
        out = {"dtype": self._dtype()} if self.config.dtype == "auto" else {}
        checkpoint = getattr(self, "checkpoint", "")
        if checkpoint and not Path(checkpoint).expanduser().is_dir():  # a hub id, at its commit
            out["checkpoint"] = checkpoint
        if self.published and self._dtype() != "bf16":
            out["departure"] = "fp32 encoding; the authors encode in bf16 (dtype=auto or bf16 to match)"
        return out

    def _use(self, context: FitContext) -> None:
        """What this run's context decides: the device, and whether the ground truth is the
        authors' (published: the paper tier)."""
        self.device = context.device.name
        self.published = context.spec.groundtruth.source == "published"

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self._use(context)
        if not hasattr(self, "checkpoint"):
            self.train(context)  # sets self._view too
        self.encoder, self.tokenizer = load_encoder(self.checkpoint)
        self.encoder.to(device=self.device, dtype=DTYPES[self._dtype()])
        self.pool_embeddings = self._encode(self.encoder, self.tokenizer, self._texts(pool)).cpu().numpy()

    def score(self, targets: list[Example]) -> np.ndarray:
        target_embeddings = self._encode(self.encoder, self.tokenizer, self._texts(targets)).cpu().numpy()
        self._last = (targets, target_embeddings @ self.pool_embeddings.T)
        return self._last[1]

    def score_groups(self, targets: list[Example], membership: np.ndarray) -> np.ndarray:
        scores = self._last[1] if getattr(self, "_last", (None,))[0] is targets else self.score(targets)
        return pooled_group_scores(scores, membership, self.config.pooling)
