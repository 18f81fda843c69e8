"""Which inputs a run explains: modality, globs, series names, derived and pilot images, BIDS derivatives;
and the DICOM facts that join a result back to the PACS."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import AXIAL, CORONAL, PATIENT_ID, PATIENT_NAME, SAGITTAL, write_series

from mri_lrp.errors import SettingsError
from mri_lrp.pipeline import run_explain
from mri_lrp.progress import Reporter
from mri_lrp.scans import discover
from mri_lrp.scans.filters import ScanFilter, apply_filter
from mri_lrp.settings import build_settings


def retag(paths: list[Path], **tags: object) -> None:
    """Rewrite header tags of generated files (e.g. another modality), as a PACS export would have them."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)


def pacs_export(root: Path) -> Path:
    """One study as a PACS exports it: a T1 MR series, a CT, a chest radiograph, a tri-plane pilot without
    'localizer' in its name, and a derived MR reformat."""
    mr = write_series(root / "study" / "mr", n_slices=12, series_number=3, description="T1 AX")
    retag(mr.paths, ProtocolName="t1_mprage_ax")
    ct = write_series(root / "study" / "ct", n_slices=6, series_number=2, description="HEAD CT")
    retag(ct.paths, Modality="CT")
    cr = write_series(root / "study" / "cr", n_slices=1, series_number=9, description="CHEST PA")
    retag(cr.paths, Modality="CR", ImageOrientationPatient=None, ImagePositionPatient=None)
    for geometry, n in ((AXIAL, 0), (SAGITTAL, 1), (CORONAL, 2)):
        write_series(root / "study" / "pilot", geometry, n_slices=1, series_number=1, description="tripilot",
                     series_uid="1.2.826.0.1.3680043.8.498.1", name_prefix=f"P{n}_")
    write_series(root / "study" / "mpr", n_slices=6, series_number=4, description="T1 MPR COR",
                 image_type=("DERIVED", "SECONDARY", "MPR"))
    return root


def test_mixed_pacs_folder_exits_0_with_only_mr_explained_and_the_rest_listed(tmp_path: Path) -> None:
    root, out = pacs_export(tmp_path / "export"), tmp_path / "out"
    log = io.StringIO()
    settings = build_settings({"scans": [str(root)], "out": str(out), "workers": 0, "keep_uids": True})
    code = run_explain(settings, Reporter(tty=False, stream=log))
    assert code == 0, log.getvalue()
    with (out / "summary.csv").open(newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["scan_id"] for r in summary] == ["study__mr__s3"]
    row = summary[0]
    assert (row["modality"], row["series_description"], row["series_number"], row["protocol"]) == \
        ("MR", "T1 AX", "3", "t1_mprage_ax")
    ds = pydicom.dcmread(next((root / "study" / "mr").iterdir()))
    assert (row["study_uid"], row["series_uid"]) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)

    manifest = json.loads((out / "run.json").read_text())
    reasons = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert reasons[str(root / "study" / "ct")].startswith("modality CT, not MR")
    assert reasons[str(root / "study" / "cr")].startswith("modality CR, not MR")
    assert reasons[str(root / "study" / "mpr")].startswith("derived image")
    # the pilot's three images are one series split by orientation: each is named by its own file
    pilots = {item["path"]: item["reason"] for item in manifest["skipped"]
              if Path(item["path"]).parent == root / "study" / "pilot"}
    assert sorted(Path(p).name for p in pilots) == ["P0_00000", "P1_00000", "P2_00000"]
    assert all("1 slice: a pilot or a single image" in r for r in pilots.values())
    assert manifest["counts"]["failed"] == 0
    text = log.getvalue()
    for folder in ("ct", "cr", "mpr"):
        assert f"skipped {root / 'study' / folder}: " in text
    assert all(f"skipped {path}: " in text for path in pilots)
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".csv", ".json"))
    assert PATIENT_NAME not in written and PATIENT_ID not in written and "19700101" not in written


def test_uids_are_not_in_the_tables_unless_asked(tmp_path: Path) -> None:
    from mri_lrp.pipeline.write import ScanWriter

    writer = ScanWriter(tmp_path, build_settings({"scans": [str(tmp_path)]}), ["a", "b"], 3, "f")
    facts = {"modality": "MR", "series_uid": "1.2.3", "study_uid": "1.2", "series_number": "3"}
    assert set(writer._join_columns(facts)) == {"modality", "series_description", "series_number", "protocol"}


