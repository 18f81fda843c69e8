"""What discovery hands to the readers: small, picklable descriptions of scans and of skipped paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A scan larger than this many voxels (4 GiB as float32) is refused from its header, before any allocation:
# no MRI volume is that big, and a header that claims so is corrupt or hostile.
MAX_VOXELS = 2**30
# A 4D NIfTI with more volumes than this is refused rather than expanded into that many scans.
MAX_VOLUMES = 100_000


@dataclass(frozen=True)
class ScanRef:
    """One scan to read: enough to read it in another process, with no open files or global state."""

    kind: str                           # "nifti" | "dicom"
    source: str                         # path relative to its root: the file, or the DICOM series' folder
    scan_id: str                        # unique within one discover() call
    paths: tuple[str, ...]              # absolute file paths
    location: str                       # the file or folder as the user can find it (given path + relative)
    volume: int | None = None           # NIfTI 4D: 0-based volume index; None for 3D
    frames: tuple[tuple[int, int], ...] = ()  # enhanced DICOM: (index into paths, 0-based frame number)
    series_description: str = ""        # DICOM SeriesDescription, for listings
    dicom: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # DICOM header facts for
    # filters and tables: modality, series_number, protocol, study_uid, series_uid, derived, slices
    identity: tuple[dict[str, Any], ...] = field(default=(), compare=False, hash=False)  # input files, for resume
    # A multi-channel case (mri_lrp/scans/cases.py): one single-image ref per channel, read onto one grid.
    channels: tuple[str, ...] = ()      # the case's channel names, in model order; () for one image
    parts: tuple[ScanRef, ...] = ()     # the channels' refs, in the same order
    notes: tuple[str, ...] = ()         # discovery's remarks, added to the scan's warnings when read
    error: str = ""                     # why this case cannot be read (a channel missing...): its failure row


@dataclass(frozen=True)
class Skipped:
    """A path that holds no scan to read (junk, DICOMDIR, a localizer...) and why."""

    path: str
    reason: str
