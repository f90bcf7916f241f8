"""The performance suite's shared parts: full or smoke sizes, the machine's load, the summary.

``pytest tests/benchmarks --benchmark-enable --benchmark-only`` is the timed run: full sizes,
a summary of every figure at the end of the output, and the figures written to
``results/perf/<group>.json``. The default test run (``--benchmark-disable``) executes each
benchmark once at smoke sizes, as a test: cheap enough for CI, and nothing is written.

Every session has its own cache (``tests/conftest.py``); downloaded archives (checked against
their sha256 on every use) and the examples parsed from them are linked in from the user's
cache when it has them, so a timed run measures the work, not a download.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tdabench.store import CACHE_ENV

USER_CACHE = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tdabench")
PERF_DIR = Path(__file__).resolve().parents[2] / "results" / "perf"
SHARED = ("downloads", "examples")  # content-addressed data, never a built model or a result


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"2.1/1.8/1.5"`` (timings on a shared
    machine mean little without them)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


@dataclass
class PerfReport:
    """Figures collected during the session: one summary line each, and their values by group."""

    full: bool
    lines: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, group: str, key: str, line: str, **values: Any) -> None:
        """Record one figure: ``line`` for the summary (the load average is appended)."""
        load = load_average()
        self.lines.append(f"[{group}] {line}  (load {load})")
        self.groups.setdefault(group, {})[key] = {**values, "load_average": load}

    def write(self) -> list[Path]:
        """Write every group to ``results/perf/<group>.json`` (full runs only)."""
        if not self.full:
            return []
        PERF_DIR.mkdir(parents=True, exist_ok=True)
        written = []
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for group, figures in self.groups.items():
            path = PERF_DIR / f"{group}.json"
            path.write_text(json.dumps({"measured": stamp, "machine": machine(), "figures": figures},
                                       indent=2) + "\n")
            written.append(path)
        return written


def _benchmarks_enabled(config: pytest.Config) -> bool:
    return not (config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


@pytest.fixture(scope="session")
def perf(request: pytest.FixtureRequest) -> Iterator[PerfReport]:
    """The session's :class:`PerfReport`; ``perf.full`` says whether sizes are the full ones."""
    report = PerfReport(full=_benchmarks_enabled(request.config))
    request.config.stash[_REPORT] = report
    yield report
    report.write()


_REPORT = pytest.StashKey[PerfReport]()


@pytest.fixture(scope="session", autouse=True)
def shared_data(private_cache: Path) -> None:
    """Link the user's downloaded archives and parsed examples into the private cache."""
    torch.set_num_threads(1)
    for name in SHARED:
        source = USER_CACHE / name
        if not source.is_dir() or source.resolve() == (private_cache / name).resolve():
            continue
        (private_cache / name).mkdir(exist_ok=True)
        for item in source.iterdir():
            link = private_cache / name / item.name
            if item.is_file() and not item.name.startswith(".") and not link.exists():
                link.symlink_to(item)


def _timed(benchmark: Any, fn: Callable[[], Any], rounds: int | None = None) -> tuple[Any, float]:
    """Run ``fn`` under pytest-benchmark (calibrated, or ``rounds`` plain calls) and return its
    result with its median wall time in seconds (also when benchmarks are disabled, when it
    runs once)."""
    import statistics
    import time

    durations: list[float] = []

    def run() -> Any:
        start = time.perf_counter()
        out = fn()
        durations.append(time.perf_counter() - start)
        return out

    result = benchmark(run) if rounds is None else benchmark.pedantic(run, rounds=rounds)
    return result, statistics.median(durations)


@pytest.fixture(scope="session")
def timed() -> Callable[..., tuple[Any, float]]:
    """``timed(benchmark, fn, rounds=None) -> (result, median seconds)``: ``fn`` under
    pytest-benchmark, with its wall time also when benchmarks are disabled (then it runs once)."""
    return _timed


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print every recorded figure, one line each, after the benchmark tables."""
    report = config.stash.get(_REPORT, None)
    if report is None or not report.lines:
        return
    mode = "full sizes" if report.full else "smoke sizes (benchmarks disabled: not timed runs)"
    terminalreporter.section(f"tdabench performance figures, {mode}")
    for line in report.lines:
        terminalreporter.write_line(line)
    if report.full:
        terminalreporter.write_line(f"written to {PERF_DIR}/<group>.json")
