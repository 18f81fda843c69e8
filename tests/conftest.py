"""Shared fixtures: paths to the real MR test files that ship inside the pydicom and nibabel wheels."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def pydicom_mr_files() -> dict[str, Path]:
    """pydicom's bundled 64x64 MR slice in every transfer syntax, plus the truncated file, keyed by name."""
    from pydicom.data import get_testdata_files

    files = {os.path.basename(p): Path(p) for p in get_testdata_files("MR_small*.dcm")}
    files.update({os.path.basename(p): Path(p) for p in get_testdata_files("MR_truncated.dcm")})
    return files


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    """nibabel's tests/data folder (anatomical.nii is LAS 33x41x25; example4d.nii.gz is 128x96x24x2)."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"
