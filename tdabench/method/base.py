"""The adapter contract: :class:`Method`, the base class every method adapter subclasses.

It declares every member the harness uses, with its default, so an adapter overrides only what
it does (``docs/adding-a-method.md`` walks through one):

* ``Config``: a dataclass of the method's hyperparameters, every field with a default
  (:func:`tdabench.typed.param` gives a field help, choices and a range);
* ``VERSION``: an integer bumped whenever a change to the adapter may move its numbers; records
  store it and ``tdabench reproduce`` reruns a record of an older version;
* ``FAMILY``: what the method scores with, one of :data:`FAMILIES` (the leaderboard's speed line
  compares against the ``gradient`` family); ``REFERENCE = True`` for a reference shown apart and
  never ranked (a datamodel); ``EVALUATION_POOLING``: the group pooling of the paper tier's
  headline (the authors' evaluation), None for the sum;
* ``GRID``: the tuning grid, config field -> the values tried (the knobs the method's authors
  expose, over the ranges they use), at most :data:`tdabench.protocol.TUNING_BUDGET`
  configurations in all; ``tdabench tune`` and ``tdabench run --tune`` search it on the tuning
  subsets only; empty: nothing to tune;
* ``check_config()``: cross-field checks of the config, run by ``__init__`` before any compute;
  raise ValueError (the command line prints it as one line);
* ``train(context) -> Trained``: learning the method itself (AirRep's encoder, a datamodel's
  bank), timed as a phase of its own; only a method that learns something overrides it;
* ``fit(pool, context)``: the train-side work (encode, featurise, cache) on the pool;
* ``score(targets) -> (T, N)``: per-example scores, **higher = more helpful** (the training
  example lowers the target's loss);
* ``score_groups(targets, membership) -> (T, M) | None``: a group score that is not the sum of
  per-example scores (``membership``: (M, N) bool); None (the default) means the sum;
* ``resolved() -> dict``: what the config's host-dependent choices (``auto``) resolved to, for
  the record (the config and its hash keep ``auto``).

The harness times every phase; an adapter never times itself or writes results. It may keep
train-side files under ``context.workdir``, whose size the harness reports as storage, and builds
any ground truth of its own through ``context.own_banks`` (never by reading bank files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tdabench.device import CPU_COMPUTE, Compute, Device
from tdabench.errors import MissingDependency, UserError, require  # noqa: F401  (part of the contract)
from tdabench.spec import Example, TaskSpec
from tdabench.task import Task, TaskData
from tdabench.typed import parse_dataclass_fields

if TYPE_CHECKING:
    from tdabench.groundtruth import OwnBanks

# What a method scores with: gradients of the target LM, learned or off-the-shelf text
# representations (or the target LM's hidden states), word overlap, nothing (a control), or a
# model fitted on retraining outcomes.
FAMILIES = ("gradient", "representation", "lexical", "control", "datamodel")


@dataclass(frozen=True)
class Trained:
    """What a ``train`` phase did: ``cached``: it loaded what it trains instead of training (the
    record marks the phase cached, never ranked); ``artifact``: where the result is (a
    checkpoint; ``tdabench train`` prints it); ``cost``: the training's own account of what it
    cost when it ran (for a cached one, as measured then), stored in the record."""

    cached: bool
    artifact: str | None = None
    cost: dict[str, Any] | None = None


@dataclass
class FitContext:
    """What a method may know besides the pool: the task's spec and examples, a fresh work
    directory, the run's seed, where compute runs (``compute``: workers, executor and the
    whole :class:`~tdabench.device.Device`) and the task (for another preset of it)."""

    spec: TaskSpec
    data: TaskData
    workdir: Path
    seed: int = 0
    compute: Compute = CPU_COMPUTE
    task: Task | None = None  # the task itself, for :meth:`at_preset`

    @property
    def device(self) -> Device:
        """Where torch work runs (``device.name`` for ``.to(...)``; ``device.autocast()``)."""
        return self.compute.device

    def own_banks(self, parts: Sequence[tuple[TaskSpec, TaskData]], label: str) -> OwnBanks:
        """Build (or resume) ground-truth banks that the method itself learns from (AirRep's
        training splits, a datamodel's bank): one per (spec, data), with this run's compute, in
        the harness's cache (see :func:`tdabench.groundtruth.own_banks`)."""
        from tdabench.groundtruth import own_banks

        return own_banks(parts, label, self.compute)

    def at_preset(self, preset: str) -> FitContext:
        """The same task at another preset (its spec as registered, without this run's
        ``--set`` overrides), e.g. to train on a cheaper tier's ground truth."""
        if self.task is None:
            raise ValueError("this context has no task to take another preset of")
        spec = self.task.spec(preset)
        return replace(self, spec=spec, data=self.task.load(spec.data))


@dataclass
class NoConfig:
    """The config of a method without hyperparameters."""


class Method:
    """The base class of every method adapter (see the module docstring for each member)."""

    Config: ClassVar[type] = NoConfig
    VERSION: ClassVar[int] = 1
    FAMILY: ClassVar[str]
    REFERENCE: ClassVar[bool] = False
    EVALUATION_POOLING: ClassVar[str | None] = None
    GRID: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, config: Any) -> None:
        self.config = config
        self.check_config()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        family = getattr(cls, "FAMILY", None)
        if family is not None and family not in FAMILIES:
            raise TypeError(f"{cls.__name__}.FAMILY must be one of {FAMILIES}, not {family!r}")

    def check_config(self) -> None:
        """Cross-field checks of ``self.config``; raise ValueError naming the problem."""

    @classmethod
    def trains(cls) -> bool:
        """Whether the method has a ``train`` phase (it overrides :meth:`train`)."""
        return cls.train is not Method.train

    def train(self, context: FitContext) -> Trained:
        """Learn the method itself; only methods that learn something override it."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to train")

    def fit(self, pool: list[Example], context: FitContext) -> None:
        """The train-side work on the pool (N examples)."""
        raise NotImplementedError

    def score(self, targets: list[Example]) -> np.ndarray:
        """(T, N) scores of every pool example for every target; higher = more helpful."""
        raise NotImplementedError

    def score_groups(self, targets: list[Example], membership: np.ndarray) -> np.ndarray | None:
        """(T, M) group scores for the subsets of ``membership`` ((M, N) bool), or None for the
        sum of the per-example scores over each subset."""
        return None

    def resolved(self) -> dict[str, Any]:
        """What host-dependent config values (``auto``) resolved to in this run."""
        return {}


def check_adapter(cls: Any, name: str) -> type[Method]:
    """``cls`` if it is a :class:`Method` subclass with a family; UserError otherwise."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"method {name!r} ({cls!r}) does not subclass tdabench.method.Method; "
                        "adapters subclass it (see docs/adding-a-method.md)")
    if getattr(cls, "FAMILY", None) is None:
        raise UserError(f"method {name!r} ({cls.__name__}) declares no FAMILY; set one of {FAMILIES}")
    return cls


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
