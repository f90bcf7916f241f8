"""Executors: run independent jobs, each in a worker that was initialised once.

A job's worker writes its own result (atomically), so an executor only schedules and reports
progress: killing it loses at most the jobs that were running. Local workers die with the
process that started them (on Linux the kernel sends them SIGKILL when it ends, however it
ends; elsewhere a watchdog thread notices the parent is gone), and ignore Ctrl-C, which
the parent handles once.

Two executors share one contract: :func:`run_local` (this machine's processes, the default, no
extra dependency) and :func:`run_ray` (a local Ray instance or a Ray cluster; ``pip install
"tdabench[ray]"``). ``ray`` is imported only inside the Ray path.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

_worker_state: Any = None
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, interval_s: float = 1.0) -> None:
    """End this worker when process ``parent`` ends: PR_SET_PDEATHSIG on Linux (the kernel
    kills it), and a watchdog thread everywhere (checks the parent pid every ``interval_s``)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the call above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="tdabench-parent-watchdog").start()


@contextlib.contextmanager
def _sigint_held_for_children():
    """Block SIGINT while worker processes are started: they inherit the blocked signal from
    their very first import (and ignore it once they run, :func:`_init_worker`), so a Ctrl-C
    during start-up interrupts only this process, which reports it once; here it stays pending
    and is raised the moment the window closes (it was once ignored here, and so lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _init_worker(parent: int, init: Callable[..., Any], args: tuple) -> None:
    import torch

    global _worker_state
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report, once (a pending
    # one, sent while it started with SIGINT blocked, is dropped by ignoring it)
    die_with_parent(parent)
    torch.set_num_threads(1)  # one thread per worker process: oversubscription is 10x slower
    _worker_state = init(*args)


class Progress:
    """Jobs (or other ``unit``s) done, with an ETA that starts at the first finished one (worker
    start-up, which loads the model, is not a job). On a terminal: a tqdm bar; redirected to a
    file: a plain line every ``every_s`` seconds and at the end, never a stream of carriage
    returns."""

    def __init__(self, total: int, desc: str, every_s: float = 30.0, file: Any = None,
                 unit: str = "job") -> None:
        self.total, self.desc, self.every_s, self.unit = total, desc, every_s, unit
        self.file = file or sys.stderr
        self.done, self.first_at, self.last_line = 0, None, 0.0
        self.started = time.monotonic()
        self.bar = None
        if self.file.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"{desc} (starting)", unit=unit,
                            dynamic_ncols=True, file=self.file)

    def update(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.first_at is None:  # the first job: from here the rate means fine-tunes
            self.first_at = now
            if self.bar is not None:
                self.bar.set_description(self.desc)
                self.bar.reset(total=self.total)
                self.bar.update(self.done)
                return
        if self.bar is not None:
            self.bar.update()
        elif now - self.last_line >= self.every_s or self.done == self.total:
            self.last_line = now
            print(self.line(now), file=self.file, flush=True)

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the rate since the first finished job (None before two)."""
        if self.first_at is None or self.done < 2 or now <= self.first_at:
            return None
        return (self.total - self.done) * (now - self.first_at) / (self.done - 1)

    def line(self, now: float) -> str:
        eta = self.eta_s(now)
        return (f"{self.desc}: {self.done}/{self.total} {self.unit}s, {_clock(now - self.started)} elapsed"
                + (f", about {_clock(eta)} left" if eta is not None and self.done < self.total else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _run_job(work: Callable[[Any, Any], None], job: Any) -> Any:
    work(_worker_state, job)
    return job


def run_local(jobs: Sequence[Any], init: Callable[..., Any], init_args: tuple,
              work: Callable[[Any, Any], None], workers: int = 1, desc: str = "jobs") -> None:
    """Run ``work(state, job)`` for every job, ``state = init(*init_args)`` once per worker.

    ``workers=1`` runs in this process (one torch thread); more start that many spawned worker
    processes with one torch thread each, which die with this process. ``init`` and ``work``
    must be module-level functions (or class attributes).
    """
    import torch

    if not jobs:
        return
    workers = min(workers, len(jobs))  # a process per job at most: more would only start idle
    bar = Progress(len(jobs), desc)
    try:
        if workers <= 1:
            old = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                state = init(*init_args)
                for job in jobs:
                    work(state, job)
                    bar.update()
            finally:
                torch.set_num_threads(old)
            return
        ctx = mp.get_context("spawn")  # fork after torch has run threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(os.getpid(), init, init_args)) as pool:
            pending: set = set()
            try:
                # the first submits start the workers (one each, on demand): they start with
                # Ctrl-C ignored; the rest are queued with Ctrl-C live (40,000 submits take seconds)
                with _sigint_held_for_children():
                    for job in jobs[:workers]:
                        pending.add(pool.submit(_run_job, work, job))
                for job in jobs[workers:]:
                    pending.add(pool.submit(_run_job, work, job))
                for fut in as_completed(pending):  # one waiter for all (wait() scans every future)
                    fut.result()  # re-raise a worker's error here
                    bar.update()
            except BaseException:
                # drop every job not started (the pool's exit then waits for the running ones only)
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()


# --- Ray --------------------------------------------------------------------------------------

def require_ray() -> Any:
    """``ray``, or the project's MissingDependency naming the extra that installs it."""
    try:
        import ray
    except ImportError as err:
        from tdabench.errors import MissingDependency

        raise MissingDependency(
            'the Ray executor needs the Python package \'ray\', which is not installed: '
            'pip install "tdabench[ray]" -c constraints.txt') from err
    return ray


class _RayWorker:
    """A Ray actor holding one worker's state: ``init`` runs once per actor (and again if the
    actor is restarted after its process died), with one torch thread."""

    def __init__(self, setup: tuple[Callable[..., Any], tuple]) -> None:
        import torch

        torch.set_num_threads(1)
        init, args = setup
        self.state = init(*args)

    def run(self, work: Callable[[Any, Any], Any], job: Any) -> Any:
        return work(self.state, job)


def ray_capacity(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many jobs asking for ``resources`` fit on the cluster at once."""
    fits = []
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        if resources.get(key):
            fits.append(int(cluster.get(name, 0) // resources[key]))
    return min(fits) if fits else 1


def _connect_ray(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to Ray; returns whether this call started the instance (and so shuts it down).

    ``address=None`` and no running instance: start a local one with ``num_cpus=workers``.
    An instance this process already joined (``ray.init`` called before) is reused as is.
    """
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def run_ray(jobs: Sequence[Any], init: Callable[..., Any], init_args: tuple,
            work: Callable[[Any, Any], Any], workers: int = 1, desc: str = "jobs",
            address: str | None = None, resources: dict[str, float] | None = None,
            max_retries: int = 2, on_result: Callable[[Any, Any], None] | None = None) -> None:
    """Run ``work(state, job)`` for every job on Ray actors, ``state = init(*init_args)`` once per
    actor (one torch thread each).

    Each job is dispatched once, to one idle actor, which asks for ``resources`` (default:
    one CPU). If an actor's
    process dies mid-job, Ray restarts the actor (``init`` again) and retries the job on it, up
    to ``max_retries`` times; should that fail too, the actor is replaced and the job resubmitted
    (at most ``max_retries`` more times). A job is only ever resubmitted after its worker died,
    so two workers never run the same job at once. An exception raised by ``work`` itself is
    re-raised here. ``on_result(job, result)`` runs in this process for every finished job.

    ``address=None`` starts a local Ray instance with ``num_cpus=workers`` (shut down at the
    end); otherwise this connects to the cluster at ``address`` (e.g. ``"auto"`` or
    ``"HOST:6379"``). ``init``, ``work`` and the job objects must be importable/picklable on
    every node.
    """
    if not jobs:
        return
    ray = require_ray()
    started = _connect_ray(ray, address, workers)
    actors: list[Any] = []
    running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor slot, job index)
    bar = Progress(len(jobs), desc)
    try:
        cluster = ray.cluster_resources()
        options = dict(resources or {"num_cpus": 1})
        n_actors = min(workers, ray_capacity(cluster, options), len(jobs))
        if n_actors < 1:
            raise ValueError(f"no Ray node can take a job asking for {options}; cluster: {cluster}")
        actor_cls = ray.remote(_RayWorker).options(
            max_restarts=max_retries, max_task_retries=max_retries, **options)
        setup = ray.put((init, init_args))
        actors = [actor_cls.remote(setup) for _ in range(n_actors)]
        _dispatch(ray, actors, running, lambda: actor_cls.remote(setup), jobs, work, max_retries,
                  on_result, bar)
    finally:
        for actor in actors:
            ray.kill(actor)
        if running:  # interrupted: wait until the killed workers have stopped writing
            ray.wait(list(running), num_returns=len(running), timeout=60)
        bar.close()
        if started:
            ray.shutdown()


def _dispatch(ray: Any, actors: list[Any], running: dict[Any, tuple[int, int]],
              new_actor: Callable[[], Any], jobs: Sequence[Any], work: Callable[[Any, Any], Any],
              max_retries: int, on_result: Callable[[Any, Any], None] | None, bar: Any) -> None:
    """Keep every actor busy with one job at a time until all jobs are done; ``running`` maps
    the object ref of each job in flight to its actor slot and job index."""
    queue = deque(range(len(jobs)))
    resubmitted = [0] * len(jobs)

    def submit(slot: int) -> None:
        if queue:
            index = queue.popleft()
            running[actors[slot].run.remote(work, jobs[index])] = (slot, index)

    for slot in range(len(actors)):
        submit(slot)
    while running:
        (ref,), _ = ray.wait(list(running), num_returns=1)
        slot, index = running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as err:  # the worker died and Ray's retries ran out
            if resubmitted[index] >= max_retries:
                raise RuntimeError(f"job {jobs[index]!r} lost its worker {max_retries + 1} times "
                                   f"over; last error: {err}") from err
            resubmitted[index] += 1
            ray.kill(actors[slot])
            actors[slot] = new_actor()
            queue.appendleft(index)
        else:
            if on_result is not None:
                on_result(jobs[index], result)
            bar.update()
        submit(slot)
