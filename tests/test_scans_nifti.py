"""NIfTI reading: nibabel's bundled files, scaling, sform/qform, NaN/Inf, 4D volumes and refused headers."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp.errors import ScanError
from mri_lrp.scans import discover, read_scan


def read_all(path: Path, **kw):
    refs, skipped = discover([path], **kw)
    return refs, [read_scan(r) for r in refs], skipped


def save(img: nib.Nifti1Image, path: Path) -> Path:
    nib.save(img, path)
    return path


def test_anatomical_las_file_reads_with_nibabels_affine_and_data(nibabel_data, tmp_path):
    shutil.copy(nibabel_data / "anatomical.nii", tmp_path)
    refs, scans, skipped = read_all(tmp_path)
    img = nib.load(nibabel_data / "anatomical.nii")
    (scan,) = scans
    assert not skipped and scan.scan_id == "anatomical" and scan.kind == "nifti" and scan.source == "anatomical.nii"
    assert scan.shape == (33, 41, 25) and scan.spacing == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(scan.affine) == ("L", "A", "S")
    np.testing.assert_array_equal(scan.affine, img.affine)
    np.testing.assert_array_equal(scan.data, img.get_fdata(dtype=np.float32))
    assert scan.data.dtype == np.float32


def test_4d_file_gives_one_scan_per_volume_or_the_chosen_one(nibabel_data, tmp_path):
    shutil.copy(nibabel_data / "example4d.nii.gz", tmp_path)
    img = nib.load(nibabel_data / "example4d.nii.gz")
    full = img.get_fdata(dtype=np.float32)
    refs, scans, _ = read_all(tmp_path)
    assert [r.scan_id for r in refs] == ["example4d_vol0000", "example4d_vol0001"]
    for v, scan in enumerate(scans):
        assert scan.shape == (128, 96, 24) and scan.metadata["volume"] == str(v)
        np.testing.assert_array_equal(scan.data, full[..., v])
        np.testing.assert_array_equal(scan.affine, img.affine)
    refs, scans, _ = read_all(tmp_path, volume=1)
    assert [r.scan_id for r in refs] == ["example4d_vol0001"]
    np.testing.assert_array_equal(scans[0].data, full[..., 1])


def test_volume_beyond_the_file_is_a_scan_error(nibabel_data, tmp_path):
    shutil.copy(nibabel_data / "example4d.nii.gz", tmp_path)
    refs, _ = discover([tmp_path], volume=5)
    with pytest.raises(ScanError, match="volume 5 requested but the file has 2"):
        read_scan(refs[0])


def test_scaling_from_the_header_is_applied(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(2.5, -4.0)
    save(img, tmp_path / "scaled.nii")
    _, (scan,), _ = read_all(tmp_path)
    np.testing.assert_allclose(scan.data, raw * 2.5 - 4.0)


def test_disagreeing_sform_and_qform_warn_and_the_sform_wins(tmp_path):
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    sform = qform.copy()
    sform[:3, 3] = [10.0, 0.0, 0.0]
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    save(img, tmp_path / "disagree.nii.gz")
    img2 = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    img2.set_qform(qform, code=1)
    img2.set_sform(qform, code=2)
    save(img2, tmp_path / "agree.nii.gz")
    _, (agree, disagree), _ = read_all(tmp_path)
    assert agree.warnings == ()
    assert any("sform and qform disagree" in w for w in disagree.warnings)
    np.testing.assert_allclose(disagree.affine, sform)


def test_nan_and_inf_are_replaced_with_zero_and_reported(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "bad.nii")
    _, (scan,), _ = read_all(tmp_path)
    assert np.all(np.isfinite(scan.data)) and scan.data[0, 0, 0] == 0 and scan.data[1, 1, 1] == 0
    assert any("2 NaN/Inf" in w for w in scan.warnings)


def test_5d_file_is_refused_but_trailing_singleton_dims_are_one_volume(tmp_path):
    save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 3), np.float32), np.eye(4)), tmp_path / "five.nii.gz")
    save(nib.Nifti1Image(np.ones((4, 4, 4, 1, 1), np.float32), np.eye(4)), tmp_path / "squeezable.nii.gz")
    refs, _ = discover([tmp_path])
    by_id = {r.scan_id: r for r in refs}
    with pytest.raises(ScanError, match="5D NIfTI"):
        read_scan(by_id["five"])
    assert read_scan(by_id["squeezable"]).shape == (4, 4, 4)


def test_2d_file_is_a_single_slice_scan(tmp_path):
    save(nib.Nifti1Image(np.ones((5, 6), np.float32), np.eye(4)), tmp_path / "slice.nii")
    _, (scan,), _ = read_all(tmp_path)
    assert scan.shape == (5, 6, 1) and scan.is_2d


def test_header_claiming_absurd_dimensions_is_refused_before_any_allocation(tmp_path):
    header = nib.Nifti2Header()
    header.set_data_shape((10**9, 10**9, 10**9))
    header.set_data_dtype(np.float32)
    path = tmp_path / "absurd.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)
    refs, _ = discover([tmp_path])
    tracemalloc.start()
    try:
        with pytest.raises(ScanError, match="limit; refused before reading"):
            read_scan(refs[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_truncated_uncompressed_file_is_refused(tmp_path):
    path = save(nib.Nifti1Image(np.ones((32, 32, 32), np.float32), np.eye(4)), tmp_path / "cut.nii")
    path.write_bytes(path.read_bytes()[:5000])
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match="truncated or corrupt"):
        read_scan(refs[0])


@pytest.mark.parametrize("suffix", [".nii.gz", ".mgz"])
def test_compressed_files_read_through_isal_give_zlibs_voxels(tmp_path, suffix):
    import gzip

    from isal import igzip
    from nibabel.openers import ImageOpener

    data = np.random.default_rng(3).random((40, 36, 30), np.float32)
    img = (nib.MGHImage if suffix == ".mgz" else nib.Nifti1Image)(data, np.diag([1.5, 1.5, 2.0, 1.0]))
    path = save(img, tmp_path / f"s{suffix}")
    assert isinstance(ImageOpener(str(path), "rb").fobj, igzip.IGzipFile)
    with gzip.open(path) as f:  # the file is plain gzip, written by nibabel's own (zlib) writer
        assert f.read(4)
    (scan,) = read_all(tmp_path)[1]
    np.testing.assert_array_equal(scan.data, data)


def test_truncated_gzip_file_is_a_scan_error(tmp_path):
    path = save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 32), np.float32), np.eye(4)),
                tmp_path / "cut.nii.gz")
    path.write_bytes(path.read_bytes()[:3000])
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match="cannot read the image data"):
        read_scan(refs[0])


def test_text_file_named_nii_is_a_failed_scan_not_a_crash(tmp_path):
    (tmp_path / "notes.nii").write_text("this is not an image\n")
    refs, skipped = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["notes"] and not skipped
    with pytest.raises(ScanError, match="not a readable NIfTI file"):
        read_scan(refs[0])
