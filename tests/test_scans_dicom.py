"""DICOM series → volumes: real bundled files, and generated series whose geometry the test knows."""

from __future__ import annotations

import gzip
import itertools
import re
import shutil
import warnings
from pathlib import Path

import dicom_factory as fac
import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder

from mri_lrp.errors import ScanError
from mri_lrp.scans import MAX_VOXELS, discover, read_scan


def only_scan(folder: Path):
    refs, skipped = discover([folder])
    assert len(refs) == 1, (refs, skipped)
    return read_scan(refs[0])


def voxel_of(affine: np.ndarray, world: np.ndarray) -> tuple[int, int, int]:
    ijk = np.linalg.solve(affine, np.append(world, 1.0))[:3]
    assert np.allclose(ijk, np.round(ijk), atol=1e-3), ijk
    return tuple(int(v) for v in np.round(ijk))  # type: ignore[return-value]


# --- pydicom's bundled MR_small in every transfer syntax ------------------------------------------------------

MR_SMALL_NAMES = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                  "MR_small_padded.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                  "MR_small_jpeg_ls_lossless.dcm"]


@pytest.mark.parametrize("name", MR_SMALL_NAMES)
def test_bundled_mr_small_reads_in_each_transfer_syntax_or_names_the_jpeg_extra(name, pydicom_mr_files, tmp_path):
    shutil.copy(pydicom_mr_files[name], tmp_path / "image")
    reference = pydicom.dcmread(pydicom_mr_files["MR_small.dcm"]).pixel_array
    refs, skipped = discover([tmp_path])
    assert len(refs) == 1 and not skipped
    syntax = pydicom.dcmread(pydicom_mr_files[name], stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax.is_compressed and not get_decoder(syntax).is_available:
        with pytest.raises(ScanError, match=r"pip install 'mri-lrp\[jpeg\]'") as info:
            read_scan(refs[0])
        assert "\n" not in str(info.value)
        return
    scan = read_scan(refs[0])
    assert scan.shape == (64, 64, 1) and scan.is_2d and scan.data.dtype == np.float32
    np.testing.assert_array_equal(scan.data[:, :, 0], reference.T)
    # IPP [-83.9063, -91.2, 6.6406], identity orientation, 0.3125 mm pixels, 0.8 mm thick, LPS -> RAS
    expected = np.array([[-0.3125, 0, 0, 83.9063], [0, -0.3125, 0, 91.2], [0, 0, 0.8, 6.6406], [0, 0, 0, 1]])
    np.testing.assert_allclose(scan.affine, expected, atol=1e-6)
    assert scan.metadata["modality"] == "MR"
    assert "CompressedSamples" not in repr(scan.metadata) and "4MR1" not in repr(scan.metadata)


def test_truncated_bundled_file_fails_as_one_clean_scan_error(pydicom_mr_files, tmp_path):
    shutil.copy(pydicom_mr_files["MR_truncated.dcm"], tmp_path / "x.dcm")
    fac.write_series(tmp_path / "good", fac.AXIAL, 1)
    refs, _ = discover([tmp_path])
    outcomes = []
    for ref in refs:
        try:
            outcomes.append(read_scan(ref).shape)
        except ScanError as e:
            outcomes.append(e)
    errors = [o for o in outcomes if isinstance(o, ScanError)]
    assert (64, 64, 1) in outcomes and len(errors) == 1
    assert "x.dcm" in str(errors[0]) and "pixel data" in errors[0].reason and errors[0].stage == "read"


# --- generated series with known geometry ---------------------------------------------------------------------

GEOMETRIES = {"axial": fac.AXIAL, "sagittal": fac.SAGITTAL, "coronal": fac.CORONAL, "oblique": fac.OBLIQUE}


@pytest.mark.parametrize("order", ["sorted", "reversed", "shuffled"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_generated_series_has_the_independent_affine_and_the_marker_lands_on_its_voxel(geometry, order, tmp_path):
    g = GEOMETRIES[geometry]
    series = fac.write_series(tmp_path / "series", g, 7, file_order=order, marker=(5, 9, 4), rescale=(2.0, -3.0))
    scan = only_scan(tmp_path)
    np.testing.assert_allclose(scan.affine, g.ras_affine(), atol=1e-5)
    np.testing.assert_array_equal(scan.data, series.volume)
    marker_world = g.world(5, 9, 4)
    ijk = voxel_of(scan.affine, marker_world)
    assert ijk == (5, 9, 4)
    assert scan.data[ijk] == 2.0 * fac.MARKER_VALUE - 3.0
    assert scan.warnings == ()


def test_affine_agrees_with_nibabel_dicom_wrapper_in_plane(tmp_path):
    series = fac.write_series(tmp_path, fac.OBLIQUE, 3)
    scan = only_scan(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_file(str(series.paths[0]))
    nib_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine  # nibabel indexes (row, column); we (column, row)
    np.testing.assert_allclose(scan.affine[:3, 0], nib_ras[:3, 1], atol=1e-5)
    np.testing.assert_allclose(scan.affine[:3, 1], nib_ras[:3, 0], atol=1e-5)
    np.testing.assert_allclose(scan.affine[:3, 3], nib_ras[:3, 3], atol=1e-5)


def test_missing_slice_is_refused_with_the_gap_named(tmp_path):
    fac.write_series(tmp_path, fac.AXIAL, 8, skip=[4])
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match=r"1 missing slice\(s\): a 4.00 mm gap"):
        read_scan(refs[0])


def test_irregular_slice_spacing_is_refused(tmp_path):
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.0, 7.0, 9.0)]
    fac.write_series(tmp_path, fac.AXIAL, 5, positions=positions)
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match="irregular slice spacing"):
        read_scan(refs[0])


