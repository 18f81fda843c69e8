"""`--layout bids`: BIDS names from the source's entities, collisions resolved in the label, a derivative dataset
that resumes and merges like the flat layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mri_lrp.errors import SettingsError
from mri_lrp.pipeline.layout import Layout, parse_bids_name

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize(("source", "entities", "suffix", "folder"), [
    ("sub-01/anat/sub-01_T1w.nii.gz", (("sub", "01"),), "T1w", "sub-01/anat"),
    ("sub-01/ses-2/anat/sub-01_ses-2_ce-gad_run-1_T1w.nii.gz",
     (("sub", "01"), ("ses", "2"), ("ce", "gad"), ("run", "1")), "T1w", "sub-01/ses-2/anat"),
    ("sub-7_FLAIR.nii", (("sub", "7"),), "FLAIR", "sub-7/anat"),
    ("sub-03/ses-b/dicom/series_4", (("sub", "03"), ("ses", "b")), "", "sub-03/ses-b/anat"),
    ("sub-04/dwi/sub-04_dwi.nii.gz", (("sub", "04"),), "dwi", "sub-04/dwi"),
])
def test_bids_entities_come_from_the_file_name_then_its_folders(source: str, entities: tuple, suffix: str,
                                                              folder: str) -> None:
    name = parse_bids_name(source)
    assert name is not None
    assert name.entities == entities
    assert name.suffix == suffix
    assert str(name.folder) == folder


@pytest.mark.parametrize("source", ["scan.nii.gz", "patients/p1/t1.nii.gz", "dicom/series_3", "subject-1_T1w.nii"])
def test_a_source_without_a_subject_has_no_bids_name(source: str) -> None:
    assert parse_bids_name(source) is None


def test_the_flat_layout_keeps_every_file_in_the_scan_folder(tmp_path: Path) -> None:
    files = Layout.plan("flat", [("a", "a.nii.gz", None)]).files(tmp_path, "a", "a.nii.gz")
    assert files.relevance() == tmp_path / "scans/a/relevance.nii.gz"
    assert files.sidecar() == tmp_path / "scans/a/relevance.json"
    assert files.overlay() == tmp_path / "scans/a/overlay.png"
    assert files.overlay("glioma") == tmp_path / "scans/a/overlay_glioma.png"
    assert files.listed(files.relevance()) == "relevance.nii.gz"


def test_bids_names_drop_the_suffix_unless_two_sources_of_a_subject_would_collide(tmp_path: Path) -> None:
    scans = [("t1", "sub-01/anat/sub-01_T1w.nii.gz", None), ("flair", "sub-01/anat/sub-01_FLAIR.nii.gz", None),
             ("other", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", None)]
    layout = Layout.plan("bids", scans)
    t1 = layout.files(tmp_path, "t1", scans[0][1])
    flair = layout.files(tmp_path, "flair", scans[1][1])
    other = layout.files(tmp_path, "other", scans[2][1])
    assert t1.relevance() == tmp_path / "sub-01/anat/sub-01_desc-lrpT1w_relevance.nii.gz"
    assert flair.relevance() == tmp_path / "sub-01/anat/sub-01_desc-lrpFLAIR_relevance.nii.gz"
    assert other.relevance() == tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_desc-lrp_relevance.nii.gz"
    assert other.sidecar() == tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_desc-lrp_relevance.json"
    assert other.overlay() == tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_desc-lrp_overlay.png"
    assert other.overlay("no_tumour") == tmp_path / "sub-02/ses-1/anat/sub-02_ses-1_desc-lrpNotumour_overlay.png"
    # Bookkeeping stays in scans/<id>/, which lists the BIDS files relative to itself (resume reads it so).
    assert other.folder == tmp_path / "scans/other"
    assert other.listed(other.relevance()) == "../../sub-02/ses-1/anat/sub-02_ses-1_desc-lrp_relevance.nii.gz"


def test_volumes_of_one_4d_file_get_their_number_in_the_label(tmp_path: Path) -> None:
    scans = [(f"v{n}", "sub-01/anat/sub-01_T2w.nii.gz", n) for n in range(2)]
    layout = Layout.plan("bids", scans)
    names = [layout.files(tmp_path, s, src).relevance().name for s, src, _ in scans]
    assert names == ["sub-01_desc-lrpT2wVol0_relevance.nii.gz", "sub-01_desc-lrpT2wVol1_relevance.nii.gz"]


def test_bids_layout_refuses_inputs_without_a_subject_before_any_work() -> None:
    with pytest.raises(SettingsError, match="no sub-<label>.*scan.nii.gz.*--layout flat"):
        Layout.plan("bids", [("a", "sub-01_T1w.nii.gz", None), ("b", "scan.nii.gz", None)])
    with pytest.raises(SettingsError, match="same BIDS name"):
        Layout.plan("bids", [("a", "x/sub-01_T1w.nii.gz", None), ("b", "y/sub-01_T1w.nii.gz", None)])


@pytest.fixture
def bids_dataset(tmp_path: Path) -> Path:
    """A small BIDS dataset: one subject with two sequences (colliding names), one with a session."""
    ds = tmp_path / "ds"
    (ds / "sub-02" / "anat").mkdir(parents=True)
    (ds / "sub-03" / "ses-1" / "anat").mkdir(parents=True)
    shutil.copy(SAMPLES / "sub-02_T1w.nii.gz", ds / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
    shutil.copy(SAMPLES / "sub-04_T1w.nii.gz", ds / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz")
    shutil.copy(SAMPLES / "sub-03_T1w.nii.gz", ds / "sub-03" / "ses-1" / "anat" / "sub-03_ses-1_T1w.nii.gz")
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    return ds


EXPECTED_BIDS_FILES = {
    "sub-02/anat/sub-02_desc-lrpT1w_relevance.nii.gz", "sub-02/anat/sub-02_desc-lrpT1w_relevance.json",
    "sub-02/anat/sub-02_desc-lrpT1w_overlay.png", "sub-02/anat/sub-02_desc-lrpFLAIR_relevance.nii.gz",
    "sub-02/anat/sub-02_desc-lrpFLAIR_relevance.json", "sub-02/anat/sub-02_desc-lrpFLAIR_overlay.png",
    "sub-03/ses-1/anat/sub-03_ses-1_desc-lrp_relevance.nii.gz",
    "sub-03/ses-1/anat/sub-03_ses-1_desc-lrp_relevance.json", "sub-03/ses-1/anat/sub-03_ses-1_desc-lrp_overlay.png",
}


def bids_files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.glob("sub-*/**/*") if p.is_file()}


def test_a_bids_run_writes_a_derivative_dataset_and_resumes_from_it(bids_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("explain", str(bids_dataset), "--layout", "bids", "--out", str(out), "--workers", "0")
    assert res.returncode == 0, res.stderr
    assert bids_files(out) == EXPECTED_BIDS_FILES
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "mri-lrp" and description["BIDSVersion"]
    ignored = (out / ".bidsignore").read_text().split()
    assert {"*.csv", "run.json", "scans/", "report.html", "report/"} <= set(ignored)
    assert "desc-lrp" in (out / "README").read_text()
    # The scan-grid volumes live in the BIDS tree; scans/ keeps only bookkeeping (the cohort's model-grid copy)
    assert {p.name for p in out.glob("scans/*/*.nii.gz")} == {"model_relevance.nii.gz"}
    assert not list(out.glob("scans/*/*.png"))
    summary = (out / "summary.csv").read_text()
    assert summary.count("\n") == 4  # header + three scans
    assert (out / "report.html").is_file()

    lost = out / "sub-03/ses-1/anat/sub-03_ses-1_desc-lrp_overlay.png"
    lost.unlink()  # a file lost from the BIDS tree redoes its scan, and only that one
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("sub-02/**/*") if p.is_file()}
    again = run_cli("explain", str(bids_dataset), "--layout", "bids", "--out", str(out), "--workers", "0")
    assert again.returncode == 0, again.stderr
    assert "resumed 2" in again.stderr + again.stdout
    assert bids_files(out) == EXPECTED_BIDS_FILES
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bids_layout_on_non_bids_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLES / "sub-02_T1w.nii.gz", scans / "patient_a.nii.gz")
    res = run_cli("explain", str(scans), "--layout", "bids", "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "--layout bids" in res.stderr and "patient_a.nii.gz" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_bids_shards_merge_into_one_derivative_dataset(bids_dataset: Path, tmp_path: Path) -> None:
    parts = []
    for index in range(2):
        part = tmp_path / f"shard{index}"
        res = run_cli("explain", str(bids_dataset), "--layout", "bids", "--shard", f"{index}/2", "--out", str(part),
                      "--workers", "0")
        assert res.returncode == 0, res.stderr
        parts.append(str(part))
    merged = tmp_path / "merged"
    res = run_cli("merge", *parts, "--out", str(merged))
    assert res.returncode == 0, res.stdout + res.stderr
    assert bids_files(merged) == EXPECTED_BIDS_FILES
    assert json.loads((merged / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert (merged / ".bidsignore").is_file() and (merged / "report.html").is_file()


VALIDATOR = ROOT / "tests" / "browser" / "node_modules" / ".bin" / "bids-validator"
#: What the validator (1.x, no derivative rules) is expected to say of a derivative dataset, and nothing else:
#: desc-lrp names are no raw-data names, so no subject holds "valid" raw data.
EXPECTED_VALIDATOR_ERRORS = {"NOT_INCLUDED", "NO_VALID_DATA_FOUND_FOR_SUBJECT"}


@pytest.mark.slow
@pytest.mark.skipif(not VALIDATOR.is_file(), reason="bids-validator is not installed in tests/browser "
                    "(make browser-deps)")
def test_the_bids_validator_finds_nothing_but_derivative_names(bids_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("explain", str(bids_dataset), "--layout", "bids", "--out", str(out), "--workers", "0")
    assert res.returncode == 0, res.stderr
    checked = subprocess.run([str(VALIDATOR), "--json", str(out)], capture_output=True, text=True, timeout=300)
    issues = json.loads(checked.stdout)["issues"]
    errors = {issue["key"]: issue for issue in issues["errors"]}
    assert set(errors) == EXPECTED_VALIDATOR_ERRORS, {k: v["reason"] for k, v in errors.items()}
    flagged = {f["file"]["relativePath"].lstrip("/") for f in errors["NOT_INCLUDED"]["files"]}
    assert flagged == EXPECTED_BIDS_FILES  # only the derivative files; the tables and report are .bidsignored
    warnings = {issue["key"] for issue in issues["warnings"]}
    assert warnings <= {"NO_AUTHORS"}, warnings  # authors are the user's to add
