"""Opening a file as a checkpoint without running its code, and saying what the file is when it is not one.

``torch.load(weights_only=True)`` builds only tensors and plain containers. Before it, the file is sniffed, so
that a text file, a truncated zip or a TorchScript archive gets its own message instead of the unpickler's; a
pickle that wants to import a class is named and refused unless trusted.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mri_lrp.errors import CheckpointError


def read_checkpoint_file(path: Path, trust: bool) -> Any:
    """torch.load the file safely; anything but a readable, allowed checkpoint is a CheckpointError naming
    what the file is instead."""
    if not path.exists():
        raise CheckpointError(str(path), "no such file")
    if not path.is_file():
        raise CheckpointError(str(path), "not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(str(path), "empty file")
    text = _text_start(path)
    if text is not None:
        raise CheckpointError(str(path), f"not a readable PyTorch checkpoint: a text file (it starts with "
                                         f"{text!r}); give the file that torch.save wrote")
    if _truncated_zip(path):
        raise CheckpointError(str(path), "not a readable PyTorch checkpoint: a zip archive without its end "
                                         "(truncated, or still being copied); copy the file again")
    if _is_torchscript(path):
        raise CheckpointError(str(path), "is a TorchScript archive; LRP needs the Python module structure, so "
                                         "save model.state_dict() (or use save_checkpoint) from the original "
                                         "model and load that with --model")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the class or function the pickle wants to build; garbage fails on an opcode instead.
        found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        wanted = found.group(1) if found else _raw_pickle_global(path)
        if wanted is None:
            raise CheckpointError(str(path), f"not a readable PyTorch checkpoint ({_unpickler_reason(exc)})") from None
        if not trust:
            raise CheckpointError(str(path), f"holds a pickled Python object ({wanted}); unpickling can "
                                             "run arbitrary code, so it is refused. Pass --trust-checkpoint only "
                                             "if you trust its source, or re-save the model's state_dict") from None
    except Exception as exc:  # torch.load raises many types for corrupt files (EOFError, KeyError, ...)
        raise CheckpointError(str(path), f"not a readable PyTorch checkpoint ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a trusted pickle may still need classes that are not importable here
        raise CheckpointError(str(path), f"cannot unpickle ({first_line(exc)})") from None


def _text_start(path: Path) -> str | None:
    """The first line of a file that is plain text (a checkpoint is a zip archive or a binary pickle), else None.

    torch's unpickler would misread text as pickle opcodes and fail about a stack or an operand.
    """
    with path.open("rb") as f:
        head = f.read(512)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip() or any(c not in "\t\n\r" and not c.isprintable() for c in text):
        return None
    first = text.strip().splitlines()[0]
    return first if len(first) <= 60 else first[:57] + "..."


def _unpickler_reason(exc: BaseException) -> str:
    """The reason inside torch's weights-only refusal, whose first line (re-run with weights_only=False)
    is wrong advice for a file that is not a pickle at all."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
    return found.group(1).strip() if found else first_line(exc)


def _raw_pickle_global(path: Path) -> str | None:
    """The class or function a plain pickle file would import, read from its opcodes without running it.

    torch's safe unpickler stops at the framing opcodes of ``pickle.dump`` files before it reaches the
    import, so for such files the name is found here (preferring one outside torch's tensor rebuilders);
    garbage yields None.
    """
    strings: list[str] = []
    names: list[str] = []
    try:
        with path.open("rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle (or a truncated one): the caller reports the file as unreadable
        return None
    foreign = [n for n in names if not n.startswith(("torch.", "collections."))]
    return (foreign or names or [None])[0]


def _truncated_zip(path: Path) -> bool:
    """A file that starts as the zip archive torch.save writes but lacks the archive's closing directory."""
    with path.open("rb") as f:
        return f.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files carrying compiled code (``code/``) and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except zipfile.BadZipFile:
        return False


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
