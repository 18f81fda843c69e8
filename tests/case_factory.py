"""Multi-channel cases in the layouts users bring, written as real NIfTI / DICOM files with known content.

Every channel's volume is zero except for a box of its own (a different place per channel), so whichever
file ends up in a channel can be told from its voxels, and relevance (LRP gives exactly 0 where the input is
0) can be traced back to the one file it came from. Each builder returns the case's expected (C, I, J, K)
data in model channel order.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from dicom_factory import AXIAL, write_series

NAMES = ("t1", "t1ce", "t2", "flair")
SHAPE = (12, 10, 8)
AFFINE = np.array([[-1.0, 0, 0, 20], [0, 1.0, 0, -30], [0, 0, 1.2, 5], [0, 0, 0, 1]])


def channel_volumes(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """(4, I, J, K) float32: channel c is zero but for the box i in [1 + 2c, 3 + 2c), j in [2, 8), k in [2, 6)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(NAMES), *shape), dtype=np.float32)
    for c in range(len(NAMES)):
        out[c, 1 + 2 * c:3 + 2 * c, 2:8, 2:6] = rng.uniform(50, 150, (2, 6, 4))
    return out


def box(c: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """The voxels channel c's own file is non-zero in."""
    inside = np.zeros(shape, dtype=bool)
    inside[1 + 2 * c:3 + 2 * c, 2:8, 2:6] = True
    return inside


def save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def label_map(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A BraTS-style segmentation: labels 0, 1, 2, 4 stored as integers."""
    seg = np.zeros(shape, dtype=np.uint8)
    seg[2:6, 2:6, 2:5], seg[3:5, 3:5, 3:4], seg[6:8, 2:4, 2:4] = 2, 1, 4
    return seg


def brats2021(root: Path, case: str = "BraTS2021_00007", seed: int = 0) -> np.ndarray:
    vols = channel_volumes(seed)
    for c, tag in enumerate(("t1", "t1ce", "t2", "flair")):
        save(vols[c], root / case / f"{case}_{tag}.nii.gz")
    save(label_map(), root / case / f"{case}_seg.nii.gz")
    return vols


def brats2023(root: Path, case: str = "BraTS-GLI-00007-000", seed: int = 0) -> np.ndarray:
    vols = channel_volumes(seed)
    for c, tag in enumerate(("t1n", "t1c", "t2w", "t2f")):
        save(vols[c], root / case / f"{case}-{tag}.nii.gz")
    save(label_map(), root / case / f"{case}-seg.nii.gz")
    return vols


def nnunet(root: Path, case: str = "CASE_007", seed: int = 0) -> np.ndarray:
    vols = channel_volumes(seed)
    dataset = root / "Dataset001_Brain"
    for c in range(len(NAMES)):
        save(vols[c], dataset / "imagesTr" / f"{case}_{c:04d}.nii.gz")
    save(label_map(), dataset / "labelsTr" / f"{case}.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"},
        "labels": {"background": 0, "tumour": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))
    return vols


def bids(root: Path, subject: str = "07", seed: int = 0) -> np.ndarray:
    vols = channel_volumes(seed)
    anat = root / f"sub-{subject}" / "ses-1" / "anat"
    stem = f"sub-{subject}_ses-1"
    for c, suffix in enumerate(("T1w", "ce-gd_T1w", "T2w", "FLAIR")):
        save(vols[c], anat / f"{stem}_{suffix}.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.8.0"}))
    save(label_map(), root / "derivatives" / "seg" / f"sub-{subject}" / "ses-1" / "anat"
         / f"{stem}_desc-tumour_dseg.nii.gz")
    return vols


def msd(root: Path, case: str = "BRATS_007", seed: int = 0) -> np.ndarray:
    """Medical Segmentation Decathlon: one 4D NIfTI per case, volume N being channel N."""
    vols = channel_volumes(seed)
    save(np.moveaxis(vols, 0, -1), root / "imagesTr" / f"{case}.nii.gz")
    save(label_map(), root / "labelsTr" / f"{case}.nii.gz")
    return vols


def globbed(root: Path, case: str = "patient07", seed: int = 0) -> np.ndarray:
    """Own naming, one folder per sequence: matched by [input_spec.channel_files] globs."""
    vols = channel_volumes(seed)
    for c, folder in enumerate(("T1", "T1_contrast", "T2", "FLAIR")):
        save(vols[c], root / folder / f"{case}.nii.gz")
    return vols


def per_patient(root: Path, case: str = "patient_A", seed: int = 0) -> np.ndarray:
    """A clinic export, one folder per patient: the names differ in what follows the sequence."""
    vols = channel_volumes(seed)
    for c, name in enumerate(("T1_pre", "T1_post_gd", "T2_tse", "FLAIR_3d")):
        save(vols[c], root / case / f"{name}.nii.gz")
    return vols


def flat_prefixed(root: Path, case: str = "P1", seed: int = 0) -> np.ndarray:
    """Every patient's files in one folder, told apart by a prefix."""
    vols = channel_volumes(seed)
    for c, tag in enumerate(("T1pre", "T1post", "T2", "FLAIR")):
        save(vols[c], root / "export" / f"{case}_{tag}.nii.gz")
    return vols


#: The [input_spec.channel_files] globs a user writes for each own layout.
OWN_GLOBS = {
    "per_patient": {"t1": "T1_pre*", "t1ce": "T1_post*", "t2": "T2_*", "flair": "FLAIR*"},
    "per_sequence": {"t1": "T1/*.nii.gz", "t1ce": "T1_contrast/*.nii.gz", "t2": "T2/*.nii.gz",
                     "flair": "FLAIR/*.nii.gz"},
    "flat_prefixed": {"t1": "*_T1pre.nii.gz", "t1ce": "*_T1post.nii.gz", "t2": "*_T2.nii.gz",
                      "flair": "*_FLAIR.nii.gz"},
    "dicom": {"t1": "T1 AX SE", "t1ce": "*post gd*", "t2": "T2 *", "flair": "*FLAIR"},
}

GLOBS = {"t1": "T1/*.nii.gz", "t1ce": "T1_contrast/*.nii.gz", "t2": "T2/*.nii.gz", "flair": "FLAIR/*.nii.gz"}

DESCRIPTIONS = ("T1 AX SE", "T1 AX POST GD", "T2 AX TSE", "AX T2 FLAIR")


def dicom_study(root: Path, seed: int = 0) -> np.ndarray:
    """Four series of one study on one grid, told apart by SeriesDescription only (folders in other order).

    The series' values are offset by 1000 x channel so their volumes differ."""
    out = []
    for c, description in enumerate(DESCRIPTIONS):
        folder = root / "study" / f"series_{(c * 3) % 4 + 1}"  # folder order is not channel order
        gen = write_series(folder, AXIAL, n_slices=6, rows=16, cols=16, series_number=10 + c,
                           description=description, rescale=(1.0, 1000.0 * c), seed=seed + c)
        out.append(gen.volume)
    return np.stack(out)


LAYOUTS = {"brats2021": brats2021, "brats2023": brats2023, "nnunet": nnunet, "bids": bids, "msd": msd,
           "globs": globbed, "dicom": dicom_study}