def test_other_modalities_pass_when_asked_and_nifti_always_passes(tmp_path: Path) -> None:
    root = pacs_export(tmp_path / "export")
    refs, _ = discover([root])
    kept, _ = apply_filter(refs, ScanFilter(modality="MR,CT"))
    assert sorted(r.source for r in kept) == ["study/ct", "study/mr"]
    kept, skipped = apply_filter(refs, ScanFilter(modality="any", keep_derived=True))
    assert len(kept) == len(refs) and not skipped  # the CR then fails when read, as it should: no geometry
    refs, _ = discover([Path(__file__).resolve().parents[1] / "sample_scans" / "t1" / "sub-02_T1w.nii.gz"])
    assert apply_filter(refs, ScanFilter(modality="CT"))[0] == refs


def test_single_slices_are_kept_for_a_slice_model(tmp_path: Path) -> None:
    write_series(tmp_path / "one", n_slices=1)
    refs, _ = discover([tmp_path])
    assert apply_filter(refs, ScanFilter())[0] == []
    assert apply_filter(refs, ScanFilter(volume_model=False))[0] == refs


def test_include_and_exclude_globs_match_paths_relative_to_the_root(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1:3, 1:3, 1:3] = 1
    import nibabel as nib

    for rel in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_FLAIR.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz",
                "extra/old_T1w.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / rel)
    refs, _ = discover([tmp_path])

    def sources(f: ScanFilter) -> list[str]:
        return [r.source for r in apply_filter(refs, f)[0]]

    assert sources(ScanFilter(include=("sub-*/anat/*T1w*",))) == ["sub-01/anat/sub-01_T1w.nii.gz",
                                                                 "sub-02/anat/sub-02_T1w.nii.gz"]
    assert sources(ScanFilter(exclude=("extra",))) == [s for s in sources(ScanFilter()) if not s.startswith("extra")]
    assert sources(ScanFilter(include=("*T1w*",), exclude=("sub-02",))) == ["extra/old_T1w.nii.gz",
                                                                          "sub-01/anat/sub-01_T1w.nii.gz"]
    skipped = apply_filter(refs, ScanFilter(exclude=("extra/*",)))[1]
    assert [s.reason for s in skipped] == ["matched by --exclude extra/*"]
    assert sources(ScanFilter(series="flair")) == ["sub-01/anat/sub-01_FLAIR.nii.gz"]


def test_series_regex_matches_the_series_description(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n_slices=4, series_number=1, description="t1_mprage_sag")
    write_series(tmp_path / "b", n_slices=4, series_number=2, description="t2_tse_tra")
    refs, _ = discover([tmp_path])
    kept, skipped = apply_filter(refs, ScanFilter(series="MPRAGE|T1"))
    assert [r.series_description for r in kept] == ["t1_mprage_sag"]
    assert skipped[0].reason == "SeriesDescription 't2_tse_tra' does not match --series MPRAGE|T1"
    with pytest.raises(SettingsError, match="--series"):
        build_settings({"scans": [str(tmp_path)], "series": "T1("})


def test_bids_derivatives_are_not_walked_unless_asked(tmp_path: Path) -> None:
    import nibabel as nib

    arr = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    (tmp_path / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}')
    for rel in ("sub-01/anat/sub-01_T1w.nii.gz", "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / rel)
    refs, skipped = discover([tmp_path])
    assert [r.source for r in refs] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert any(s.path == str(tmp_path / "derivatives") and "--derivatives" in s.reason for s in skipped)
    refs, _ = discover([tmp_path], derivatives=True)
    assert len(refs) == 2


def test_inspect_shows_each_series_modality(tmp_path: Path) -> None:
    from mri_lrp.scans import inspect_rows

    root = pacs_export(tmp_path / "export")
    by_source = {Path(r["source"]).name: r["modality"] for r in inspect_rows([root]) if r["kind"] != "skipped"}
    assert by_source["mr"] == "MR" and by_source["ct"] == "CT" and by_source["cr"] == "CR"