def test_identical_duplicate_slice_is_kept_once_with_a_warning(tmp_path):
    series = fac.write_series(tmp_path, fac.AXIAL, 5, duplicate=2, file_order="shuffled")
    scan = only_scan(tmp_path)
    np.testing.assert_array_equal(scan.data, series.volume)
    assert any("duplicate" in w for w in scan.warnings)


def test_differing_duplicate_slice_is_refused(tmp_path):
    fac.write_series(tmp_path, fac.AXIAL, 5, duplicate=2, duplicate_differs=True)
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match="two different images at the same slice position"):
        read_scan(refs[0])


def test_gantry_tilt_keeps_the_sheared_affine_and_warns(tmp_path):
    g = fac.tilted(fac.AXIAL, 15.0)
    series = fac.write_series(tmp_path, g, 6, marker=(10, 20, 5))
    scan = only_scan(tmp_path)
    np.testing.assert_allclose(scan.affine, g.ras_affine(), atol=1e-5)
    assert voxel_of(scan.affine, g.world(10, 20, 5)) == (10, 20, 5)
    np.testing.assert_array_equal(scan.data, series.volume)
    assert any("gantry tilt of 15.00 degrees" in w for w in scan.warnings)


def test_two_series_and_a_localizer_in_one_folder_give_two_scans_and_a_note(tmp_path):
    a = fac.write_series(tmp_path, fac.AXIAL, 5, series_number=2, name_prefix="A")
    b = fac.write_series(tmp_path, fac.SAGITTAL, 4, series_number=3, name_prefix="B", description="T2 SAG")
    for n, g in enumerate((fac.AXIAL, fac.SAGITTAL, fac.CORONAL)):
        fac.write_series(tmp_path, g, 1, series_number=1, series_uid="1.2.3.4.5.6.7.1", name_prefix=f"L{n}",
                         image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="3-plane loc", seed=n)
    refs, skipped = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["s2", "s3"]
    assert [r.series_description for r in refs] == ["T1 AX", "T2 SAG"]
    assert len(skipped) == 3 and all("localizer series s1" in s.reason for s in skipped)
    for ref, series in zip(refs, (a, b), strict=True):
        scan = read_scan(ref)
        np.testing.assert_array_equal(scan.data, series.volume)
        np.testing.assert_allclose(scan.affine, series.geometry.ras_affine(), atol=1e-5)


