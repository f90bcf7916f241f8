"""Executors: run independent jobs, each in a worker that was initialised once.

A job's worker writes its own result (atomically), so an executor only schedules and reports
progress: killing it loses at most the jobs that were running.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch
from tqdm.auto import tqdm

_worker_state: Any = None


def _init_worker(init: Callable[..., Any], args: tuple) -> None:
    global _worker_state
    torch.set_num_threads(1)  # one thread per worker process: oversubscription is 10x slower
    _worker_state = init(*args)


def _run_job(work: Callable[[Any, Any], None], job: Any) -> Any:
    work(_worker_state, job)
    return job


def run_local(jobs: Sequence[Any], init: Callable[..., Any], init_args: tuple,
              work: Callable[[Any, Any], None], workers: int = 1, desc: str = "jobs") -> None:
    """Run ``work(state, job)`` for every job, ``state = init(*init_args)`` once per worker.

    ``workers=1`` runs in this process (one torch thread); more start that many spawned worker
    processes with one torch thread each. ``init`` and ``work`` must be module-level functions.
    """
    if not jobs:
        return
    bar = tqdm(total=len(jobs), desc=desc, unit="job", dynamic_ncols=True)
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
                                 initargs=(init, init_args)) as pool:
            pending = {pool.submit(_run_job, work, job) for job in jobs}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()  # re-raise a worker's error here
                        bar.update()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    finally:
        bar.close()
