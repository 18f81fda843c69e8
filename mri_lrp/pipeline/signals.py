"""Stopping cleanly on SIGINT / SIGTERM (SLURM preemption)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class StopOnSignal:
    """First SIGINT/SIGTERM: stop taking new scans, finish and flush the ones in flight. Second: abort."""

    def __enter__(self) -> threading.Event:
        self.event = threading.Event()
        self.event.signal_name = None  # type: ignore[attr-defined]
        self.previous: dict[int, Callable | int | None] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.signal_name = signal.Signals(signum).name  # type: ignore[attr-defined]
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
