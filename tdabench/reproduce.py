"""The reference set: every method on every offline task of a preset (``tdabench reproduce``).

Each (task, method) runs in a process of its own, as ``tdabench run`` would: a record's peak
memory is then that method's, not the high-water mark that earlier methods left in a shared
process (in one process, the random baseline, run after nine other methods, reported
2.5 GB).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from pathlib import Path
from typing import Any

from tdabench import record, runner
from tdabench.checks import Resolved, validate
from tdabench.data import DataError
from tdabench.device import CPU_COMPUTE, Compute
from tdabench.errors import UserError
from tdabench.groundtruth.executors import die_with_parent
from tdabench.method import MissingDependency
from tdabench.method.base import Method
from tdabench.protocol import protocol_hash
from tdabench.registry import get_task, method_names, task_names
from tdabench.spec import TaskSpec, spec_hash
from tdabench.task import Task


def current(path: Path, spec: TaskSpec, method_cls: type[Method]) -> bool:
    """Whether the record at ``path`` exists and was made for ``spec`` under this version's
    (Spearman) protocol by this version of the method's adapter (``VERSION``); a record that
    cannot be read is not current."""
    if not path.exists():
        return False
    try:
        rec = record.load(path)
    except record.RecordError:
        return False
    return (rec.spec_hash == spec_hash(spec) and rec.protocol_hash == protocol_hash()
            and record.method_version(rec) >= method_cls.VERSION)


def check_data(tasks: list[tuple[str, Task]], preset: str) -> None:
    """Fetch and verify every task's data (cached after the first time) before any compute, so
    that a source that cannot be had stops the run at once, naming the tasks that can run."""
    missing = {}
    for name, task in tasks:
        try:  # validated: a spec that reads the hub is pinned to its commits first
            task.load(validate(name, preset).spec.data)
        except (DataError, UserError) as err:
            missing[name] = str(err)
    if missing:
        rest = [name for name, _ in tasks if name not in missing]
        fix = f" Reproduce the others with --task {' '.join(rest)}." if rest else ""
        raise DataError("; ".join(f"{name}: {err}" for name, err in missing.items()) + fix)


def selected_tasks(preset: str, tasks: list[str] | None = None) -> list[tuple[str, Task]]:
    """The tasks ``reproduce`` runs at ``preset``: those named, else every task with the preset
    that rebuilds from the package index alone (not optional, not reading the hub), or, on a
    preset only tasks reading the hub have (``paper``), those; an alias once, by its own name."""
    selected = [(name, get_task(name)) for name in tasks or task_names()]
    selected = [(name, task) for name, task in selected if preset in task.presets]
    if tasks is None:
        selected = [(name, task) for name, task in selected if not task.optional]
        selected = [(name, task) for name, task in selected if not task.needs_hub] or selected
    return list({task.name: (task.name, task) for _, task in selected}.values())


def reproduce(preset: str = "tiny", tasks: list[str] | None = None, methods: list[str] | None = None,
              configs: dict[str, dict[str, str]] | None = None,
              results_dir: Path | str = record.REFERENCE_RESULTS, compute: Compute = CPU_COMPUTE,
              tuned: dict[str, dict[str, Any]] | None = None) -> list[Path]:
    """Run every method on every offline task that has ``preset`` but the optional ones (on a
    preset that only tasks reading the hub have, ``paper``: those, each once under its own name;
    named ``tasks``: those, optional or not), skipping records that
    exist for the current spec and protocol and the adapter's current ``VERSION`` (so it resumes).
    ``configs`` maps a method to its config overrides. Methods whose optional dependency is
    missing are skipped with a message; ``compute``: where every phase runs; ``tuned`` maps a
    method to how its settings were chosen (stored in its records)."""
    configs = configs or {}
    record.check_writable(results_dir)
    selected = selected_tasks(preset, tasks)
    check_data(selected, preset)
    written = []
    for task_name, _ in selected:
        for method in methods or method_names():
            try:
                resolved = validate(task_name, preset, None, method, configs.get(method), evaluates=True)
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            out = runner.record_path(results_dir, resolved.spec, method, resolved.config_hash, 0)
            if current(out, resolved.spec, resolved.method_cls):
                print(f"exists: {out}")
                continue
            try:
                out = run_isolated(resolved, compute=compute, results_dir=results_dir,
                                   tuning=(tuned or {}).get(method))
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            written.append(out)
    return written


def run_isolated(resolved: Resolved, **kwargs: Any) -> Path:
    """``runner.run_resolved`` in a child process, which prints the record's summary and dies with this
    process. Forked, so that it sees the tasks and methods registered here; ``tdabench
    reproduce`` has run no torch work before it forks (a caller that has should hold torch to
    one thread, as the tests do). Returns the record's path; the child's error is raised here."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_run_child, args=(send, os.getpid(), resolved, kwargs))
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # the child died without a word (killed, out of memory)
        ok, value = False, None
    except BaseException:
        child.kill()
        raise
    finally:
        child.join()
    if value is None:
        raise RuntimeError(f"{resolved.method} on {resolved.spec.task}/{resolved.preset} died (exit code "
                           f"{child.exitcode}); rerun it with `tdabench run` to see why")
    if not ok:
        raise value
    return value


def _run_child(send: Any, parent: int, resolved: Resolved, kwargs: dict) -> None:
    die_with_parent(parent)
    try:
        rec, out = runner.run_resolved(resolved, **kwargs)
        print(runner.summary(rec), flush=True)
        send.send((True, out))
    except BaseException as err:  # sent to the parent, which raises it
        if not isinstance(err, UserError):  # a bug: its traceback, which pickling drops
            traceback.print_exc()
        try:
            send.send((False, err))
        except Exception:  # an error that cannot be pickled: its text
            send.send((False, RuntimeError(f"{type(err).__name__}: {err}")))
