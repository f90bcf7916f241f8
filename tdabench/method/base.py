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

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tdabench.errors import UserError
from tdabench.spec import Example, TaskSpec
from tdabench.task import TaskData
from tdabench.typed import parse_dataclass_fields

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
