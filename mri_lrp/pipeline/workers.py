"""Where reader and writer processes come from: a fork server, started as early as the command allows.

Workers fork from a server process that has already imported torch, the readers and the writers: starts are
fast and fork-safe (nothing is forked from a process with torch's threads running). The server's imports take a
few CPU-seconds, so the console entry point starts it before the main process's own imports (this module
imports neither torch nor the package's heavy parts); on two cores the two sets of imports then overlap instead
of delaying the first scan.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# What readers and writers import, loaded once in the fork server rather than once per worker.
PRELOAD = ["mri_lrp.pipeline.read", "mri_lrp.pipeline.write", "matplotlib.cm", "PIL.ImageDraw", "PIL.ImageFont",
           "isal.igzip"]


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
