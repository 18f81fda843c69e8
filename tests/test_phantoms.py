"""Phantom generator, DICOM series writer and sample-scan script: determinism, anatomy, geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from mri_lrp.dicom_write import write_dicom_series
from mri_lrp.phantoms import LABELS, TISSUES, generate_phantom, grid_affine

ROOT = Path(__file__).resolve().parents[1]
COARSE = {"spacing_range": (2.8, 3.2)}  # small grids keep these tests fast
BRAIN = [TISSUES[n] for n in ("grey_matter", "white_matter", "ventricle", "csf")]


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` voxels with a 6-neighbourhood."""
    out = mask.astype(bool)
    for _ in range(steps):
        grown = out.copy()
        for axis in range(3):
            grown |= np.roll(out, 1, axis) | np.roll(out, -1, axis)
        out = grown
    return out


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World RAS mm of every set voxel, (N, 3)."""
    ijk = np.argwhere(mask)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def test_same_seed_gives_identical_arrays_and_different_seeds_differ() -> None:
    a, b = generate_phantom(7, "glioma", **COARSE), generate_phantom(7, "glioma", **COARSE)
    assert np.array_equal(a.volume, b.volume) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.affine, b.affine) and np.array_equal(a.tissues, b.tissues)
    c = generate_phantom(8, "glioma", **COARSE)
    assert a.volume.shape != c.volume.shape or not np.array_equal(a.volume, c.volume)
    assert a.lesion_center_mm != c.lesion_center_mm


def test_output_types_and_label_drawn_from_seed() -> None:
    labels = {generate_phantom(seed, spacing=(8.0, 8.0, 8.0)).label for seed in range(24)}
    assert labels == set(LABELS)
    p = generate_phantom(3, **COARSE)
    assert p.label == generate_phantom(3, **COARSE).label
    assert p.volume.dtype == np.float32 and p.mask.dtype == np.uint8 and p.tissues.dtype == np.uint8
    assert p.affine.shape == (4, 4) and p.volume.shape == p.mask.shape == p.tissues.shape
    with pytest.raises(ValueError, match="label must be one of"):
        generate_phantom(3, "astrocytoma")


@pytest.mark.parametrize("label", ["glioma", "meningioma", "pituitary"])
def test_classes_differ_only_at_the_lesion(label: str) -> None:
    """Same seed, other class: the same head and noise, so only the lesion can tell the classes apart."""
    tumour = generate_phantom(11, label, **COARSE)
    healthy = generate_phantom(11, "no_tumour", **COARSE)
    assert np.array_equal(tumour.tissues, healthy.tissues)
    changed = tumour.volume != healthy.volume
    assert changed.any() and tumour.mask.any()
    assert not (changed & ~_dilate(tumour.mask > 0, 2)).any()


def test_no_tumour_has_an_empty_mask() -> None:
    for seed in range(3):
        p = generate_phantom(seed, "no_tumour", **COARSE)
        assert not p.mask.any() and p.lesion_center_mm is None


def test_glioma_lies_inside_the_brain() -> None:
    centres = []
    for seed in range(6):
        p = generate_phantom(seed, "glioma", **COARSE)
        under = p.tissues[p.mask > 0]
        assert np.isin(under, BRAIN).all(), f"seed {seed}: glioma outside the brain"
        assert np.mean(under == TISSUES["white_matter"]) > 0.3
        centres.append(p.lesion_center_mm)
    assert np.ptp(np.array(centres), axis=0).min() > 10.0  # not always at one spot


def test_meningioma_sits_against_the_inner_skull() -> None:
    centres = []
    for seed in range(6):
        p = generate_phantom(seed, "meningioma", **COARSE)
        lesion = p.mask > 0
        ring = _dilate(lesion, 1) & ~lesion
        assert (p.tissues[ring] == TISSUES["skull"]).any(), f"seed {seed}: not touching the skull"
        assert not np.isin(p.tissues[lesion], [TISSUES["skull"], TISSUES["scalp"]]).any()
        assert (p.tissues[lesion] != TISSUES["white_matter"]).mean() > 0.5  # extra-axial: mostly outside WM
        centres.append(p.lesion_center_mm)
    assert np.ptp(np.array(centres), axis=0).max() > 40.0


def test_pituitary_is_midline_and_inferior() -> None:
    for seed in range(6):
        p = generate_phantom(seed, "pituitary", **COARSE)
        brain = _world(p.affine, np.isin(p.tissues, BRAIN)).mean(axis=0)
        lesion = _world(p.affine, p.mask > 0)
        centre = lesion.mean(axis=0)
        assert abs(centre[0] - brain[0]) < 10.0, f"seed {seed}: {centre} not midline (brain {brain})"
        assert centre[2] < brain[2] - 20.0, f"seed {seed}: not inferior"
        assert 0.1 < len(lesion) * np.prod(p.spacing) / 1000.0 < 8.0  # small: 0.1-8 ml


@pytest.mark.parametrize("orientation", ["RAS", "LAS", "LPS", "PSR"])
def test_affine_orientation_and_spacing_match_the_request(orientation: str) -> None:
    p = generate_phantom(2, "meningioma", orientation=orientation, spacing=(2.5, 3.0, 3.5))
    assert "".join(nib.aff2axcodes(p.affine)) == orientation
    assert np.allclose(p.spacing, (2.5, 3.0, 3.5))


def test_stored_orientation_does_not_move_the_head() -> None:
    """An LPS grid holds the RAS grid's head flipped on the first two axes (same world positions)."""
    ras = generate_phantom(4, "glioma", orientation="RAS", spacing=(3.0, 3.0, 3.0))
    lps = generate_phantom(4, "glioma", orientation="LPS", spacing=(3.0, 3.0, 3.0))
    assert np.array_equal(np.flip(lps.mask, (0, 1)), ras.mask)
    assert np.array_equal(np.flip(lps.tissues, (0, 1)), ras.tissues)
    assert np.allclose(lps.affine @ [lps.volume.shape[0] - 1, lps.volume.shape[1] - 1, 0, 1],
                       ras.affine @ [0, 0, 0, 1])
    assert np.corrcoef(np.flip(lps.volume, (0, 1)).ravel(), ras.volume.ravel())[0, 1] > 0.95


