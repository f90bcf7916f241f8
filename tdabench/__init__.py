"""tdabench: a benchmark suite for training data attribution on language models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def load_records(path: Path | str) -> Any:
    """Every result record under ``path`` as a pandas DataFrame with flat dotted columns
    (``metrics.lds.mean``, ``cost.fit.wall_s``, ...); see :func:`tdabench.record.load_records`.
    Schema-2 records are upgraded on the way in."""
    from tdabench.record import load_records as load

    return load(path)
