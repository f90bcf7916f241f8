"""The reference set: every method on every offline task of a preset (``tdabench reproduce``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from . import record, runner
from .data import DataError
from .device import CPU, Device
from .method import MissingDependency, make_config
from .protocol import protocol_hash
from .registry import get_method, get_task, method_names, task_names
from .spec import TaskSpec, spec_hash, stable_hash
from .task import Task


def current(path: Path, spec: TaskSpec) -> bool:
    """Whether the record at ``path`` exists and was made for ``spec`` under this version's
    (Spearman) protocol; a record that cannot be read is not current."""
    if not path.exists():
        return False
    try:
        rec = record.load(path)
    except record.RecordError:
        return False
    return rec.spec_hash == spec_hash(spec) and rec.protocol_hash == protocol_hash()


def check_data(tasks: list[tuple[str, Task]], preset: str) -> None:
    """Fetch and verify every task's data (cached after the first time) before any compute, so
    that a source that cannot be had stops the run at once, naming the tasks that can run."""
    missing = {}
    for name, task in tasks:
        try:
            task.load(task.spec(preset).data)
        except DataError as err:
            missing[name] = str(err)
    if missing:
        rest = [name for name, _ in tasks if name not in missing]
        fix = f" Reproduce the others with --task {' '.join(rest)}." if rest else ""
        raise DataError("; ".join(f"{name}: {err}" for name, err in missing.items()) + fix)


def reproduce(preset: str = "tiny", tasks: list[str] | None = None, methods: list[str] | None = None,
              configs: dict[str, dict[str, str]] | None = None,
              results_dir: Path | str = record.REFERENCE_RESULTS, workers: int = 1,
              device: Device = CPU, tuned: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Run every method on every offline task that has ``preset``, skipping records that exist
    for the current spec and protocol (so it resumes). ``configs`` maps a method to its config
    overrides. Methods whose optional dependency is missing are skipped with a message;
    ``device``: where every phase runs; ``tuned`` maps a method to how its settings were chosen
    (stored in its records)."""
    configs = configs or {}
    record.check_writable(results_dir)
    selected = [(name, get_task(name)) for name in tasks or task_names()]
    selected = [(name, task) for name, task in selected
                if preset in task.presets and not (tasks is None and task.needs_hub)]
    check_data(selected, preset)
    written = []
    for task_name, task in selected:
        spec = task.spec(preset)
        for method in methods or method_names():
            try:
                cfg = make_config(get_method(method), configs.get(method))
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            out = runner.record_path(results_dir, spec, method, stable_hash(dataclasses.asdict(cfg), 8), 0)
            if current(out, spec):
                print(f"exists: {out}")
                continue
            try:
                rec, out = runner.run(method, task_name, preset, config=configs.get(method),
                                      workers=workers, results_dir=results_dir, device=device,
                                      tuning=(tuned or {}).get(method))
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            print(runner.summary(rec))
            written.append(out)
    return written
