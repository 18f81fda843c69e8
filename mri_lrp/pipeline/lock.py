"""One run at a time per output: lock files held with flock(2) for the whole run.

The kernel drops an flock when its holder dies, however it dies, so a lock left by a killed run is recognised
by being free: the file is still there, with the dead run's pid and start time, but nobody holds it. Shards
of one SLURM array legitimately share one --out, so a run takes the lock on --out shared when it is a shard
(and then its own shard's lock exclusively) and exclusive when it is not: shards run side by side, a second
copy of one shard or an unsharded run over the same --out is refused.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mri_lrp.errors import SettingsError

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked (and the run says so)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".mri-lrp.lock"


@dataclass
class RunLock:
    """The locks one run holds; ``notes`` says what was recovered or could not be locked."""

    held: list[tuple[Path, int, bool]] = field(default_factory=list)   # (path, fd, exclusive)
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        """Remove the exclusive lock files (while still holding them), then let go of every lock."""
        for path, fd, exclusive in reversed(self.held):
            if exclusive:
                try:
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        os.unlink(path)
                except OSError:
                    pass
            os.close(fd)
        self.held.clear()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder_text(info: dict) -> str:
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"process {info.get('pid', '?')}{where}, started {info.get('started', '?')}"


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        info = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _take(path: Path, exclusive: bool, started: str, what: str, lock: RunLock) -> bool:
    """Lock ``path``; False when the filesystem has no locks. Raises SettingsError when another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        lock.notes.append("no file locks on this system: concurrent runs on this --out are not prevented")
        return False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            info = _read_info(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = _holder_text(info) if info else "a sharded run (see the lock files under parts/)"
                raise SettingsError(f"{what} is in use by another mri-lrp run ({holder}); wait for it to finish "
                                    f"or use another --out (lock file {path})") from None
            lock.notes.append(f"cannot lock {path} ({e.strerror}): concurrent runs on this --out are not "
                              "prevented on this filesystem")
            return False
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        break
    lock.held.append((path, fd, exclusive))  # before writing to it: a failed write (a full disk) still releases it
    if exclusive:
        old = _read_info(fd)
        if old:
            lock.notes.append(f"recovered the lock of an earlier run that no longer runs ({_holder_text(old)})")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    else:  # several shards hold it at once: it names nobody (a refused run then points to the shard locks)
        os.ftruncate(fd, 0)
    return True


def acquire(out: Path, tables_dir: Path, started: str) -> RunLock:
    """Lock ``out`` for this run (shared when ``tables_dir`` is a shard's folder inside it, and that folder
    exclusively); SettingsError naming the holder's pid and start time when another run has it."""
    lock = RunLock()
    sharded = tables_dir.resolve() != out.resolve()
    try:
        if _take(out / LOCK_NAME, not sharded, started, f"--out {out}", lock) and sharded:
            _take(tables_dir / LOCK_NAME, True, started, f"shard folder {tables_dir}", lock)
    except BaseException:
        lock.release()
        raise
    return lock
