"""Typed errors. Each carries the file (or layer) and the reason; only the CLI turns them into messages."""

from __future__ import annotations

import errno


class MriLrpError(Exception):
    """Base class: an expected failure with a one-line, user-facing message."""


class ScanError(MriLrpError):
    """A scan (file or series) could not be read or converted; the batch goes on without it."""

    def __init__(self, path: str, reason: str, stage: str = "read") -> None:
        self.path = str(path)
        self.reason = reason
        self.stage = stage
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:  # picklable, so worker processes can return it
        return (type(self), (self.path, self.reason, self.stage))


class CheckpointError(MriLrpError):
    """The checkpoint or model definition cannot be used (a setup error, exit code 2)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.path, self.reason))


class UnsupportedLayerError(MriLrpError):
    """The network contains an operation the LRP engine has no rule for: no heatmap rather than a wrong one."""

    def __init__(self, op: str, layer: str, reason: str = "no LRP rule for this operation") -> None:
        self.op = op
        self.layer = layer
        self.reason = reason
        super().__init__(f"layer '{layer}' ({op}): {reason}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.op, self.layer, self.reason))


class SettingsError(MriLrpError):
    """A bad option or config value (a usage error, exit code 2)."""


class DiskFullError(MriLrpError):
    """The output's disk is full: the scans written so far are kept, and a rerun resumes after them."""

    def __init__(self, folder: str, written: int) -> None:
        self.folder = str(folder)
        self.written = written
        done = f"{written} scan(s) written by this run are kept; " if written else "nothing was written; "
        super().__init__(f"{self.folder}: no space left on device ({done}free some space and run again)")

    def __reduce__(self) -> tuple:
        return (type(self), (self.folder, self.written))


def is_disk_full(error: BaseException) -> bool:
    """Whether an error is a write that found no space (or no quota) left."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
