"""Regressions for bad scans, masks and leftovers that once gave silent results or unclear messages."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import SAGITTAL, write_series

from mri_lrp.errors import ScanError
from mri_lrp.regions import load_mask
from mri_lrp.scans import discover, read_scan
from mri_lrp.scans.inspect import inspect_rows
from mri_lrp.scans.scan import Scan


def _read_all(folder: Path) -> list[Scan | ScanError]:
    refs, _ = discover([folder])
    out: list[Scan | ScanError] = []
    for ref in refs:
        try:
            out.append(read_scan(ref))
        except ScanError as e:
            out.append(e)
    return out


def _scan(shape: tuple[int, int, int], affine: np.ndarray) -> Scan:
    return Scan(scan_id="s", source="s.nii.gz", kind="nifti", data=np.ones(shape, np.float32), affine=affine)


def test_series_with_one_odd_sized_file_is_one_failed_scan_naming_that_file(tmp_path):
    series = write_series(tmp_path / "ser", n_slices=6)
    odd = write_series(tmp_path / "tmp", n_slices=6, rows=48, series_uid=series.series_uid)
    pydicom.dcmread(odd.paths[3]).save_as(series.paths[3])  # same slot, other image size
    results = _read_all(tmp_path / "ser")
    assert len(results) == 1  # not a one-slice "scan" plus a volume with a gap
    assert isinstance(results[0], ScanError)
    assert series.paths[3].name in results[0].reason and "48x64" in results[0].reason


def test_localizer_of_another_size_and_orientation_is_still_split_off(tmp_path):
    main = write_series(tmp_path / "ser", n_slices=5)
    write_series(tmp_path / "ser", SAGITTAL, n_slices=3, rows=32, cols=48, series_uid=main.series_uid,
                 name_prefix="LOC")
    results = _read_all(tmp_path / "ser")
    assert sorted(r.shape for r in results if isinstance(r, Scan)) == [(48, 32, 3), (64, 64, 5)]


def test_zero_pixel_spacing_is_refused_naming_the_file_and_inspect_goes_on(tmp_path):
    series = write_series(tmp_path / "zero", n_slices=3)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), np.eye(4)),
             tmp_path / "fine.nii.gz")
    rows = {r["scan_id"]: r for r in inspect_rows([tmp_path])}
    assert rows["fine"]["status"] == "ok"
    (bad,) = [r for r in rows.values() if r["kind"] == "error"]
    assert "PixelSpacing" in bad["problems"][0] and series.paths[0].name in bad["problems"][0]


def test_rgb_nifti_is_refused_as_colour_not_with_a_numpy_message(tmp_path):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    (err,) = _read_all(tmp_path)
    assert isinstance(err, ScanError) and "colour" in err.reason and "DType" not in err.reason


def test_text_file_named_nii_is_refused_without_its_absolute_path(tmp_path):
    (tmp_path / "notes.nii").write_text("not an image\n")
    (err,) = _read_all(tmp_path)
    assert isinstance(err, ScanError) and "not a readable NIfTI" in err.reason
    assert str(tmp_path) not in err.reason and "notes.nii" in err.reason


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_constant_image_is_listed_with_a_no_contrast_warning(tmp_path, value):
    nib.save(nib.Nifti1Image(np.full((5, 5, 5), value, np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    (row,) = inspect_rows([tmp_path])
    assert row["status"] == "warning" and any("no contrast" in p for p in row["problems"])


def test_relevance_maps_of_an_earlier_run_under_another_out_are_not_scans(tmp_path):
    img = nib.Nifti1Image(np.random.default_rng(1).random((6, 6, 6)).astype(np.float32), np.eye(4))
    nib.save(img, tmp_path / "sub-01.nii.gz")
    old = tmp_path / "old_run" / "scans" / "sub-01"
    old.mkdir(parents=True)
    nib.save(img, old / "relevance.nii.gz")
    nib.save(img, old / ".relevance.nii.gz.x1y2.nii.gz")  # a temporary left by a killed run
    (old / "regions.csv").write_text("scan_id\n")
    refs, skipped = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["sub-01"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "earlier explain run" in reasons["relevance.nii.gz"]
    assert "earlier explain run" in reasons[".relevance.nii.gz.x1y2.nii.gz"]


def test_two_dimensional_mask_on_a_3d_scan_is_refused_naming_the_mask(tmp_path):
    mask = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.uint8), np.eye(4)), mask)
    with pytest.raises(ScanError, match="mask is 2D") as info:
        load_mask(mask, _scan((8, 8, 8), np.eye(4)))
    assert info.value.path == str(mask) and info.value.stage == "regions"


def test_two_dimensional_mask_on_a_single_slice_scan_is_used(tmp_path):
    mask = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.uint8), np.eye(4)), mask)
    assert load_mask(mask, _scan((8, 8, 1), np.eye(4))).all()


def test_mask_in_another_world_space_is_refused_instead_of_scoring_zero(tmp_path):
    far = np.eye(4)
    far[:3, 3] = 500.0
    mask = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), far), mask)
    with pytest.raises(ScanError, match="none of the mask's 512 voxels"):
        load_mask(mask, _scan((8, 8, 8), np.eye(4)))


def test_tiny_fine_mask_between_coarse_voxel_centres_is_kept_as_empty(tmp_path):
    data = np.zeros((40, 40, 40), np.uint8)
    data[2, 2, 2] = 1  # 0.1 mm voxel at 0.25 mm: between the 1 mm scan's voxel centres
    mask = tmp_path / "m.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.1, 0.1, 0.1, 1.0])), mask)
    assert not load_mask(mask, _scan((8, 8, 8), np.eye(4))).any()


def test_failure_lines_name_the_scan_mask_errors_are_clean_and_flat_scans_warn(tmp_path):
    """'pixel spacing' contains the folder name 'spacing': the line must still start with the folder."""
    series = write_series(tmp_path / "scans" / "spacing", n_slices=4)
    ds = pydicom.dcmread(series.paths[2])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(series.paths[2])
    rng = np.random.default_rng(2)
    nib.save(nib.Nifti1Image(rng.random((12, 12, 12)).astype(np.float32), np.diag([4.0, 4, 4, 1])),
             tmp_path / "scans" / "head.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.diag([4.0, 4, 4, 1])),
             tmp_path / "scans" / "flat.nii.gz")
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(np.ones((12, 12), np.uint8), np.diag([4.0, 4, 4, 1])), masks / "head.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(tmp_path / "scans"), "--out",
                           str(out), "--masks", str(masks), "--workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if "FAILED" in line]
    spacing_line = next(line for line in failed if "spacing__s1" in line)
    assert f"spacing__s1: {tmp_path / 'scans' / 'spacing'}: IM00002: pixel spacing" in spacing_line
    with open(out / "failures.csv", newline="") as f:
        rows = {r["scan_id"]: r for r in csv.DictReader(f)}
    assert rows["head"]["stage"] == "regions"
    assert "flat" not in rows
    with open(out / "summary.csv", newline="") as f:
        flat = next(r for r in csv.DictReader(f) if r["scan_id"] == "flat")
    assert "no contrast" in flat["warnings"]
    assert rows["head"]["error"].startswith(f"{masks / 'head.nii.gz'}: mask is 2D")  # no 'ScanError:' prefix


def test_dicomdir_given_by_name_reads_the_series_it_indexes(tmp_path):
    from pydicom.fileset import FileSet

    series = write_series(tmp_path / "src", n_slices=4)
    fs = FileSet()
    for path in series.paths:
        fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "cd")
    refs, _ = discover([tmp_path / "cd" / "DICOMDIR"])
    assert len(refs) == 1 and read_scan(refs[0]).shape == (64, 64, 4)


def test_merge_flags_an_explained_scan_whose_folder_was_lost(tmp_path):
    from mri_lrp.merge import merge_outputs
    from mri_lrp.outputs import FAILURE_COLUMNS, SUMMARY_COLUMNS, write_csv

    run = tmp_path / "run"
    write_csv(run / "summary.csv", [{"scan_id": s, "status": "ok"} for s in ("kept", "lost")], SUMMARY_COLUMNS)
    write_csv(run / "regions.csv", [], ["scan_id", "region_name"])
    write_csv(run / "failures.csv", [], FAILURE_COLUMNS)
    (run / "scans" / "kept").mkdir(parents=True)
    (run / "scans" / "kept" / "relevance.nii.gz").write_bytes(b"x")
    report = merge_outputs([run], tmp_path / "merged")
    assert report.files_missing == ("lost",) and not report.ok
    assert "explained, but the scan folder is gone (1): lost" in report.describe()


def test_series_without_series_uid_is_one_volume_not_one_scan_per_slice(tmp_path):
    series = write_series(tmp_path / "anon", n_slices=5)
    for path in series.paths:
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.save_as(path)
    (scan,) = _read_all(tmp_path)
    assert isinstance(scan, Scan) and scan.shape == (64, 64, 5)
    np.testing.assert_array_equal(scan.data, series.volume)
