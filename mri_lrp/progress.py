"""Progress reporting: a rich bar on a terminal, plain timestamped lines in cron and batch logs."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any


class Reporter:
    """What the run tells the user. Plain lines unless ``tty``; ``quiet`` keeps only failures and the end."""

    def __init__(self, quiet: bool = False, tty: bool | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = 0
        self.count = 0
        self.t0 = time.time()
        self._progress: Any = None
        self._task: Any = None

    def start(self, total: int, verb: str = "explain") -> None:
        self.total, self.count, self.t0 = total, 0, time.time()
        if self.tty and not self.quiet and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), TextColumn("{task.fields[last]}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(verb, total=total, rate="", last="")
        else:
            self._line(f"{verb.removesuffix('e')}ing {total} scan(s)")

    def scan_done(self, scan_id: str, status: str) -> None:
        self._advance(scan_id, status)

    def scan_failed(self, scan_id: str, message: str) -> None:
        self._advance(scan_id, "failed")
        self._line(f"FAILED {scan_id}: {message}", always=True, err=True)

    def skipped(self, items: Sequence[Any]) -> None:
        """The inputs not explained (``.path``, ``.reason``): one line each, or under --quiet one line that
        counts them by reason (the full list is in run.json)."""
        if not self.quiet:
            for item in items:
                self._line(f"skipped {item.path}: {item.reason}")
            return
        if items:
            kinds = Counter(re.sub(r"\s*[(:;].*$", "", item.reason) for item in items)
            listed = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
            self._line(f"skipped {len(items)} input(s): {listed} (listed in run.json)", always=True)

    def note(self, message: str, always: bool = False) -> None:
        """A line for the log; ``always`` keeps it under --quiet (warnings a cron user must see)."""
        self._line(message, always=always)

    def stop(self) -> None:
        """End the progress bar (a run that stops on an error leaves the terminal as it found it)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, stats: Any, wall: float) -> None:
        self.stop()
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in stats.stage_seconds.items())
        self._line(
            f"done {stats.done - stats.resumed} · resumed {stats.resumed} · failed {stats.failed} · "
            f"skipped files {stats.skipped_files} · {wall:.1f}s ({stages})"
            + (f" · interrupted by {stats.interrupted}" if stats.interrupted else ""),
            always=True,
        )

    def _advance(self, scan_id: str, status: str) -> None:
        self.count += 1
        rate = self.count / max(time.time() - self.t0, 1e-9)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, rate=f"{rate:.2f} scans/s", last=scan_id)
        elif status != "failed":
            self._line(f"[{self.count}/{self.total}] {scan_id} {status} ({rate:.2f} scans/s)")

    def _line(self, text: str, always: bool = False, err: bool = False) -> None:
        if self.quiet and not always:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # a non-UTF-8 file name never kills a log
        if self._progress is not None:
            self._progress.console.print(text)
            return
        stream = sys.stderr if err else self.stream
        print(f"{stamp} {text}", file=stream, flush=True)
