"""Discovery over messy folders: junk never crashes, ids are safe and stable, refs read in worker processes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dicom_factory as fac
import nibabel as nib
import numpy as np
import pytest

from mri_lrp.errors import ScanError
from mri_lrp.scans import Scan, ScanRef, discover, inspect_rows, iter_scans, read_scan
from mri_lrp.scans.ids import file_scan_id, make_unique, series_scan_id


def small_nifti(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), path)
    return path


def junk_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty").write_bytes(b"")
    (root / "random.bin").write_bytes(np.random.default_rng(1).bytes(5000))
    (root / "readme.txt").write_text("scanner export\n")
    (root / "looks raw").write_bytes(b"\x08\x00" + np.random.default_rng(2).bytes(300))
    (root / "DICOMDIR").write_bytes(b"\0" * 200)
    (root / "broken link").symlink_to(root / "nowhere")
    os.mkfifo(root / "a pipe")
    (root / "empty folder").mkdir()
    return root


def test_junk_folder_reports_every_file_and_never_crashes(tmp_path):
    junk_folder(tmp_path / "junk")
    refs, skipped = discover([tmp_path / "junk"])
    assert refs == []
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons == {
        "empty": "empty file",
        "random.bin": "not a DICOM or NIfTI file",
        "readme.txt": "not a DICOM or NIfTI file",
        "looks raw": "not a DICOM or NIfTI file",
        "DICOMDIR": "DICOMDIR index file (the images it lists are read directly)",
        "broken link": "broken symbolic link",
        "a pipe": "not a regular file",
    }
    rows = inspect_rows([tmp_path / "junk"])
    assert len(rows) == 7 and {r["kind"] for r in rows} == {"skipped"}


def test_missing_path_and_empty_folder_are_reported(tmp_path):
    (tmp_path / "nothing").mkdir()
    refs, skipped = discover([tmp_path / "nothing", tmp_path / "absent"])
    assert refs == [] and [s.reason for s in skipped] == ["no such file or folder"]


def test_broken_files_that_claim_to_be_scans_fail_one_by_one(tmp_path, pydicom_mr_files):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "garbage.dcm").write_bytes(np.random.default_rng(3).bytes(400))
    dicm = bytearray(pydicom_mr_files["MR_small.dcm"].read_bytes()[:300])
    (tmp_path / "cut_header").write_bytes(bytes(dicm))
    small_nifti(tmp_path / "good.nii")
    results = list(iter_scans([tmp_path]))
    scans = [r for r in results if isinstance(r, Scan)]
    errors = [r for r in results if isinstance(r, ScanError)]
    assert [s.scan_id for s in scans] == ["good"]
    assert all("\n" not in str(e) and e.stage == "read" for e in errors)
    reasons = {Path(e.path).name: e.reason for e in errors}
    assert set(reasons) == {"empty.nii.gz", "garbage.dcm", "cut_header"}
    assert "truncated" in reasons["cut_header"] and "not a readable NIfTI" in reasons["empty.nii.gz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_files_are_reported_not_raised(tmp_path):
    small_nifti(tmp_path / "locked.nii")
    (tmp_path / "locked.nii").chmod(0)
    (tmp_path / "locked_dicom").write_bytes(b"x" * 200)
    (tmp_path / "locked_dicom").chmod(0)
    refs, skipped = discover([tmp_path])
    assert [s.reason for s in skipped] == ["cannot open: Permission denied"]
    with pytest.raises(ScanError, match="Permission denied|not a readable"):
        read_scan(refs[0])


def test_odd_names_give_safe_unique_stable_ids(tmp_path):
    small_nifti(tmp_path / "sub 01" / "anat" / "T1w ü (copy).nii.gz")
    small_nifti(tmp_path / "sub 01" / "anat" / "T1w ü (copy).nii")
    small_nifti(tmp_path / ".hidden.nii")
    fac.write_series(tmp_path / "dicom export" / "séries", fac.AXIAL, 3, series_number=7)
    refs, skipped = discover([tmp_path])
    ids = [r.scan_id for r in refs]
    assert not skipped
    assert ids == ["_hidden", "dicom_export__s_ries__s7", "sub_01__anat__T1w____copy_",
                   "sub_01__anat__T1w____copy__2"]
    assert all(set(i) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for i in ids)
    assert discover([tmp_path])[0] == refs
    for ref in refs:
        assert read_scan(ref).scan_id == ref.scan_id


def test_scan_id_rules():
    assert file_scan_id("a/b/T1.NII.GZ") == "a__b__T1"
    assert file_scan_id("x.nii") == "x"
    assert series_scan_id(".", "s3") == "s3"
    assert series_scan_id("p1/study", "s3_e2") == "p1__study__s3_e2"
    assert make_unique(["a", "a", "a_2", "b", "a"]) == ["a", "a_3", "a_2", "b", "a_4"]
    long_id = file_scan_id("/".join(["folder"] * 40) + "/x.nii")
    assert len(long_id) <= 150 and long_id != file_scan_id("/".join(["folder"] * 41) + "/x.nii")


def test_file_given_directly_uses_its_parent_as_root_and_files_of_one_series_group(tmp_path):
    series = fac.write_series(tmp_path / "exam", fac.AXIAL, 4)
    path = small_nifti(tmp_path / "exam" / "brain.nii.gz")
    refs, _ = discover([path, *series.paths])
    assert [r.scan_id for r in refs] == ["brain", "s1"]
    assert len(refs[1].paths) == 4
    refs_twice, _ = discover([tmp_path / "exam", *series.paths])
    assert [r.scan_id for r in refs_twice] == ["s1", "brain"]  # sorted by source: the series' folder is "."
    assert refs_twice[0].paths == refs[1].paths


def test_same_series_number_in_one_folder_gets_a_hash_suffix(tmp_path):
    fac.write_series(tmp_path, fac.AXIAL, 3, series_number=4, name_prefix="A", series_uid="1.2.3.1")
    fac.write_series(tmp_path, fac.AXIAL, 3, series_number=4, name_prefix="B", series_uid="1.2.3.2")
    refs, _ = discover([tmp_path])
    ids = [r.scan_id for r in refs]
    assert len(set(ids)) == 2 and all(i.startswith("s4_") and len(i) == 9 for i in ids)


def _read_in_worker(ref: ScanRef) -> tuple[str, tuple[int, int, int], float]:
    scan = read_scan(ref)
    return scan.scan_id, scan.shape, float(scan.data.sum())


def test_refs_pickle_and_read_the_same_in_a_worker_process(tmp_path, nibabel_data):
    fac.write_series(tmp_path / "d", fac.OBLIQUE, 5, file_order="shuffled")
    shutil.copy(nibabel_data / "anatomical.nii", tmp_path)
    refs, _ = discover([tmp_path])
    assert pickle.loads(pickle.dumps(refs)) == refs
    local = [_read_in_worker(r) for r in refs]
    with ProcessPoolExecutor(max_workers=2) as pool:
        remote = list(pool.map(_read_in_worker, refs))
    assert remote == local


def test_inspect_rows_describe_scans_errors_and_skips_as_json(tmp_path, nibabel_data):
    shutil.copy(nibabel_data / "anatomical.nii", tmp_path)
    fac.write_series(tmp_path / "dcm", fac.SAGITTAL, 4, description="T2 SAG")
    fac.write_series(tmp_path / "gap", fac.AXIAL, 5, skip=[2])
    (tmp_path / "notes.txt").write_text("hello")
    rows = inspect_rows([tmp_path])
    json.dumps(rows)
    by_id = {r["scan_id"]: r for r in rows}
    assert by_id["anatomical"]["orientation"] == "LAS" and by_id["anatomical"]["shape"] == [33, 41, 25]
    assert by_id["anatomical"]["spacing"] == [2.0, 2.0, 2.0] and by_id["anatomical"]["status"] == "ok"
    dcm = by_id["dcm__s1"]
    assert dcm["kind"] == "dicom" and dcm["series_description"] == "T2 SAG" and dcm["shape"] == [64, 64, 4]
    assert dcm["orientation"] == "PIR"  # columns go posterior (+y LPS = P), rows go inferior, slices right
    gap = by_id["gap__s1"]
    assert gap["kind"] == "error" and "missing slice" in gap["problems"][0] and gap["status"] == "error"
    skipped = [r for r in rows if r["kind"] == "skipped"]
    assert [Path(r["source"]).name for r in skipped] == ["notes.txt"]


def test_permission_denied_on_an_unclaimed_file_is_a_skip_note_even_as_root(tmp_path, monkeypatch):
    (tmp_path / "locked").write_bytes(b"x" * 200)
    real_open = open

    def denying_open(path, *args, **kwargs):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(sys.modules["mri_lrp.scans.discover"], "open", denying_open, raising=False)
    refs, skipped = discover([tmp_path])
    assert refs == [] and [s.reason for s in skipped] == ["cannot open: Permission denied"]


def test_nifti_label_images_are_skipped_as_masks_not_scans(tmp_path: Path) -> None:
    scan = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    mask.header.set_intent("label")
    nib.save(scan, tmp_path / "t1.nii.gz")
    nib.save(mask, tmp_path / "t1_mask.nii.gz")
    refs, skipped = discover([tmp_path])
    assert [r.source for r in refs] == ["t1.nii.gz"]
    assert [s.reason for s in skipped] == ["NIfTI label image (intent 'label'): a mask or atlas, not a scan"]
