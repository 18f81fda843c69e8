"""The relevance volume as viewers and pipelines read it: codes and affine of the source, intent, description,
display window, the JSON sidecar; and standard gzip from the fast compressor."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp.outputs import NiftiMeta, save_nifti

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"


def test_saved_volume_reads_back_with_its_codes_intent_description_and_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((7, 6, 5)).astype(np.float32)
    affine = np.array([[-1.2, 0, 0, 30], [0, 0.9, 0.1, -20], [0, -0.1, 0.9, 10], [0, 0, 0, 1]])
    meta = NiftiMeta(qform_code=1, sform_code=4, intent="estimate", intent_name="LRP relevance",
                     descrip="LRP rule alphabeta alpha=2 beta=1, init prob " + "x" * 100, cal=(-0.5, 0.5))
    path = tmp_path / "r.nii.gz"
    save_nifti(path, data, affine, meta)

    assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")  # plain gzip around a NIfTI-1
    img = nib.load(path)
    header = img.header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 4
    assert np.allclose(img.affine, affine, atol=1e-6)
    assert header.get_intent()[0] == "estimate" and header.get_intent()[2] == "LRP relevance"
    descrip = header["descrip"].item()
    assert descrip.startswith(b"LRP rule alphabeta alpha=2 beta=1") and len(descrip) <= 80
    assert (float(header["cal_min"]), float(header["cal_max"])) == (-0.5, 0.5)
    assert np.array_equal(np.asarray(img.dataobj), data)


def test_uncompressed_name_is_written_uncompressed(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    save_nifti(tmp_path / "r.nii", data, np.eye(4))
    assert (tmp_path / "r.nii").read_bytes()[:4] == (348).to_bytes(4, "little")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "r.nii").dataobj), data)


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run over a NIfTI source whose sform is coded MNI (4) and qform scanner (1), with its mask, and a
    DICOM series: the sample model, default rule."""
    root = tmp_path_factory.mktemp("nifti_conventions")
    scans = root / "scans"
    scans.mkdir()
    src = nib.load(SAMPLES / "sub-02_T1w.nii.gz")
    img = nib.Nifti1Image(np.asarray(src.dataobj), src.affine, src.header)
    img.set_sform(src.affine, code=4)
    img.set_qform(src.affine, code=1)
    nib.save(img, scans / "sub-02_T1w.nii.gz")
    series = sorted(p for p in (SAMPLES / "dicom").iterdir() if p.is_dir())[0]
    shutil.copytree(series, scans / series.name)
    out = root / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(scans), "--out", str(out),
                          "--masks", str(SAMPLES / "masks"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def test_relevance_keeps_the_source_codes_and_affine_and_says_what_it_is(explained: Path) -> None:
    source = nib.load(explained.parent / "scans" / "sub-02_T1w.nii.gz")
    rel = nib.load(explained / "scans" / "sub-02_T1w" / "relevance.nii.gz")
    header = rel.header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 4)
    assert np.allclose(rel.affine, source.affine, atol=1e-5)
    assert header.get_intent()[0] == "estimate"
    assert b"alphabeta" in header["descrip"].item()
    cal_min, cal_max = float(header["cal_min"]), float(header["cal_max"])
    assert cal_max > 0 and cal_min == -cal_max
    data = np.asarray(rel.dataobj)
    assert np.abs(data).max() >= cal_max  # the window clips the brightest voxels, as the overlay does


def test_dicom_relevance_is_coded_scanner(explained: Path) -> None:
    summary = list(csv.DictReader((explained / "summary.csv").open()))
    dicom = next(r for r in summary if r["kind"] == "dicom")
    header = nib.load(explained / "scans" / dicom["scan_id"] / "relevance.nii.gz").header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)


def test_sidecar_names_rule_parameters_target_classes_model_and_version(explained: Path) -> None:
    scan_dir = explained / "scans" / "sub-02_T1w"
    sidecar = json.loads((scan_dir / "relevance.json").read_text())
    manifest = json.loads((explained / "run.json").read_text())
    assert sidecar["rule"] == "alphabeta"
    assert sidecar["parameters"]["alpha"] == 2.0 and sidecar["parameters"]["beta"] == 1.0
    assert sidecar["target"] == "predicted"
    summary = {r["scan_id"]: r for r in csv.DictReader((explained / "summary.csv").open())}
    assert sidecar["class_names"] == [summary["sub-02_T1w"]["target_class"]]
    assert sidecar["model_sha256"] == manifest["checkpoint"]["sha256"]
    assert sidecar["version"]
    assert "relevance.json" in json.loads((scan_dir / "result.json").read_text())["files"]


def test_summary_has_numeric_shape_and_spacing(explained: Path) -> None:
    row = next(r for r in csv.DictReader((explained / "summary.csv").open()) if r["scan_id"] == "sub-02_T1w")
    shape = nib.load(explained.parent / "scans" / "sub-02_T1w.nii.gz").shape
    assert [int(row[f"shape_{a}"]) for a in "xyz"] == list(shape)
    zooms = nib.load(explained.parent / "scans" / "sub-02_T1w.nii.gz").header.get_zooms()
    assert [float(row[f"spacing_{a}"]) for a in "xyz"] == pytest.approx(zooms, rel=1e-5)


def test_region_sums_per_scan_and_partition_equal_the_scan_total(explained: Path) -> None:
    regions = list(csv.DictReader((explained / "regions.csv").open()))
    summary = {r["scan_id"]: float(r["relevance_sum"]) for r in csv.DictReader((explained / "summary.csv").open())}
    groups: dict[tuple[str, str, str], float] = {}
    for row in regions:
        key = (row["scan_id"], row["partition"], row.get("channel", ""))
        groups[key] = groups.get(key, 0.0) + float(row["relevance_sum"])
    assert {p for _, p, _ in groups} == {"builtin", "mask"}
    assert {s for s, _, _ in groups} == set(summary)
    for (scan_id, _, _), value in groups.items():
        assert value == pytest.approx(summary[scan_id], rel=1e-4, abs=1e-6)


def test_target_all_sidecar_names_the_class_of_every_volume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(SAMPLES / "sub-04_T1w.nii.gz"),
                          "--out", str(out), "--target", "all", "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "run.json").read_text())
    scan_dir = out / "scans" / "sub-04_T1w"
    sidecar = json.loads((scan_dir / "relevance.json").read_text())
    rel = nib.load(scan_dir / "relevance.nii.gz")
    assert sidecar["target"] == "all"
    assert sidecar["class_names"] == manifest["checkpoint"]["classes"] == list(sidecar["class_names"])
    assert rel.shape[-1] == len(sidecar["class_names"])
    cal_max = float(rel.header["cal_max"])
    assert cal_max > 0 and float(rel.header["cal_min"]) == -cal_max
