"""Resume: a scan is done when its marker carries this run's fingerprint, the identity of the very input files
it was made from, and every file it lists exists.

The scan id alone is not enough: PACS re-sends and converter re-runs replace files under the same name, and a
reordered list of input folders can hand a name to another file. So the marker records, for every input file,
its resolved path, size, modification time (ns) and a hash of its first bytes (the whole header of a NIfTI,
most of a DICOM header); any difference redoes the scan.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mri_lrp.lrp.rules import RULES_VERSION
from mri_lrp.outputs import DONE_MARKER, read_csv
from mri_lrp.scans import ScanRef

HEAD_BYTES = 8192  # hashed per input file: cheap (discovery already reads every header), catches same-size copies


def input_identity(paths: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """What identifies the input files of one scan, JSON-ready; a file that cannot be read is marked missing.

    The voxels of a .hdr/.img pair are in the .img, so it is part of the identity too.
    """
    files = []
    for path in paths:
        files.append(path)
        if path.lower().endswith(".hdr") and os.path.isfile(path[:-4] + ".img"):
            files.append(path[:-4] + ".img")
    out = []
    for path in files:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
            with open(real, "rb") as f:
                head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()[:16]
        except OSError:
            out.append({"path": real, "missing": True})
            continue
        out.append({"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head})
    return out


def _same_identity(recorded: Any, identity: list[dict[str, Any]]) -> bool:
    # Paths go through JSON: non-UTF-8 names come back as the same escaped strings they were written as.
    return isinstance(recorded, list) and json.loads(json.dumps(identity)) == recorded


def done_marker(scan_dir: Path, fingerprint: str,
                identity: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The scan's marker when it carries this run's fingerprint (and, when given, this input identity) and
    every file it lists exists, else None."""
    try:
        marker = json.loads((scan_dir / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("fingerprint") != fingerprint:
        return None
    if identity is not None and not _same_identity(marker.get("inputs"), identity):
        return None
    files_there = all((scan_dir / name).is_file() for name in marker.get("files", []))
    return marker if files_there else None


def is_done(scan_dir: Path, fingerprint: str, identity: list[dict[str, Any]] | None = None) -> bool:
    return done_marker(scan_dir, fingerprint, identity) is not None


def stale_marker(scan_dir: Path, fingerprint: str, identity: list[dict[str, Any]]) -> bool:
    """Whether the folder holds a finished result of these settings made from *other* input files."""
    try:
        marker = json.loads((scan_dir / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("fingerprint") == fingerprint
            and not _same_identity(marker.get("inputs"), identity))


def outdated(scan_dir: Path, fingerprint: str) -> str | None:
    """Why the folder's finished result is not this run's, in words for the log; None when there is none or
    it is this run's. A marker without a rules version predates it, so its rules are earlier ones too."""
    try:
        marker = json.loads((scan_dir / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("fingerprint") == fingerprint:
        return None
    if marker.get("rules_version") != RULES_VERSION:
        return "explained by an earlier version of the relevance rules (the maps changed)"
    return "explained with other settings or another checkpoint"


def collect_results(out: Path, refs: list[ScanRef], fingerprint: str) -> tuple[list[dict], list[dict]]:
    """Summary and region rows of every done scan of this run's set, in scan order, from their markers.

    A ref that carries its input identity only counts when the marker was made from those same files.
    """
    summary: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for ref in refs:
        scan_dir = out / "scans" / ref.scan_id
        marker = done_marker(scan_dir, fingerprint, list(ref.identity) if ref.identity else None)
        if marker is not None:
            summary.append(marker["summary"])
            regions.extend(read_csv(scan_dir / "regions.csv"))
    return summary, regions
