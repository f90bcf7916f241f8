"""Measure the cost of one phase of a method: wall time, CPU time, peak memory.

Peak memory is the process's resident set size (RSS), sampled every few milliseconds by a
background thread while the phase runs, because torch and numpy allocate outside Python's
allocator (tracemalloc would miss them). ``peak_rss_delta_bytes`` is the growth over the RSS
at the start of the phase: what the phase itself needed. A phase run on a GPU (``device``, a
:class:`tdabench.device.Device`) also runs under that device's precision (bf16 autocast) and
reports ``cuda_peak_bytes``, the most memory torch allocated on that GPU during the phase.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from tdabench.device import CPU, Device, peak_memory

T = TypeVar("T")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class PhaseCost:
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    peak_rss_delta_bytes: int
    cuda_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(fn: Callable[[], T], interval_s: float = 0.005, device: Device | None = None
            ) -> tuple[T, PhaseCost]:
    """Run ``fn()`` (on ``device``: under its precision, GPU peak memory measured) and return its
    value with the cost of running it. ``cuda_peak_bytes`` is None on the CPU."""
    device = device or CPU

    def run() -> T:
        value = fn()
        device.synchronize()  # queued GPU work belongs to the phase's wall time
        return value

    with device.autocast(), peak_memory(device) as gpu:
        value, cost = _measure(run, interval_s)
    return value, replace(cost, cuda_peak_bytes=gpu["bytes"])


def _measure(fn: Callable[[], T], interval_s: float) -> tuple[T, PhaseCost]:
    start_rss = peak = rss_bytes()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval_s):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        value = fn()
    finally:
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stop.set()
        sampler.join()
    peak = max(peak, rss_bytes())
    return value, PhaseCost(wall, cpu, peak, peak - start_rss)
