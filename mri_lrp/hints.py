"""Hints for the usual mistakes: what was looked for and where, and what the folder seems to hold instead."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

from mri_lrp.scans import Skipped
from mri_lrp.scans.ids import NIFTI_SUFFIXES

_MASKY = ("label image", "mask")
_OUTPUTS = ("earlier explain run", "under --out")


def no_scans_hint(paths: Sequence[str], skipped: Sequence[Skipped]) -> str:
    """Why nothing was found: the kinds of files looked for, the folders searched, the commonest skip reasons."""
    where = ", ".join(os.path.abspath(p) for p in paths)
    looked = (f"looked for image files ({', '.join(NIFTI_SUFFIXES)}) and DICOM files (any name, recognised by "
              f"their content), in all sub-folders of {where}")
    if not skipped:
        return f"no scan found: {looked}; there are no files there"
    reasons = Counter(item.reason for item in skipped)
    common = "; ".join(f"{n} × {reason}" for reason, n in reasons.most_common(3))
    text = f"no scan found: {looked}; skipped {len(skipped)} file(s): {common}"
    if _share(skipped, _MASKY) > 0.5:
        text += (". These look like masks or label maps: give the scans' folder as SCANS and this one with "
                 "--masks DIR")
    elif _share(skipped, _OUTPUTS) > 0.5:
        text += ". This looks like an output folder of mri-lrp: give the folder of the original scans"
    return text


def _share(skipped: Sequence[Skipped], words: tuple[str, ...]) -> float:
    return sum(any(w in item.reason for w in words) for item in skipped) / len(skipped)
