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
  phase of its own and reported apart from ``fit``.

The harness times ``fit`` and ``score``; an adapter never times itself or writes results. It may
keep train-side files under ``context.workdir``, whose size the harness reports as storage.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .spec import Example, TaskSpec, parse_value
from .task import TaskData


class MissingDependency(ImportError):
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


@runtime_checkable
class Method(Protocol):
    Config: type

    def fit(self, pool: list[Example], context: FitContext) -> None: ...

    def score(self, targets: list[Example]) -> np.ndarray: ...


def make_config(method_cls: type, overrides: dict[str, str] | None = None) -> Any:
    """The method's Config with ``overrides`` (field name -> string value) applied."""
    fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    unknown = set(overrides or {}) - fields
    if unknown:
        raise KeyError(f"unknown config field(s) {sorted(unknown)} for this method; "
                       f"valid fields: {sorted(fields)}")
    return method_cls.Config(**{k: parse_value(v) for k, v in (overrides or {}).items()})


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


FIELDS = ("prompt", "response", "both")


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


TEXTS = ("model", "full")


def check_text(text: str) -> None:
    """Refuse an unknown ``text`` (see :func:`text_view`), naming the valid ones."""
    if text not in TEXTS:
        raise ValueError(f"text must be one of {list(TEXTS)}, not {text!r}")


def text_view(text: str, context: FitContext) -> Callable[[list[Example]], list[Example]]:
    """What a text method reads of an example: ``"full"``, the example as stored; ``"model"``,
    its prompt and response as the target LM sees them, each cut to the preset's
    ``max_prompt_tokens`` / ``max_response_tokens`` of the target LM's tokenizer (as
    ``tdabench.lm.encode`` cuts them) and decoded back to text. A part that fits is kept as is."""
    check_text(text)
    if text == "full":
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
