"""Reading one discovered scan: a pure function of its ScanRef, so it runs the same in worker processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from mri_lrp.errors import ScanError
from mri_lrp.scans.dicom import read_dicom
from mri_lrp.scans.discover import discover
from mri_lrp.scans.nifti import read_nifti
from mri_lrp.scans.refs import ScanRef
from mri_lrp.scans.scan import Scan


def read_scan(ref: ScanRef) -> Scan:
    """The Scan that ``ref`` describes; ScanError(location, reason, stage="read") for anything wrong with it."""
    try:
        if ref.kind == "nifti":
            return read_nifti(ref)
        if ref.kind == "dicom":
            return read_dicom(ref)
    except OSError as e:  # a file removed or made unreadable since discovery
        raise ScanError(ref.location, f"cannot read {e.filename or 'file'}: {e.strerror or e}") from None
    raise ScanError(ref.location, f"unknown scan kind {ref.kind!r}")


def iter_scans(paths: Sequence[str | Path], volume: int | None = None) -> Iterator[Scan | ScanError]:
    """Every scan under ``paths``, read in order; a scan that cannot be read is yielded as its ScanError."""
    refs, _ = discover(paths, volume=volume)
    for ref in refs:
        try:
            yield read_scan(ref)
        except ScanError as e:
            yield e
