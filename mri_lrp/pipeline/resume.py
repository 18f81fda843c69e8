"""Resume: a scan is done when its marker carries this run's fingerprint and every file it lists exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mri_lrp.outputs import DONE_MARKER, read_csv
from mri_lrp.scans import ScanRef


def done_marker(scan_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The scan's marker when it carries this run's fingerprint and every file it lists exists, else None."""
    try:
        marker = json.loads((scan_dir / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files_there = all((scan_dir / name).is_file() for name in marker.get("files", []))
    return marker if marker.get("fingerprint") == fingerprint and files_there else None


def is_done(scan_dir: Path, fingerprint: str) -> bool:
    return done_marker(scan_dir, fingerprint) is not None


def collect_results(out: Path, refs: list[ScanRef], fingerprint: str) -> tuple[list[dict], list[dict]]:
    """Summary and region rows of every done scan of this run's set, in scan order, from their markers."""
    summary: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for ref in refs:
        scan_dir = out / "scans" / ref.scan_id
        marker = done_marker(scan_dir, fingerprint)
        if marker is not None:
            summary.append(marker["summary"])
            regions.extend(read_csv(scan_dir / "regions.csv"))
    return summary, regions

