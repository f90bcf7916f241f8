"""Specifications: what a task is made of, as plain frozen dataclasses that hash stably.

A :class:`TaskSpec` fixes everything that determines the ground truth of a task: which data
(pool and targets), which target LM, how it is fine-tuned, and how the counterfactual subsets
are drawn. Its :func:`spec_hash` keys every cached artefact and every result record, so two
records with the same hash were measured against the same ground truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One prompt/response pair. ``source`` is the task or topic it comes from (used by recall)."""

    id: str
    prompt: str
    response: str
    source: str


@dataclass(frozen=True)
class DataSpec:
    """How a task draws its examples. ``options`` holds task-specific knobs (JSON-able)."""

    n_pool: int
    n_targets: int
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """The target LM.

    ``init="scratch"``: a Llama of the given shape with a byte-level BPE tokenizer trained on the
    task's warm-up and pool text, warmed up on language modelling of the warm-up examples (kept
    apart from pool and targets) before any fine-tuning.
    ``init="pretrained"``: ``name`` is a transformers model id or local path.
    ``init="gguf"``: ``name`` is a packaged GGUF model (``tdabench.lm.PACKAGED_MODELS``).
    ``trainable``: ``"all"`` or ``"top:K"`` (the top K blocks and the final norm).
    ``system_prompt``: for chat templates, ``None`` keeps the template's default system turn;
    a string (``""`` included) replaces it.
    """

    init: str = "scratch"
    name: str = ""
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    vocab_size: int = 4096
    max_prompt_tokens: int = 32
    max_response_tokens: int = 32
    dtype: str = "float32"
    trainable: str = "all"
    warmup_epochs: int = 3
    warmup_lr: float = 2e-3
    warmup_seed: int = 0
    system_prompt: str | None = None


@dataclass(frozen=True)
class FinetuneRecipe:
    """Supervised fine-tuning: AdamW, constant learning rate, loss on response tokens only."""

    lr: float = 1e-3
    batch_size: int = 16
    epochs: int = 2
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    schedule: str = "constant"


@dataclass(frozen=True)
class GroundTruthSpec:
    """Counterfactual subsets: ``n_subsets`` random subsets of ``fraction`` of the pool, each
    fine-tuned with ``n_seeds`` training seeds (two or more give a noise ceiling).

    ``source="finetune"``: built by tdabench; ``"published"``: imported from the task's
    published ground truth (then the other fields describe what is imported)."""

    n_subsets: int = 100
    fraction: float = 0.1
    n_seeds: int = 1
    seed: int = 0
    source: str = "finetune"
    stream: str | None = None  # "training" (a method's training bank), "datamodel"; None: evaluation


@dataclass(frozen=True)
class TaskSpec:
    task: str
    preset: str
    data: DataSpec
    model: ModelSpec
    finetune: FinetuneRecipe
    groundtruth: GroundTruthSpec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        return cls(
            task=d["task"],
            preset=d["preset"],
            data=DataSpec(**d["data"]),
            model=ModelSpec(**d["model"]),
            finetune=FinetuneRecipe(**d["finetune"]),
            groundtruth=GroundTruthSpec(**d["groundtruth"]),
        )


# The AirRep paper's target-LM recipe (arXiv 2505.18513): Qwen2.5-0.5B, full fine-tune, AdamW
# 2e-5 constant, batch 16, 2 epochs, grad clip 1.0, 512 tokens, bf16; 100 subsets, one seed each.
PAPER_MODEL = ModelSpec(
    init="pretrained",
    name="Qwen/Qwen2.5-0.5B",
    max_prompt_tokens=256,
    max_response_tokens=256,
    dtype="bfloat16",
    trainable="all",
)
PAPER_RECIPE = FinetuneRecipe(lr=2e-5, batch_size=16, epochs=2, grad_clip=1.0)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every hash in tdabench."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def drop_none(d: Any) -> Any:
    """``d`` without the dict entries set to ``None`` (recursively): the form that is hashed."""
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    if isinstance(d, dict):
        return {k: drop_none(v) for k, v in d.items() if v is not None}
    return d


def spec_hash(spec: TaskSpec) -> str:
    """Hash of everything that determines a task's ground truth.

    Fields set to ``None`` are left out, so adding an optional field (default ``None``) to a
    spec class keeps the hashes, banks and records of existing specs valid.
    """
    return stable_hash(drop_none(spec.to_dict()))


def setup_hash(spec: TaskSpec) -> str:
    """Hash of the task, data, model and recipe: the spec without its evaluation ground truth.

    The key of artefacts that never see the evaluation bank (a method's training bank, a
    trained AirRep), so that changing how the evaluation bank is built does not retrain them.
    """
    return stable_hash(drop_none({**spec.to_dict(), "groundtruth": None}))


def spec_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields where two spec dicts differ, e.g. ``['finetune.lr']``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def override(spec: TaskSpec, assignments: dict[str, str]) -> TaskSpec:
    """Return ``spec`` with dotted fields replaced, e.g. ``{"groundtruth.n_subsets": "64"}``.

    Values are parsed as JSON where possible (numbers, booleans), else kept as strings.
    """
    d = spec.to_dict()
    for dotted, raw in assignments.items():
        *path, leaf = dotted.split(".")
        node = d
        for part in path:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"unknown spec field {dotted!r}; valid sections: {sorted(d)}")
            node = node[part]
        if leaf not in node and not (path and path[-1] == "options"):
            raise KeyError(f"unknown spec field {dotted!r}; valid fields here: {sorted(node)}")
        node[leaf] = parse_value(raw)
    return TaskSpec.from_dict(d)


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw
