"""Run a table's independent training runs in parallel processes (the bench scripts' ``--jobs``).

On a 2-core machine two one-thread runs side by side can finish well before the same runs one after another
on two threads (the tiny model's matrices split poorly across threads); for short runs or an odd count of runs
it does not pay (figures in README, "Benchmarks"). Each worker is a spawned process with its own ``torch`` thread count and
``OMP_WAIT_POLICY=PASSIVE`` (unless set), so that no worker spins on the other's core.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any


def _jobs(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_jobs_argument(ap: argparse.ArgumentParser) -> None:
    """``--jobs N``: how many runs at a time (each in its own process, with ``--threads`` torch threads)."""
    ap.add_argument("--jobs", type=_jobs, default=1,
                    help="runs at a time, each in its own process with --threads torch threads (on 2 cores: "
                         "--jobs 2 --threads 1 pays for long runs; see README, Benchmarks)")


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_all(fn: Callable[..., Any], calls: list[tuple], *, jobs: int, threads: int) -> Iterator[Any]:
    """``fn(*call)`` for every call, yielded in the order of ``calls``; with ``jobs > 1`` in that many processes.

    ``fn`` must be a module-level function (it is pickled by name). A run that raises stops the table with
    its error once its turn to be yielded comes (the runs after it still finish or are cancelled)."""
    if jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(calls) <= 1:
        for call in calls:
            yield fn(*call)
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *call) for call in calls]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()