def test_two_echoes_in_one_series_become_two_scans(tmp_path):
    uid = "1.2.826.0.1.3680043.99.1"
    e1 = fac.write_series(tmp_path, fac.AXIAL, 4, series_uid=uid, echo_number=1, echo_time=10.0, name_prefix="X")
    e2 = fac.write_series(tmp_path, fac.AXIAL, 4, series_uid=uid, echo_number=2, echo_time=80.0, name_prefix="Y",
                          rescale=(1.0, 500.0))
    refs, _ = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["s1_e1", "s1_e2"]
    for ref, series, te in zip(refs, (e1, e2), ("10.0", "80.0"), strict=True):
        scan = read_scan(ref)
        assert scan.shape == (64, 64, 4) and scan.metadata["echo_time"] == te
        np.testing.assert_array_equal(scan.data, series.volume)


def test_repeated_acquisitions_over_the_same_slices_become_separate_scans(tmp_path):
    uid = "1.2.826.0.1.3680043.99.2"
    first = fac.write_series(tmp_path, fac.AXIAL, 4, series_uid=uid, acquisition=1, name_prefix="P")
    fac.write_series(tmp_path, fac.AXIAL, 4, series_uid=uid, acquisition=2, name_prefix="Q")
    refs, _ = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["s1_a1", "s1_a2"]
    np.testing.assert_array_equal(read_scan(refs[0]).data, first.volume)


def test_acquisition_number_per_slice_does_not_split_one_volume(tmp_path):
    uid = "1.2.826.0.1.3680043.99.3"
    for k in range(3):  # some scanners number each slice of one volume as its own acquisition
        fac.write_series(tmp_path, fac.AXIAL, 3, series_uid=uid, acquisition=k + 1, name_prefix=f"S{k}",
                         skip=[j for j in range(3) if j != k])
    refs, _ = discover([tmp_path])
    assert len(refs) == 1 and read_scan(refs[0]).shape == (64, 64, 3)


def test_single_slice_series_is_a_scan_with_one_slice(tmp_path):
    series = fac.write_series(tmp_path, fac.SAGITTAL, 1)
    scan = only_scan(tmp_path)
    assert scan.shape == (64, 64, 1) and scan.is_2d
    np.testing.assert_allclose(scan.affine, series.geometry.ras_affine(), atol=1e-5)


def test_enhanced_multiframe_two_echoes_split_sorted_and_rescaled(tmp_path):
    stacks = fac.write_enhanced(tmp_path / "enhanced.dcm", fac.OBLIQUE, 5, echo_times=(9.0, 45.0),
                                rescale=(0.5, 10.0), marker=(7, 3, 1))
    refs, _ = discover([tmp_path])
    assert len(refs) == 2 and all(len(r.frames) == 5 for r in refs)
    by_echo = {float(read_scan(r).metadata["echo_time"]): r for r in refs}
    assert sorted(by_echo) == [9.0, 45.0] and {r.scan_id for r in refs} == {"s5_e9", "s5_e45"}
    for expected in stacks:
        scan = read_scan(by_echo[expected.extra["echo_time"]])
        np.testing.assert_allclose(scan.affine, fac.OBLIQUE.ras_affine(), atol=1e-5)
        np.testing.assert_allclose(scan.data, expected.volume, rtol=1e-6)
        assert voxel_of(scan.affine, fac.OBLIQUE.world(7, 3, 1)) == (7, 3, 1)


