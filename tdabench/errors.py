"""User errors: bad input that the command line reports in one line, without a traceback.

Everything that derives from :class:`UserError` is a problem the user can fix (an unknown
name, a malformed value, a data file, a bank built for something else); ``tdabench`` prints
its message and exits with status 2. Any other exception is a bug (or an environment fault)
and keeps its traceback.
"""

from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """Bad input or state that the user can fix; the message names the thing and the fix."""


class ConfigError(UserError, ValueError):
    """A method config field, a spec field or a command-line value is unknown or invalid."""


class DiskSpaceError(UserError, OSError):
    """Not enough free disk for what a run is about to write."""


class UnknownName(UserError, KeyError):
    """No task, method or preset of that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; a message should not be
        return str(self.args[0]) if self.args else ""


class MissingDependency(UserError, ImportError):
    """An optional dependency of a method is not installed."""


def require(module: str, extra: str, method: str) -> Any:
    """Import ``module`` or say which extra installs it (for ``method``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"method {method!r} needs the Python package {module!r}, which is not installed: "
            f"pip install 'tdabench[{extra}]' -c constraints.txt") from err
