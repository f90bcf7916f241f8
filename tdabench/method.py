"""The method protocol that every attribution adapter implements.

An adapter is a class with:

* ``Config``: a dataclass of its hyperparameters, every field with a default;
* ``__init__(self, config)``;
* ``fit(self, pool, context)``: the train-side work (encode, featurise, cache) on the pool;
* ``score(self, targets) -> (T, N) array``: per-example scores, **higher = more helpful**
  (the training example lowers the target's loss);
* optionally ``score_groups(self, targets, membership) -> (T, M) array`` for methods whose
  group score is not the sum of per-example scores (``membership``: (M, N) bool);
* optionally ``train(self, context)``: learning the method itself (AirRep's encoder), timed as a
  phase of its own and reported apart from ``fit``; it returns True when it loaded what it
  trains from a cache instead (the record marks the phase ``cached``: never ranked);
* optionally ``FAMILY``: what the method scores with, one of :data:`FAMILIES` (stored in
  its records; the leaderboard's speed line compares against the ``gradient`` family), and
  ``REFERENCE = True`` for a reference that is shown apart and never ranked (a datamodel).

The harness times ``fit`` and ``score``; an adapter never times itself or writes results. It may
keep train-side files under ``context.workdir``, whose size the harness reports as storage.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .errors import UserError
from .spec import Example, TaskSpec
from .task import TaskData
from .typed import parse_dataclass_fields

# What a method scores with: gradients of the target LM, learned or off-the-shelf text
# representations (or the target LM's hidden states), word overlap, nothing (a control), or a
# model fitted on retraining outcomes.
FAMILIES = ("gradient", "representation", "lexical", "control", "datamodel")


class MissingDependency(UserError, ImportError):
    """An optional dependency of a method is not installed."""


def require(module: str, extra: str, method: str) -> Any:
    """Import ``module`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"method {method!r} needs the Python package {module!r}, which is not installed: "
            f"pip install 'tdabench[{extra}]' -c constraints.txt") from err


@dataclass
class FitContext:
    """What a method may know besides the pool: the task, its examples, a cache dir, a seed."""

    spec: TaskSpec
    data: TaskData
    workdir: Path
    seed: int = 0
    workers: int = 1  # processes a method may use to build training ground truth
    executor: str = "local"  # where those processes run: "local" or "ray"
    address: str | None = None  # the Ray cluster's address (None: a local Ray instance)
    device: str = "cpu"  # where torch work runs: "cpu", "cuda" or "cuda:N" (tdabench.device)
    dtype: str = "fp32"  # "fp32", or "bf16" (autocast, CUDA only)


class Method(Protocol):
    """What the harness calls on an adapter (``train``/``score_groups`` are optional extras)."""

    Config: type

    def __init__(self, config: Any) -> None: ...

    def fit(self, pool: list[Example], context: FitContext) -> None: ...

    def score(self, targets: list[Example]) -> np.ndarray: ...


def make_config(method_cls: type[Method], overrides: dict[str, Any] | None = None,
                name: str = "this method") -> Any:
    """The method's Config with ``overrides`` (field name -> string, or a JSON value from a
    configs file) parsed by each field's type, choices (``Literal``) and range (see
    :func:`tdabench.typed.param`); ConfigError naming the field otherwise."""
    values = parse_dataclass_fields(method_cls.Config, overrides or {}, f"method {name!r}")
    return method_cls.Config(**values)


def held_bytes(obj: Any) -> int:
    """Bytes of the numpy arrays, scipy sparse matrices and torch tensors an adapter holds as
    attributes (one level into lists, tuples and dicts): the in-memory part of what it cached
    in ``fit``. Arrays hidden inside library objects are not seen."""
    def size(x: Any) -> int:
        if isinstance(x, np.ndarray):
            return x.nbytes
        if all(hasattr(x, a) for a in ("data", "indices", "indptr")):  # scipy sparse (CSR/CSC)
            return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
        if hasattr(x, "element_size") and hasattr(x, "nelement"):
            return x.element_size() * x.nelement()
        return 0

    total = 0
    for value in vars(obj).values():
        items = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else [value])
        total += sum(size(v) for v in items)
    return total


def example_text(ex: Example, max_prompt_words: int = 256) -> str:
    """The protocol's encoder text: ``"Question: " + prompt + "\\nAnswer: " + response``, with
    the prompt capped at ``max_prompt_words`` words."""
    words = ex.prompt.split()
    prompt = " ".join(words[:max_prompt_words]) if len(words) > max_prompt_words else ex.prompt
    return f"Question: {prompt}\nAnswer: {ex.response}"


TextField = Literal["prompt", "response", "both"]  # the text a text-matching method uses
FIELDS = typing.get_args(TextField)


def check_field(field: str) -> None:
    """Refuse an unknown text ``field`` (see :func:`field_texts`), naming the valid ones."""
    if field not in FIELDS:
        raise ValueError(f"field must be one of {list(FIELDS)}, not {field!r}")


def field_texts(examples: list[Example], field: str, max_prompt_words: int = 256) -> list[str]:
    """The text of each example that a text-matching method indexes or queries with: its
    prompt, its response, or both as :func:`example_text`."""
    check_field(field)
    if field == "prompt":
        return [ex.prompt for ex in examples]
    if field == "response":
        return [ex.response for ex in examples]
    return [example_text(ex, max_prompt_words) for ex in examples]


TextView = Literal["model", "full"]  # what a text method reads of an example (see text_view)
TEXTS = typing.get_args(TextView)


def check_text(text: str) -> None:
    """Refuse an unknown ``text`` (see :func:`text_view`), naming the valid ones."""
    if text not in TEXTS:
        raise ValueError(f"text must be one of {list(TEXTS)}, not {text!r}")


def text_view(text: str, context: FitContext) -> Callable[[list[Example]], list[Example]]:
    """What a text method reads of an example: ``"full"``, the example as stored; ``"model"``,
    its prompt and response as the target LM sees them, each cut to the preset's
    ``max_prompt_tokens`` / ``max_response_tokens`` of the target LM's tokenizer (as
    ``tdabench.lm.encode`` cuts them) and decoded back to text. A part that fits is kept as is.
    On published ground truth (``groundtruth.source="published"``) the model that made the
    losses saw the records as their authors formatted them, not through tdabench's cut, so
    ``"model"`` is the example as stored there too."""
    check_text(text)
    if text == "full" or context.spec.groundtruth.source != "finetune":
        return list
    from . import lm

    spec = context.spec.model
    tokenizer = lm.load_base_model(spec, context.data.warmup, context.data.pool).tokenizer

    def cut(part: str, limit: int) -> str:
        ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        return part if len(ids) <= limit else tokenizer.decode(ids[:limit])

    def view(examples: list[Example]) -> list[Example]:
        return [dataclasses.replace(ex, prompt=cut(ex.prompt, spec.max_prompt_tokens),
                                    response=cut(ex.response, spec.max_response_tokens))
                for ex in examples]

    return view
