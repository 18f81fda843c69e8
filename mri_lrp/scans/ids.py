"""Scan identifiers: stable, filesystem-safe names built from relative paths, never from patient tags."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePath

# Files read as volumes through nibabel: NIfTI, Analyze/NIfTI pairs (by their .hdr), FreeSurfer MGH.
NIFTI_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".mgz", ".mgh")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_LEN = 150  # output folders are named after scan ids; stay well below the usual 255-byte name limit


def printable(name: str) -> str:
    """A file name as text that can be written anywhere: bytes that are not UTF-8 (kept by the OS as surrogate
    escapes) become visible escapes such as '\\xff', instead of crashing CSV, JSON and log writers."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def short_hash(text: str, n: int = 6) -> str:
    """A few hex digits that tell apart two things with the same visible name (e.g. two series numbered 3)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def safe_part(text: str) -> str:
    """One path component with every character outside [A-Za-z0-9._-] replaced by '_'."""
    return _UNSAFE.sub("_", text)


def strip_nifti_suffix(name: str) -> str:
    """'T1w.nii.gz' -> 'T1w' (case-insensitive), anything else unchanged."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def join_id(parts: Iterable[str]) -> str:
    """Join sanitised path parts with '__'; keep the result short and never hidden (no leading dot)."""
    scan_id = "__".join(safe_part(p) for p in parts if p and p != ".")
    if not scan_id:
        scan_id = "scan"
    if scan_id.startswith("."):
        scan_id = "_" + scan_id[1:]
    if len(scan_id) > _MAX_LEN:
        scan_id = f"{scan_id[: _MAX_LEN - 9]}_{short_hash(scan_id, 8)}"
    return scan_id


def file_scan_id(relative: str) -> str:
    """scan_id of a single-file scan: its relative path without the NIfTI extension."""
    parts = list(PurePath(relative).parts)
    parts[-1] = strip_nifti_suffix(parts[-1])
    return join_id(parts)


def series_scan_id(relative_folder: str, series_label: str) -> str:
    """scan_id of a DICOM series: its relative folder plus a label such as 's3' or 's3_e2'."""
    parts = [p for p in PurePath(relative_folder).parts if p != "."]
    return join_id([*parts, series_label])


def make_unique(ids: list[str]) -> list[str]:
    """Append '_2', '_3', ... to repeats, in order, so the same input always gives the same ids. Ids that differ
    only in case are repeats too: they name folders, and on macOS, Windows and SMB shares those would be one."""
    taken = {i.casefold() for i in ids}
    seen: set[str] = set()
    out = []
    for scan_id in ids:
        if scan_id.casefold() in seen:
            n = 2
            while f"{scan_id}_{n}".casefold() in taken:
                n += 1
            candidate = f"{scan_id}_{n}"
            taken.add(candidate.casefold())
            scan_id = candidate
        seen.add(scan_id.casefold())
        out.append(scan_id)
    return out
