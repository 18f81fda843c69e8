"""Reading MRI folders: discovery of NIfTI files and DICOM series, and readers that produce Scan values."""

from mri_lrp.scans.discover import discover
from mri_lrp.scans.inspect import inspect_rows
from mri_lrp.scans.read import iter_scans, read_scan
from mri_lrp.scans.refs import MAX_VOXELS, ScanRef, Skipped
from mri_lrp.scans.scan import Scan

__all__ = ["MAX_VOXELS", "Scan", "ScanRef", "Skipped", "discover", "inspect_rows", "iter_scans", "read_scan"]
