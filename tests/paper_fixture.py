"""Offline stand-ins for the AirRep paper's published files, in their exact layouts.

:func:`write_dataset` writes a small copy of the dataset ``sunweiwei/airrep-test``: folders
``flan/``, ``alpaca/``, ``tulu/``, ``safe/``, each with ``train.jsonl``, ``test.jsonl`` and
``lds.jsonl`` (``train_subset`` indices and per-test-example losses under ``test_loss``, as the
authors' evaluation script reads them, or ``test_score``, as the dataset card shows them).
:func:`write_checkpoint` writes a checkpoint laid out like ``sunweiwei/AirRep-Flan-Small``: a
BERT config with ``model_type`` ``airrep`` (gte-small's shape, tiny sizes) and a
``model.safetensors`` in bf16 with ``bert.*`` (the pooler included, as the authors' trainer saves
an ``AutoModel`` encoder) and ``projector.*``, beside a BERT WordPiece tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = ("add subtract name translate explain list the a of to and in is what how why two three "
         "numbers sum city river french english poem story short long answer question reply").split()
SOURCES = ("qa", "math", "translation")
# How each benchmark's records look (field names as in the published files).
SHAPES = {"flan": "inputs", "alpaca": "instruction", "tulu": "data", "safe": "prompt"}
LOSS_KEYS = {"flan": "test_loss", "alpaca": "test_loss", "tulu": "test_score", "safe": "test_score"}


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def record(shape: str, rng: np.random.Generator, i: int) -> dict:
    """One record of the given shape; some prompts carry runs of whitespace and > 100 words."""
    prompt = _sentence(rng, int(rng.integers(3, 12)))
    if i % 7 == 3:
        prompt = _sentence(rng, 120) + "\n\n  " + prompt  # long, with a newline
    response = _sentence(rng, int(rng.integers(1, 6)))
    source = SOURCES[i % len(SOURCES)]
    if shape == "inputs":
        return {"inputs": prompt, "targets": response, "task": source}
    if shape == "instruction":
        return {"instruction": prompt, "input": _sentence(rng, 2) if i % 2 else "", "output": response}
    if shape == "data":
        return {"data": [prompt, response], "dataset": source}
    return {"prompt": prompt, "response": response, "category": source}


def write_benchmark(root: Path, name: str, n_train: int = 40, n_test: int = 6, n_subsets: int = 100,
                    seed: int = 0, loss_key: str | None = None) -> Path:
    """``root/name/{train,test,lds}.jsonl``; each subset holds half the pool. Returns root."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    shape = SHAPES.get(name, "inputs")
    for filename, n in (("train.jsonl", n_train), ("test.jsonl", n_test)):
        rows = [record(shape, rng, i) for i in range(n)]
        (folder / filename).write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = loss_key or LOSS_KEYS.get(name, "test_loss")
    lines = []
    for _ in range(n_subsets):
        subset = sorted(rng.choice(n_train, n_train // 2, replace=False).tolist())
        lines.append(json.dumps({"train_subset": subset, key: rng.uniform(1, 3, n_test).round(4).tolist()}))
    (folder / "lds.jsonl").write_text("\n".join(lines) + "\n")
    return Path(root)


def write_dataset(root: Path, seed: int = 0, **sizes) -> Path:
    """All four benchmarks of the dataset under ``root``."""
    for k, name in enumerate(SHAPES):
        write_benchmark(root, name, seed=seed + k, **sizes)
    return Path(root)


def write_checkpoint(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                     stored: str = "bf16") -> Path:
    """A random AirRep checkpoint in the released layout (see the module docstring), tiny by
    default (gte-small is hidden=384, layers=12, heads=12), its BERT weights ``stored`` in
    ``bf16`` (as released) or ``fp32`` (the projector is bf16 in both, as the authors' model
    builds it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(seed)
    bert = BertModel(config, add_pooling_layer=True)  # the trainer saves AutoModel: pooler included
    projector = torch.nn.Linear(hidden, hidden)
    state = {f"bert.{k}": v for k, v in bert.state_dict().items() if "position_ids" not in k}
    state.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[stored]
    save_file({k: v.to(dtype if k.startswith("bert.") else torch.bfloat16).contiguous()
               for k, v in state.items()}, path / "model.safetensors")
    released = config.to_dict()
    released.update(model_type="airrep", architectures=["AirRepModel"], torch_dtype="bfloat16")
    (path / "config.json").write_text(json.dumps(released, indent=2))
    return path
