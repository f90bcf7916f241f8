"""Find tasks and methods by name through the ``tdabench.tasks`` / ``tdabench.methods`` entry
points, so a third-party package adds a method by declaring an entry point; no harness edit."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from tdabench.errors import UnknownName
from tdabench.task import Task

if TYPE_CHECKING:
    from tdabench.method import Method

_extra_tasks: dict[str, Task] = {}
_extra_methods: dict[str, type[Method]] = {}


def register_task(task: Task) -> None:
    """Register a task at run time (tests, notebooks); entry points are the usual way."""
    _extra_tasks[task.name] = task


def register_method(name: str, method_cls: type[Method]) -> None:
    """Register a method adapter class at run time (a :class:`tdabench.method.Method` subclass;
    UserError otherwise)."""
    from tdabench.method.base import check_adapter

    _extra_methods[name] = check_adapter(method_cls, name)


def _entry_points(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def task_names() -> list[str]:
    return sorted(set(_entry_points("tdabench.tasks")) | set(_extra_tasks))


def method_names() -> list[str]:
    return sorted(set(_entry_points("tdabench.methods")) | set(_extra_methods))


def get_task(name: str) -> Task:
    """A registered task, or ``jsonl:PATH`` for a user's own data file."""
    if name.startswith("jsonl:"):
        from tdabench.userdata import jsonl_task

        return jsonl_task(name[len("jsonl:"):])
    if name in _extra_tasks:
        return _extra_tasks[name]
    eps = _entry_points("tdabench.tasks")
    if name not in eps:
        raise UnknownName(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}, "
                       "or jsonl:PATH for your own data")
    return eps[name].load()


def get_method(name: str) -> type[Method]:
    """A registered method adapter class (UnknownName listing the valid ones otherwise; a class
    that does not subclass :class:`tdabench.method.Method` is refused in one line)."""
    from tdabench.method.base import check_adapter

    if name in _extra_methods:
        return _extra_methods[name]
    eps = _entry_points("tdabench.methods")
    if name not in eps:
        raise UnknownName(f"unknown method {name!r}; valid methods: {', '.join(method_names())}")
    return check_adapter(eps[name].load(), name)
