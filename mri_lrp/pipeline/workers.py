"""The worker processes that read scans and write their outputs, and the fork server they come from.

Workers fork from a server process that has already imported torch, the readers and the writers: starts are
fast and fork-safe (nothing is forked from a process with torch's threads running). The server's imports take a
few CPU-seconds, so the console entry point starts it before the main process's own imports (this module
imports neither torch nor the package's heavy parts); on two cores the two sets of imports then overlap instead
of delaying the first scan.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

# What readers and writers import, loaded once in the fork server rather than once per worker.
PRELOAD = ["mri_lrp.pipeline.server", "mri_lrp.pipeline.read", "mri_lrp.pipeline.write", "matplotlib.cm",
           "PIL.ImageDraw", "PIL.ImageFont", "isal.igzip"]


def worker_context() -> BaseContext:
    """The fork server where the platform has one (Linux, macOS), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Start the fork server now (idempotent): its imports run beside whatever the caller does next."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        worker_context()
        forkserver.ensure_running()


class WorkerSet:
    """Worker processes, each with its own queue, so that work can be sent to the process that holds a scan.

    A scan is read in one worker and, once explained, written by the same one (its voxels stay there). Each
    worker is a one-process pool; a pool whose process died is replaced at the next submission, and the
    scans it held are read again by their writes.
    """

    def __init__(self, count: int, initializer: Callable[[], None]) -> None:
        self._initializer = initializer
        self._context = worker_context()
        self._lock = threading.Lock()  # submissions come from the main thread and from pools' result threads
        self._pools = [self._pool() for _ in range(count)]
        self._turn = itertools.count()

    def _pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=1, mp_context=self._context, initializer=self._initializer)

    def __len__(self) -> int:
        return len(self._pools)

    def next_worker(self) -> int:
        """Workers in turn: scans of one run cost about the same, so turns balance them."""
        return next(self._turn) % len(self._pools)

    def submit(self, worker: int, fn: Callable[..., Any], *args: Any) -> cf.Future:
        with self._lock:
            try:
                return self._pools[worker].submit(fn, *args)
            except BrokenProcessPool:
                self._pools[worker].shutdown(wait=False, cancel_futures=True)
                self._pools[worker] = self._pool()
                return self._pools[worker].submit(fn, *args)

    def shutdown(self) -> None:
        """Wait for the work already queued (the writes of a stopped run still finish)."""
        for pool in self._pools:
            pool.shutdown(wait=True)