def test_real_philips_enhanced_file_covers_the_same_world_box_as_nibabel(tmp_path):
    src = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "philips_mprage.dcm.gz"
    with gzip.open(src) as fin, open(tmp_path / "mprage", "wb") as fout:
        shutil.copyfileobj(fin, fout)
    scan = only_scan(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_file(str(tmp_path / "mprage"))

    def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        ijk = np.array([[c * (n - 1) for c, n in zip(corner, shape, strict=True)] + [1]
                        for corner in itertools.product([0, 1], repeat=3)], dtype=float)
        return np.array(sorted(map(tuple, (affine @ ijk.T).T[:, :3].round(2))))

    assert scan.shape == (256, 256, 176)
    theirs = corners(np.diag([-1.0, -1.0, 1.0, 1.0]) @ wrapper.affine, wrapper.image_shape)
    np.testing.assert_allclose(corners(scan.affine, scan.shape), theirs, atol=0.02)


def test_header_claiming_absurd_image_size_is_refused_before_decoding(tmp_path):
    ds = fac.template()
    ds.Rows, ds.Columns = 65535, 65535  # 4.3e9 voxels; the pixel data is only 8 kB
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    assert 65535 * 65535 > MAX_VOXELS
    refs, _ = discover([tmp_path])
    with pytest.raises(ScanError, match="voxel limit"):
        read_scan(refs[0])


def test_dicom_without_preamble_is_found_by_content(tmp_path):
    ds = fac.template()
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(tmp_path / "raw", ds, implicit_vr=True, little_endian=True)
    assert (tmp_path / "raw").read_bytes()[:2] == b"\x08\x00"
    scan = only_scan(tmp_path)
    assert scan.shape == (64, 64, 1)


def test_patient_identifiers_never_reach_ids_or_metadata(tmp_path):
    fac.write_series(tmp_path / "exam", fac.AXIAL, 3)
    scan = only_scan(tmp_path)
    text = repr((scan.scan_id, scan.source, scan.metadata, scan.warnings))
    assert fac.PATIENT_NAME.split("^")[0] not in text and fac.PATIENT_ID not in text and "1970" not in text
    assert scan.scan_id == "exam__s1" and scan.source == "exam"


# --- files dropped from a series, and MOSAIC files -------------------------------------------------------------

def _filtered(root: Path):  # type: ignore[no-untyped-def]
    """What explain keeps of ``root`` and what it skips, as {path: reason}, under the default filters."""
    from mri_lrp.scans.filters import ScanFilter, apply_filter

    refs, skipped = discover([root])
    kept, filtered = apply_filter(refs, ScanFilter())
    return kept, {s.path: s.reason for s in [*skipped, *filtered]}


def test_a_screenshot_filed_under_an_mr_series_is_skipped_by_its_own_file_name(tmp_path):
    series = fac.write_series(tmp_path / "series", fac.AXIAL, 6, rows=16, cols=16)
    shot = fac.write_screenshot(tmp_path / "series" / "IM_screenshot", series)
    kept, reasons = _filtered(tmp_path)
    assert list(reasons) == [str(shot)]
    assert reasons[str(shot)].startswith("derived image (ImageType DERIVED")
    (ref,) = kept
    assert str(shot) not in ref.paths
    np.testing.assert_array_equal(read_scan(ref).data, series.volume)


def test_skipped_csv_of_a_run_names_the_screenshot_file_dropped_from_a_series(tmp_path):
    from typer.testing import CliRunner

    from mri_lrp.cli import app
    from mri_lrp.outputs import read_csv

    # large enough a field of view for the demo model to explain it (a thumbnail would fail as too small)
    series = fac.write_series(tmp_path / "scans" / "series", fac.AXIAL, 12, rows=64, cols=64)
    shot = fac.write_screenshot(tmp_path / "scans" / "series" / "IM_screenshot", series)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "scans"), "--out", str(out), "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    assert [(r["path"], r["reason"][:13]) for r in read_csv(out / "skipped.csv")] == [(str(shot), "derived image")]


@pytest.mark.parametrize(("how", "says"), [
    ("image_type", "ImageType MOSAIC"),
    ("mr_header", "(0019,100A) NumberOfImagesInMosaic 36"),
    ("csa", "CSA header NumberOfImagesInMosaic 48"),
])
def test_a_siemens_mosaic_series_is_skipped_as_a_mosaic_not_as_a_pilot(tmp_path, how: str, says: str) -> None:
    if how == "csa" and fac.siemens_csa_image_header() is None:
        pytest.skip("nibabel's Siemens test file is not installed")
    mosaic = fac.write_series(tmp_path / "dwi", fac.AXIAL, 2, rows=32, cols=32, description="ep2d_diff_mosaic")
    fac.mark_mosaic(mosaic, how)
    plain = fac.write_series(tmp_path / "t1", fac.AXIAL, 2, rows=32, cols=32, description="T1 two slices")
    kept, reasons = _filtered(tmp_path)
    assert not kept
    assert reasons[str(tmp_path / "dwi")] == (f"Siemens MOSAIC image ({says}: many slices tiled in one image), "
                                              "which is not read: convert the series to NIfTI first (e.g. with "
                                              "dcm2niix)")
    assert "2 slices: a pilot" in reasons[str(plain.folder)]
    refs, _ = discover([tmp_path / "dwi"])
    with pytest.raises(ScanError, match=r"Siemens MOSAIC images \(" + re.escape(says)):
        read_scan(refs[0])
