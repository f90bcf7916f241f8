"""What a task module provides: named presets (task specs) and a loader for its examples."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tdabench.errors import UnknownName, UserError
from tdabench.spec import DataSpec, Example, TaskSpec


@dataclass(frozen=True)
class PublishedGroundTruth:
    """Ground truth made elsewhere: ``membership`` (M, N) bool, ``losses`` (M, T) or (M, R, T),
    ``provenance`` naming the source and its file hashes (stands in for the model fingerprint)."""

    membership: np.ndarray
    losses: np.ndarray
    provenance: str


@dataclass(frozen=True)
class TaskData:
    """The examples of a task.

    ``pool``: the training pool that subsets are drawn from and methods attribute to (N).
    ``targets``: the test examples whose loss is measured (T). Tasks keep them apart from the
    pool; where a target is also a pool example (a method's training split), no subset holds it.
    ``warmup``: examples kept apart from pool and targets, used only to warm up a from-scratch
    target LM, so that the counterfactual fine-tunes start from a model that never saw the pool.
    """

    pool: list[Example]
    targets: list[Example]
    warmup: list[Example]

    def __post_init__(self) -> None:
        for name in ("pool", "targets", "warmup"):
            ids = [ex.id for ex in getattr(self, name)]
            if len(set(ids)) != len(ids):
                repeated = sorted({i for i in ids if ids.count(i) > 1})
                raise UserError(f"example ids must be unique within {name}; repeated: "
                                f"{repeated[:10]}" + (" ..." if len(repeated) > 10 else ""))
        warm = {ex.id for ex in self.warmup}
        if any(ex.id in warm for ex in self.pool + self.targets):
            shared = sorted(ex.id for ex in self.pool + self.targets if ex.id in warm)
            raise UserError(f"warm-up examples must be kept apart from pool and targets; in both: "
                            f"{shared[:10]}")


@dataclass(frozen=True)
class Task:
    """A task: a name, presets (``tiny``, ...) and ``load(data_spec) -> TaskData``.

    ``labels`` describes the source labels (e.g. ``"topic (21)"``);
    ``published_groundtruth(spec, data) -> PublishedGroundTruth`` serves presets whose
    ``groundtruth.source`` is ``"published"``; ``needs_hub`` says the data comes from the hub;
    ``data_options``: the ``data.options`` keys the task reads besides those its presets set
    (any other key is refused before anything is built); ``pin(spec) -> spec`` replaces what
    can move in a spec (a hub branch) by what cannot (its commit), once, when the command is
    validated, so that the spec, its hash and its bank name what was read; ``published_lds``:
    per method, the figure its authors publish on this task's published ground truth, as they
    state it and where (records on that ground truth carry it beside what was measured);
    ``optional``: why the task is left out of ``reproduce``'s defaults and the leaderboard's
    overview (its data needs a file the package index no longer serves), "" for a default task.
    """

    name: str
    description: str
    presets: dict[str, TaskSpec]
    load: Callable[[DataSpec], TaskData]
    labels: str = ""
    published_groundtruth: Callable[[TaskSpec, TaskData], Any] | None = None
    needs_hub: bool = False
    data_options: tuple[str, ...] = ()
    pin: Callable[[TaskSpec], TaskSpec] | None = None
    published_lds: dict[str, str] = dataclasses.field(default_factory=dict)
    optional: str = ""

    def check_options(self, preset: str, options: dict[str, Any]) -> None:
        """Refuse ``data.options`` keys that neither the preset sets nor the task reads."""
        known = set(self.presets[preset].data.options) | set(self.data_options)
        unknown = sorted(set(options) - known)
        if unknown:
            raise UserError(f"unknown data option(s) {unknown} for task {self.name!r}: it reads "
                            f"{sorted(known) or 'none'} (an unknown key would only rename the bank)")

    def default_preset(self) -> str:
        """``tiny`` where the task has it, else its only preset (UnknownName if it has several)."""
        if "tiny" in self.presets or len(self.presets) != 1:
            if "tiny" not in self.presets:
                raise UnknownName(f"task {self.name!r} has no preset 'tiny'; choose one with "
                                  f"--preset: {sorted(self.presets)}")
            return "tiny"
        return next(iter(self.presets))

    def spec(self, preset: str | None = None) -> TaskSpec:
        """The spec of ``preset`` (None: :meth:`default_preset`)."""
        preset = self.default_preset() if preset is None else preset
        if preset not in self.presets:
            raise UnknownName(
                f"task {self.name!r} has no preset {preset!r}; valid presets: {sorted(self.presets)}")
        return self.presets[preset]
