"""DICOM: file headers (``headers``) → series split into stackable volumes (``series``), and one stack → a Scan
with its RAS affine (``volume``).

pydicom parses and decodes; the geometry (sorting on the slice normal, spacing checks, the LPS→RAS affine) is
a few small numpy functions here, because no installed library both splits mixed series the way scanners
export them and reports *why* a stack cannot be a volume. nibabel's `nicom` wrappers compute the same affine
(the tests use them as an independent check) but leave grouping, checks and enhanced-frame selection to us.
"""

from mri_lrp.scans.dicom.headers import DicomHeader, SliceInfo, dataset_slices, mosaic_evidence, read_header
from mri_lrp.scans.dicom.series import Stack, split_series
from mri_lrp.scans.dicom.volume import JPEG_EXTRA_HINT, dicom_affine, read_dicom

__all__ = ["JPEG_EXTRA_HINT", "DicomHeader", "SliceInfo", "Stack", "dataset_slices", "dicom_affine",
           "mosaic_evidence", "read_dicom", "read_header", "split_series"]
