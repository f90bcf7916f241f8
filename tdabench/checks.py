"""Everything a command checks before it spends any compute, in well under a second.

:func:`validate` resolves (into a :class:`Resolved`, which the runner consumes as it is) and
checks the task and preset, the spec overrides (typed and ranged), the method, its config
(typed, ranged, and the adapter's own cross-field checks), the results directory, and the
minimums a meaningful bank needs (:func:`minimums`). A problem is a
:class:`~tdabench.errors.UserError` whose message names the thing and the fix; a setting that
wastes compute without being wrong is returned as a warning.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdabench.errors import ConfigError, UserError
from tdabench.groundtruth.bank import pool_minimums
from tdabench.spec import TaskSpec, override, stable_hash
from tdabench.task import Task, TaskData
from tdabench.typed import hashed_fields

if TYPE_CHECKING:
    from tdabench.method.base import Method

# The fewest test subsets an LDS is computed over: a rank correlation over two points is +-1
# whatever the scores, so three is the least that says anything (tens are needed for a tight
# interval; the presets use 80).
MIN_TEST_SUBSETS = 3


@dataclass
class Resolved:
    """A command's inputs, resolved and checked once by :func:`validate`: the task, the preset
    (a task's only one when none was given), the spec with its overrides and, for a method
    command, the adapter class and its config; ``warnings`` to show the user. The task's
    examples (``data``) load on first use. The runner consumes it as it is."""

    task: Task
    preset: str
    spec: TaskSpec
    method: str | None = None
    method_cls: type[Method] | None = None
    config: Any = None
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def data(self) -> TaskData:
        return self.task.load(self.spec.data)

    @property
    def config_dict(self) -> dict[str, Any]:
        """The config as a plain dict (a fresh copy): what the record stores."""
        return dataclasses.asdict(self.config)

    @property
    def config_hash(self) -> str:
        """What names the config in records and work directories."""
        return stable_hash(hashed_fields(self.config), 8)

    def with_config(self, overrides: dict[str, Any]) -> Resolved:
        """The same run with config fields overridden (checked as :func:`check_method` does)."""
        resolved = dataclasses.replace(
            self, config=check_method(self.method, {**self.config_dict, **overrides}))
        resolved.__dict__["data"] = self.data  # the same examples, loaded once
        return resolved


def validate(task: str, preset: str | None = None, spec_overrides: dict[str, str] | None = None,
             method: str | None = None, config: dict[str, Any] | None = None,
             results_dir: Path | None = None, evaluates: bool = False, trains: bool = False,
             grid: dict[str, list[str]] | None = None) -> Resolved:
    """Check a command's inputs without computing anything and resolve them; UserError on the
    first problem.

    ``evaluates``: the command computes an LDS (run, tune), so the bank must have enough test
    subsets; ``trains``: the method must have a ``train`` phase; ``grid``: each value of a
    tuning grid is checked as a config value too.
    """
    from tdabench import record
    from tdabench.registry import get_method, get_task

    t = get_task(task)
    preset = t.default_preset() if preset is None else preset
    resolved = Resolved(t, preset, override(t.spec(preset), spec_overrides or {}))
    t.check_options(preset, resolved.spec.data.options)
    if method is not None:
        resolved.method, resolved.method_cls = method, get_method(method)
        resolved.config = check_method(method, config, trains)
        both = sorted(set(grid or {}) & set(config or {}))
        if both:
            raise ConfigError(f"{', '.join(both)}: both tuned (--grid) and set (--config); a tuned "
                              "field takes the grid's values: drop one of the two")
        for key, values in (grid or {}).items():
            for value in values:
                check_method(method, {**(config or {}), key: value})
    if results_dir is not None:
        record.check_writable(results_dir)
    resolved.warnings = minimums(resolved.spec, evaluates)
    if t.pin is not None:  # last: it may ask the hub, after every check that needs nothing
        resolved.spec = t.pin(resolved.spec)
    return resolved


def check_method(name: str, config: dict[str, Any] | None = None, trains: bool = False) -> Any:
    """The method's config with ``config`` applied, its adapter constructed once (so its own
    cross-field checks run); UserError naming the method otherwise."""
    from tdabench.method import make_config
    from tdabench.registry import get_method

    cls = get_method(name)
    cfg = make_config(cls, config, name)
    try:
        cls(cfg)
    except ValueError as err:  # check_config refuses a config and does nothing else
        raise ConfigError(f"method {name!r}: {err}") from err
    if trains and not cls.trains():
        raise UserError(f"method {name!r} has nothing to train; `tdabench run` runs it directly")
    return cfg


def minimums(spec: TaskSpec, evaluates: bool = False) -> list[str]:
    """Refuse a spec whose bank cannot give a meaningful number; return warnings for one
    that wastes compute.

    Minimums: at least :data:`MIN_TEST_SUBSETS` test subsets (when ``evaluates``), at least
    :data:`~tdabench.groundtruth.bank.MIN_SUBSET_SIZE` pool examples per subset with some left
    out; with two or more training seeds, subsets larger than one batch (else the seeds only
    reorder one batch, change nothing, and the noise ceiling reads 1).
    """
    gt = spec.groundtruth
    if not re.fullmatch(r"all|top:[1-9][0-9]*", spec.model.trainable):
        raise ConfigError(f"model.trainable must be 'all' or 'top:K' (K >= 1 blocks), not "
                          f"{spec.model.trainable!r}")
    top = spec.model.trainable.removeprefix("top:")
    if spec.model.init == "scratch" and top.isdigit() and int(top) > spec.model.n_layers:
        raise ConfigError(f"model.trainable=top:{top} trains more blocks than the model's "
                          f"model.n_layers={spec.model.n_layers}: use top:1 to top:{spec.model.n_layers}, "
                          "or all")
    if spec.model.init == "gguf":
        from tdabench.lm import PACKAGED_MODELS

        if spec.model.name not in PACKAGED_MODELS:
            raise ConfigError(f"model.name {spec.model.name!r} is not a packaged GGUF model; "
                              f"known: {sorted(PACKAGED_MODELS)}")
    if evaluates and gt.source == "finetune":
        from tdabench.protocol import tuning_subsets

        n_test = int((~tuning_subsets(gt.n_subsets)).sum())
        if n_test < MIN_TEST_SUBSETS:
            need = next(m for m in range(1, 100) if (~tuning_subsets(m)).sum() >= MIN_TEST_SUBSETS)
            raise ConfigError(
                f"groundtruth.n_subsets={gt.n_subsets} leaves {n_test} test subset(s) (every fifth "
                f"subset is kept for tuning); an LDS needs at least {MIN_TEST_SUBSETS}: use "
                f"--set groundtruth.n_subsets={need} or more (the presets use 100)")
    if gt.source != "finetune" or not spec.data.n_pool:
        return []
    check_bank_memory(spec)
    return pool_minimums(spec, spec.data.n_pool)


def check_bank_memory(spec: TaskSpec) -> None:
    """Refuse a bank whose arrays would not fit in this machine's memory: its (M, N) bool
    membership and (M, R, T) float64 losses (numpy failed with a MemoryError after the checks)."""
    gt, data = spec.groundtruth, spec.data
    need = gt.n_subsets * data.n_pool + gt.n_subsets * gt.n_seeds * data.n_targets * 8
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(f"groundtruth.n_subsets={gt.n_subsets} makes a bank of {need / 2**30:.1f} GiB "
                          f"in memory ({gt.n_subsets} subsets x {data.n_pool} pool examples, "
                          f"{gt.n_seeds} seed(s) x {data.n_targets} targets), more than this machine's "
                          f"{have / 2**30:.1f} GiB: use fewer subsets (the presets use 100)")
