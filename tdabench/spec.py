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
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from tdabench.errors import ConfigError
from tdabench.typed import param, parse_field


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

    n_pool: int = param(0, "pool examples (0: as the task publishes them)", ge=0)
    n_targets: int = param(0, "target examples (0: as the task publishes them)", ge=0)
    seed: int = param(0, "seed of the task's draw of pool and targets")
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
    a string (``""`` included) replaces it. ``revision``: the hub commit a pretrained ``name`` is
    read at (``None``: whatever the name resolves to; tasks that read the hub pin it).
    """

    init: Literal["scratch", "pretrained", "gguf"] = param("scratch", "where the model comes from")
    name: str = param("", "model id, path or packaged GGUF name (pretrained, gguf)")
    n_layers: int = param(2, "transformer blocks (scratch)", ge=1)
    d_model: int = param(128, "hidden size (scratch)", ge=1)
    n_heads: int = param(4, "attention heads (scratch)", ge=1)
    d_ff: int = param(512, "MLP size (scratch)", ge=1)
    vocab_size: int = param(4096, "BPE vocabulary (scratch)", ge=1)
    max_prompt_tokens: int = param(32, "prompt tokens kept", ge=1)
    max_response_tokens: int = param(32, "response tokens kept", ge=1)
    dtype: Literal["float32", "float16", "bfloat16", "float64"] = param("float32", "weights' dtype")
    trainable: str = param("all", '"all" or "top:K" (the top K blocks and the final norm)')
    warmup_epochs: int = param(3, "language-modelling warm-up epochs (scratch)", ge=0)
    warmup_lr: float = param(2e-3, "warm-up learning rate (scratch)", gt=0)
    warmup_seed: int = param(0, "warm-up seed (scratch)")
    system_prompt: str | None = param(None, "chat templates: none keeps the default system turn")
    revision: str | None = param(None, "hub commit of a pretrained model (a task may pin it when the "
                                       "command is checked); none: the name as it resolves")


@dataclass(frozen=True)
class FinetuneRecipe:
    """Supervised fine-tuning: AdamW, constant learning rate, loss on response tokens only."""

    lr: float = param(1e-3, "AdamW learning rate", gt=0)
    batch_size: int = param(16, "examples per step", ge=1)
    epochs: int = param(2, "passes over the subset", ge=1)
    grad_clip: float = param(1.0, "gradient-norm clip (0: none)", ge=0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0)
    schedule: Literal["constant"] = param("constant", "learning-rate schedule")


@dataclass(frozen=True)
class GroundTruthSpec:
    """Counterfactual subsets: ``n_subsets`` random subsets of ``fraction`` of the pool, each
    fine-tuned with ``n_seeds`` training seeds (two or more give a noise ceiling).

    ``source="finetune"``: built by tdabench; ``"published"``: imported from the task's
    published ground truth (then the other fields describe what is imported)."""

    n_subsets: int = param(100, "counterfactual subsets", ge=1)
    fraction: float = param(0.1, "share of the pool in each subset", gt=0, lt=1)
    n_seeds: int = param(1, "training seeds per subset (2 or more: a noise ceiling)", ge=1)
    seed: int = param(0, "seed of the subsets' draw")
    source: Literal["finetune", "published"] = param("finetune", "built here or imported")
    stream: Literal["training", "reference"] | None = param(
        None, "seed stream (tdabench.seeds): a method's training bank, a reference method's own "
              "bank; none: an evaluation bank")


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


SECTIONS = {"data": DataSpec, "model": ModelSpec, "finetune": FinetuneRecipe,
            "groundtruth": GroundTruthSpec}


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


# Version of the code that turns a spec into ground truth: fine-tuning (``lm.finetune``,
# ``lm.train_step``), the loss (``lm.response_losses``), the base-model build and the subset
# draw. Raise it with any change to that code that changes a loss: banks built under another
# version are then refused (not silently reused), and spec hashes change.
GROUNDTRUTH_VERSION = 1


def _versioned(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the ground-truth version, which is left out at version 1 so that the hashes
    (and banks, records) made before versions were recorded stay valid."""
    return d if GROUNDTRUTH_VERSION == 1 else {**d, "groundtruth_version": GROUNDTRUTH_VERSION}


def spec_hash(spec: TaskSpec) -> str:
    """Hash of everything that determines a task's ground truth, the ground-truth code's
    version (:data:`GROUNDTRUTH_VERSION`) included.

    Fields set to ``None`` are left out, so adding an optional field (default ``None``) to a
    spec class keeps the hashes, banks and records of existing specs valid.
    """
    return stable_hash(_versioned(drop_none(spec.to_dict())))


def setup_hash(spec: TaskSpec) -> str:
    """Hash of the task, data, model and recipe: the spec without its evaluation ground truth.

    The key of artefacts that never see the evaluation bank (a method's training bank, a
    trained AirRep), so that changing how the evaluation bank is built does not retrain them.
    """
    return stable_hash(_versioned(drop_none({**spec.to_dict(), "groundtruth": None})))


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

    Each value is parsed by its field's type, choices and range (ConfigError naming the field
    otherwise); ``data.options.*`` values are task-specific and parsed as JSON where possible.
    """
    d = spec.to_dict()
    for dotted, raw in assignments.items():
        *path, leaf = dotted.split(".")
        node, cls = d, TaskSpec
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown spec field {dotted!r}; valid sections: {sorted(SECTIONS)}")
            node, cls = node[part], SECTIONS.get(part)
        if path and path[-1] == "options":
            node[leaf] = parse_value(raw)
            continue
        fields = {f.name: f for f in dataclasses.fields(cls)} if path else {}
        if leaf not in fields:
            raise ConfigError(f"unknown spec field {dotted!r}; valid fields here: {sorted(node)}")
        node[leaf] = parse_field(dotted, raw, typing.get_type_hints(cls)[leaf], fields[leaf].metadata)
    return TaskSpec.from_dict(d)


def parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return raw