def test_head_fits_the_default_field_of_view() -> None:
    for seed in range(4):
        p = generate_phantom(seed, **COARSE)
        border = np.concatenate([p.tissues[[0, -1]].ravel(), p.tissues[:, [0, -1]].ravel(),
                                 p.tissues[:, :, [0, -1]].ravel()])
        assert not border.any()


def test_grid_affine_rejects_bad_orientation() -> None:
    with pytest.raises(ValueError, match="three axis codes"):
        grid_affine((4, 4, 4), (1.0, 1.0, 1.0), "RAR")


def _affine_from_dicom(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """Rebuild voxel -> RAS from IOP, PixelSpacing and IPP, as readers do (columns = i, rows = j)."""
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    first, last = (np.array(d.ImagePositionPatient, dtype=float) for d in (datasets[0], datasets[-1]))
    step = (last - first) / (len(datasets) - 1)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("orientation", ["LPS", "LAS", "RAS"])
def test_dicom_series_round_trip_gives_back_affine_and_values(tmp_path: Path, orientation: str) -> None:
    p = generate_phantom(5, "pituitary", orientation=orientation, spacing=(2.4, 2.6, 3.1))
    paths = write_dicom_series(p.volume, p.affine, tmp_path / "series", uid_seed="round-trip")
    assert [f.name for f in paths][:2] == ["IM0001", "IM0002"] and len(paths) == p.volume.shape[2]
    datasets = [pydicom.dcmread(f) for f in paths]
    # Readers sort by position along the slice normal, not by file name or instance number.
    normal = np.cross(*np.array(datasets[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    order = np.argsort([np.dot(normal, np.array(d.ImagePositionPatient, dtype=float)) for d in datasets])
    rebuilt = _affine_from_dicom([datasets[i] for i in order])
    volume = np.stack([apply_modality_lut(datasets[i].pixel_array, datasets[i]).T for i in order], axis=2)
    if order[0] != 0:  # sorted against the stored slice order: same geometry, third axis reversed
        rebuilt = rebuilt @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, len(order) - 1], [0, 0, 0, 1]])
        volume = volume[:, :, ::-1]
    assert np.allclose(rebuilt, p.affine, atol=1e-4)
    slope = float(datasets[0].RescaleSlope)
    assert np.abs(volume - p.volume).max() <= slope / 2 + 1e-6
    assert float(datasets[0].SliceThickness) == pytest.approx(3.1)


def test_dicom_series_has_reproducible_uids_and_no_identifying_tags(tmp_path: Path) -> None:
    volume = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    affine = grid_affine((4, 5, 3), (1.0, 1.0, 2.0), "LPS")
    first = [pydicom.dcmread(f) for f in write_dicom_series(volume, affine, tmp_path / "a", uid_seed="s1")]
    again = [pydicom.dcmread(f) for f in write_dicom_series(volume, affine, tmp_path / "b", uid_seed="s1")]
    other = [pydicom.dcmread(f) for f in write_dicom_series(volume, affine, tmp_path / "c", uid_seed="s2")]
    uids = [d.SOPInstanceUID for d in first]
    assert uids == [d.SOPInstanceUID for d in again] and len(set(uids)) == 3
    assert first[0].SeriesInstanceUID == again[0].SeriesInstanceUID != other[0].SeriesInstanceUID
    assert len({d.SeriesInstanceUID for d in first}) == 1 and first[0].StudyInstanceUID != uids[0]
    ds = first[0]
    assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert str(ds.PatientName) == "Anonymous^Phantom" and ds.PatientBirthDate == ""
    assert "InstitutionName" not in ds and "OtherPatientIDs" not in ds
    assert (ds.Rows, ds.Columns) == (5, 4)


def test_dicom_writer_rejects_a_2d_array(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be 3D"):
        write_dicom_series(np.zeros((4, 4)), np.eye(4), tmp_path, uid_seed="x")
