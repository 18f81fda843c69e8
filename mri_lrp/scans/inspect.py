"""Rows for `mri-lrp inspect`: what each scan looks like once read, and what was skipped, without a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from mri_lrp.errors import ScanError
from mri_lrp.scans.cases import ChannelPlan, channel_files_text
from mri_lrp.scans.discover import discover
from mri_lrp.scans.filters import ScanFilter, why_skipped
from mri_lrp.scans.read import content_notes, read_scan


def inspect_rows(paths: Sequence[str | Path], volume: int | None = None,
                 channels: ChannelPlan | None = None, scan_filter: ScanFilter | None = None) -> list[dict[str, Any]]:
    """One JSON-ready row per scan (kind "error" when it cannot be read) and per skipped path (kind "skipped").

    Keys: scan_id, source, kind, shape, spacing, orientation, series_description, modality, problems, status
    (ok / warning / error / skipped). With ``channels`` (a multi-channel model's), rows are cases and
    ``channels`` names their channels and ``channel_files`` the file each takes. With ``scan_filter`` (explain's
    default filters), cases are formed from the files explain would use, as explain forms them (a derived
    reformat must not double a channel here when explain leaves it out), and a scan explain would skip says so.
    """
    why = (lambda ref: why_skipped(ref, scan_filter)) if scan_filter is not None else None
    refs, skipped = discover(paths, volume=volume, channels=channels, pre_filter=why)
    rows: list[dict[str, Any]] = []
    for ref in refs:
        row: dict[str, Any] = {"scan_id": ref.scan_id, "source": ref.location, "kind": ref.kind, "shape": None,
                               "spacing": None, "orientation": None,
                               "series_description": ref.series_description,
                               "modality": ref.dicom.get("modality", ""), "problems": [],
                               **({"channels": list(ref.channels), "channel_files": channel_files_text(ref)}
                                  if channels is not None else {})}
        try:
            scan = read_scan(ref)
        except ScanError as e:
            row.update(kind="error", problems=[e.reason], status="error")
        else:
            notes = content_notes(scan)
            axes = "".join(c or "?" for c in nib.aff2axcodes(scan.affine))  # None: an axis with no direction
            if scan.kind == "image":  # its affine is a stand-in: letters would claim an anatomy it lacks
                axes = "none (image file)"
            row.update(shape=list(scan.shape), spacing=[round(v, 4) for v in scan.spacing],
                       orientation=axes, problems=list(notes), status="warning" if notes else "ok")
        reason = why(ref) if why is not None else None
        if reason:
            row.update(problems=[*row["problems"], f"explain skips it: {reason}"], status="skipped")
        rows.append(row)
    for item in skipped:
        rows.append({"scan_id": "", "source": item.path, "kind": "skipped", "shape": None, "spacing": None,
                     "orientation": None, "series_description": "", "modality": "", "problems": [item.reason],
                     "status": "skipped"})
    return rows
