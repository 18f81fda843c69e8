"""Segmentations and masks are never scans: a label image told apart by its name and folders, or by its voxels.

Discovery and the readers ask these for every model, so that a BraTS ``_seg`` file, a FreeSurfer ``aseg`` or an
nnU-Net ``labelsTr/`` image is skipped with its reason instead of being explained as an MR image.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

import numpy as np

from mri_lrp.scans.ids import strip_nifti_suffix

_LABEL_STEM = re.compile(r"(?:^|[_.-])(seg|segmentation|mask|brainmask|label|labels|dseg|probseg)$", re.IGNORECASE)
_LABEL_FOLDERS = ("labelsTr", "labelsTs")  # nnU-Net's label folders
# FreeSurfer's segmentations in a subject's mri/ folder (beside T1.mgz, brain.mgz, orig.mgz, which are scans).
_FREESURFER_LABELS = re.compile(r"^(?:aparc[\w.-]*\+aseg|aseg(?:\.\w+)?|wmparc|(?:[lr]h\.)?ribbon|filled)$",
                                re.IGNORECASE)


def label_file_reason(rel: str) -> str | None:
    """Why a NIfTI file is a segmentation or mask rather than a scan (from its name and folders), or None."""
    parts = PurePosixPath(rel.replace(os.sep, "/")).parts
    stem = strip_nifti_suffix(parts[-1])
    hit = _LABEL_STEM.search(stem)
    if hit:
        return f"named '{hit.group(0).lstrip('_.-')}': a segmentation or mask, not a scan"
    if _FREESURFER_LABELS.match(stem):
        return f"named '{stem}': a FreeSurfer segmentation, not a scan"
    folder = next((p for p in parts[:-1] if p in _LABEL_FOLDERS), None)
    if folder:
        return f"in nnU-Net's {folder}/ folder: a label image, not a scan"
    return None


def label_map_reason(data: np.ndarray) -> str | None:
    """Why an image's voxels make it a label map (a few whole numbers from 0: a segmentation or mask), or None.

    An MR image has hundreds of grey levels, next to each other; BraTS labels are 0/1/2/4, a mask 0/1 or 0/255,
    an atlas or a FreeSurfer parcellation up to a few hundred label values far apart and unevenly spaced
    (aseg: ~40 values up to 255, aparc+aseg: ~110 up to 2035). A sample rules out almost every scan at once;
    the whole volume is checked only for the few that pass it.
    """
    flat = np.asarray(data).ravel()
    for values in (flat[:: max(1, flat.size // 65536)], flat):
        if not values.size or not np.array_equal(values, np.round(values)):
            return None
        levels = np.unique(values)
        few = 2 <= levels.size <= 8 and levels[0] == 0 and (levels[-1] <= 20 or levels.size == 2)
        # Far apart, and not evenly (an 8-bit image stored as 16 bits, times 257, has a common step).
        sparse = 8 < levels.size <= 512 and levels[0] == 0 and levels[-1] >= 4 * levels.size \
            and np.gcd.reduce(levels.astype(np.int64)) == 1
        if not (few or sparse):
            return None
    if levels.size > 8:
        return (f"holds only {levels.size} whole numbers from 0 to {levels[-1]:g}, far apart: a label map "
                "(atlas or parcellation), not a scan")
    shown = ", ".join(f"{v:g}" for v in levels)
    return f"holds only the whole numbers {shown}: a label map (segmentation or mask), not a scan"
