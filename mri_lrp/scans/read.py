"""Reading one discovered scan: a pure function of its ScanRef, so it runs the same in worker processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from mri_lrp.errors import ScanError
from mri_lrp.scans.channels import read_case
from mri_lrp.scans.dicom import read_dicom
from mri_lrp.scans.discover import discover
from mri_lrp.scans.image2d import read_image
from mri_lrp.scans.labels import label_map_reason
from mri_lrp.scans.nifti import read_nifti
from mri_lrp.scans.refs import ScanRef
from mri_lrp.scans.scan import Scan


def read_scan(ref: ScanRef) -> Scan:
    """The Scan that ``ref`` describes; ScanError(location, reason, stage="read") for anything wrong with it."""
    if ref.error:  # a case discovery could not complete (a channel missing...)
        raise ScanError(ref.location, ref.error)
    if ref.parts:
        return read_case(ref, read_scan)
    try:
        if ref.kind == "nifti":
            scan = read_nifti(ref)
        elif ref.kind == "dicom":
            scan = read_dicom(ref)
        elif ref.kind == "image":
            scan = read_image(ref)
        else:
            raise ScanError(ref.location, f"unknown scan kind {ref.kind!r}")
    except OSError as e:  # a file removed or made unreadable since discovery
        raise ScanError(ref.location, f"cannot read {e.filename or 'file'}: {e.strerror or e}") from None
    # Every later stage (orientation, resampling, regions) needs voxels with a position and a size.
    linear = scan.affine[:3, :3]
    if not np.all(np.isfinite(scan.affine)) or abs(np.linalg.det(linear)) < 1e-12 \
            or min(scan.spacing) < 1e-6:
        raise ScanError(ref.location, f"voxel-to-world affine {np.round(linear, 4).tolist()} is singular or "
                                      "not finite, so voxels have no position or size")
    # Label maps are stored as integers; a float image with few levels is left alone (a phantom, a test image).
    label = label_map_reason(scan.data) if scan.metadata.get("dtype", "").startswith(("int", "uint")) else None
    if label:
        raise ScanError(ref.location, label)
    return replace(scan, warnings=(*scan.warnings, *ref.notes)) if ref.notes else scan


def content_notes(scan: Scan) -> tuple[str, ...]:
    """The scan's warnings plus what its voxels say: a constant image normalises to zeros, so every rule gives
    zero relevance and the table would show only a conservation error of 1."""
    if scan.data.size and scan.data.min() == scan.data.max():
        return (*scan.warnings, f"every voxel is {float(scan.data.flat[0]):g}: the image has no contrast to explain")
    return scan.warnings


def iter_scans(paths: Sequence[str | Path], volume: int | None = None) -> Iterator[Scan | ScanError]:
    """Every scan under ``paths``, read in order; a scan that cannot be read is yielded as its ScanError."""
    refs, _ = discover(paths, volume=volume)
    for ref in refs:
        try:
            yield read_scan(ref)
        except ScanError as e:
            yield e
