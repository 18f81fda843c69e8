"""The console entry point (`mri-lrp`, `python -m mri_lrp`): `explain`'s worker server starts first.

The command line's own imports (torch, the engine, the readers) take about two CPU-seconds, and so do the
worker server's. Started here, before them, the server imports on the second core while this process imports on
the first, and the first scans are read as soon as the model is loaded instead of a server's start-up later.
It also ends the process without the interpreter's module teardown, which with torch loaded costs about
half a second per command. Everything else is the command line's (`mri_lrp.cli`).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence


def main() -> None:
    global _status
    atexit.register(_leave)  # registered first: runs after every other exit handler
    try:
        if starts_workers(sys.argv[1:]):
            from mri_lrp.pipeline.workers import start_worker_server

            start_worker_server()
        from mri_lrp.cli import main as cli_main

        cli_main()
    except SystemExit as e:  # a message instead of a number exits 1, as Python does
        _status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except KeyboardInterrupt:
        _status = 130
        raise
    except BaseException:
        _status = 1
        raise


_status = 0


def _leave() -> None:
    """Exit with the command's status once the exit handlers have run, without tearing down every module:
    with torch imported that takes about half a second, and every file the command wrote is already closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more can reach it
            pass
    os._exit(_status)


def starts_workers(args: Sequence[str]) -> bool:
    """Whether these arguments run `explain` with worker processes (not its help, a dry run or --workers 0); a
    wrong guess costs only time: the run starts the server itself when it needs one."""
    if not args or args[0] != "explain":
        return False
    quiet = {"-h", "--help", "--dry-run", "--workers=0", "-j0"}
    pairs = zip(args, [*args[1:], ""], strict=True)
    return not any(a in quiet or (a in ("--workers", "-j") and b == "0") for a, b in pairs)
