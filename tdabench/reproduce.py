"""The reference set: every method on every offline task of a preset (``tdabench reproduce``).

Each (task, method) runs in a process of its own, as ``tdabench run`` would: a record's peak
memory is then that method's, not the high-water mark that earlier methods left in a shared
process (in one process, the random baseline, run after nine other methods, reported
2.5 GB).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import traceback
from pathlib import Path
from typing import Any

from tdabench import record, runner
from tdabench.data import DataError
from tdabench.device import CPU, Device
from tdabench.errors import UserError
from tdabench.groundtruth.executors import die_with_parent
from tdabench.method import MissingDependency, make_config
from tdabench.protocol import protocol_hash
from tdabench.registry import get_method, get_task, method_names, task_names
from tdabench.spec import TaskSpec, spec_hash, stable_hash
from tdabench.task import Task


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
            kwargs = dict(config=configs.get(method), workers=workers, results_dir=results_dir,
                          device=device, tuning=(tuned or {}).get(method))
            try:
                out = run_isolated(method, task_name, preset, **kwargs)
            except MissingDependency as err:
                print(f"skip {method}: {err}")
                continue
            written.append(out)
    return written


def run_isolated(method: str, task: str, preset: str, **kwargs: Any) -> Path:
    """``runner.run`` in a child process, which prints the record's summary and dies with this
    process. Forked, so that it sees the tasks and methods registered here; ``tdabench
    reproduce`` has run no torch work before it forks (a caller that has should hold torch to
    one thread, as the tests do). Returns the record's path; the child's error is raised here."""
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_run_child, args=(send, os.getpid(), method, task, preset, kwargs))
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
        raise RuntimeError(f"{method} on {task}/{preset} died (exit code {child.exitcode}); "
                           f"rerun it with `tdabench run` to see why")
    if not ok:
        raise value
    return value


def _run_child(send: Any, parent: int, method: str, task: str, preset: str, kwargs: dict) -> None:
    die_with_parent(parent)
    try:
        rec, out = runner.run(method, task, preset, **kwargs)
        print(runner.summary(rec), flush=True)
        send.send((True, out))
    except BaseException as err:  # sent to the parent, which raises it
        if not isinstance(err, UserError):  # a bug: its traceback, which pickling drops
            traceback.print_exc()
        try:
            send.send((False, err))
        except Exception:  # an error that cannot be pickled: its text
            send.send((False, RuntimeError(f"{type(err).__name__}: {err}")))
