"""`mri-lrp explain` end to end, as a user runs it: real files in, every output file out, exit codes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"
SUMMARY_SPEC = ["scan_id", "source", "kind", "shape", "spacing_mm", "predicted_class", "predicted_prob",
                "target_class", "target_prob", "output_relevance", "relevance_sum", "conservation_error",
                "top_region", "status", "seconds"]
REGION_SPEC = ["scan_id", "region_id", "region_name", "voxels", "volume_ml", "relevance_sum", "relevance_pos",
               "relevance_neg", "relevance_fraction", "relevance_density"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    """Three sample NIfTI volumes and one sample DICOM series, copied so tests can add junk beside them."""
    d = tmp_path / "scans"
    d.mkdir()
    for p in sorted(SAMPLES.glob("*.nii.gz"))[:3]:
        shutil.copy(p, d / p.name)
    series = sorted(p for p in (SAMPLES / "dicom").iterdir() if p.is_dir())[0]
    shutil.copytree(series, d / "dicom" / series.name)
    return d


def assert_same_rows(got: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    """Equal tables, numbers to float32 rounding (batches may differ between runs), timings aside."""
    assert [r["scan_id"] for r in got] == [r["scan_id"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "seconds":
                continue
            try:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
            except ValueError:
                assert a[key] == b[key], key


def test_explain_writes_every_output_with_spec_columns_and_input_geometry(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("explain", str(small_set), "--rule", "alphabeta", "--alpha", "2", "--beta", "1",
                  "--out", str(out), "--masks", str(SAMPLES / "masks"))
    assert res.returncode == 0, res.stderr
    summary = read_rows(out / "summary.csv")
    assert len(summary) == 4
    assert set(SUMMARY_SPEC) <= set(summary[0])
    regions = read_rows(out / "regions.csv")
    assert set(REGION_SPEC) <= set(regions[0])
    assert read_rows(out / "failures.csv") == []
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["counts"]["done"] == 4 and len(manifest["checkpoint"]["sha256"]) == 64
    for row in summary:
        scan_dir = out / "scans" / row["scan_id"]
        for name in ("overlay.png", "relevance.nii.gz", "regions.csv"):
            assert (scan_dir / name).is_file(), (row["scan_id"], name)
        assert (scan_dir / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rel = nib.load(scan_dir / "relevance.nii.gz")
        if row["kind"] == "nifti":
            src = nib.load(small_set / row["source"])
            assert rel.shape == src.shape
            np.testing.assert_allclose(rel.affine, src.affine, atol=1e-4)
        total = float(np.asarray(rel.dataobj, dtype=np.float64).sum())
        assert total == pytest.approx(float(row["relevance_sum"]), rel=1e-3, abs=1e-6)
        assert abs(float(row["conservation_error"])) < 0.05
        own = [r for r in regions if r["scan_id"] == row["scan_id"]]
        assert own == read_rows(scan_dir / "regions.csv")


def test_a_bad_file_costs_one_failure_row_and_exit_3(small_set: Path, tmp_path: Path) -> None:
    (small_set / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (small_set / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    res = run_cli("explain", str(small_set), "--out", str(out))
    assert res.returncode == 3, res.stderr
    failures = read_rows(out / "failures.csv")
    assert [f["source"] for f in failures] == ["broken.nii.gz"]
    assert failures[0]["stage"] and failures[0]["error"]
    assert len(read_rows(out / "summary.csv")) == 4
    assert "Traceback" not in res.stderr


def test_resume_touches_nothing_and_a_rule_change_redoes(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("explain", str(small_set), "--out", str(out)).returncode == 0
    files = sorted((out / "scans").rglob("*.*"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = run_cli("explain", str(small_set), "--out", str(out))
    assert again.returncode == 0
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert "4 scans already done" in again.stdout
    changed = run_cli("explain", str(small_set), "--out", str(out), "--rule", "epsilon")
    assert changed.returncode == 0
    assert all(p.stat().st_mtime_ns != before[p] for p in files if p.name == "relevance.nii.gz")


def test_non_tty_run_prints_plain_timestamped_lines(small_set: Path, tmp_path: Path) -> None:
    res = run_cli("explain", str(small_set), "--out", str(tmp_path / "out"))
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines and all(ln[:4].isdigit() and ln[4] == "-" for ln in lines)
    assert "\x1b[" not in res.stdout


def test_a_folder_without_scans_exits_4(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    res = run_cli("explain", str(empty), "--out", str(tmp_path / "out"))
    assert res.returncode == 4, res.stderr


@pytest.mark.parametrize("args, message", [
    (["--beta", "-1"], "--beta"),
    (["--rule", "magic"], "unknown rule"),
    (["--checkpoint", "/nonexistent.pt"], "not found"),
])
def test_usage_mistakes_exit_2_with_one_line(small_set: Path, tmp_path: Path, args: list[str], message: str) -> None:
    res = run_cli("explain", str(small_set), "--out", str(tmp_path / "out"), *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_garbage_checkpoint_exits_2(small_set: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    res = run_cli("explain", str(small_set), "--checkpoint", str(bad), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "model.pt" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run_cli("explain", str(SAMPLES), "--out", str(clean), "--workers", "1").returncode in (0, 3)
    proc = subprocess.Popen([sys.executable, "-m", "mri_lrp.cli", "explain", str(SAMPLES), "--out", str(killed),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("scans/*/result.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.csv").exists() or len(read_rows(killed / "summary.csv")) < 14
    assert run_cli("explain", str(SAMPLES), "--out", str(killed), "--workers", "1").returncode in (0, 3)
    assert_same_rows(read_rows(killed / "summary.csv"), read_rows(clean / "summary.csv"))
    assert_same_rows(read_rows(killed / "regions.csv"), read_rows(clean / "regions.csv"))
    for rel in clean.glob("scans/*/relevance.nii.gz"):
        other = killed / rel.relative_to(clean)
        np.testing.assert_allclose(np.asarray(nib.load(other).dataobj), np.asarray(nib.load(rel).dataobj),
                                   rtol=1e-4, atol=1e-7)
    leftovers = [p for p in killed.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert len(leftovers) <= 2  # at most the files being written at the kill; never under a final name


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_keeps_finished_scans(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mri_lrp.cli", "explain", str(SAMPLES), "--out", str(out),
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("scans/*/result.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    done = read_rows(out / "summary.csv")
    assert 1 <= len(done) < 14
    assert json.loads((out / "run.json").read_text())["interrupted"] == "SIGTERM"


def _checkpoint(path: Path, architecture: str, dims: int, shape: tuple[int, ...]) -> Path:
    import torch

    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.model.zoo import build_model

    torch.manual_seed(0)
    net = build_model(architecture, num_classes=3, width=4, depth=2)
    save_checkpoint(path, net, architecture=architecture, kwargs={"num_classes": 3, "width": 4, "depth": 2},
                    class_names=["a", "b", "c"],
                    input_spec=InputSpec(dims=dims, shape=shape, spacing=(6.0,) * dims))
    return path


def test_a_slice_model_explains_every_slice_and_stacks_them_into_the_volume(small_set: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "slices.pt", "cnn2d", 2, (32, 32))
    out = tmp_path / "out"
    res = run_cli("explain", str(small_set), "--checkpoint", str(ckpt), "--out", str(out), "--workers", "0")
    assert res.returncode == 0, res.stderr
    for row in read_rows(out / "summary.csv"):
        rel = np.asarray(nib.load(out / "scans" / row["scan_id"] / "relevance.nii.gz").dataobj)
        assert rel.shape == tuple(int(n) for n in row["shape"].split("x"))
        slices_with_relevance = int((np.abs(rel).sum(axis=(0, 1)) > 0).sum())
        assert slices_with_relevance > rel.shape[2] // 2
        assert float(row["conservation_error"]) < 0.05  # empty background slices keep no relevance


def test_target_all_writes_one_relevance_volume_and_overlay_per_class(small_set: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "vol.pt", "cnn3d", 3, (32, 32, 32))
    out = tmp_path / "out"
    res = run_cli("explain", str(small_set), "--checkpoint", str(ckpt), "--out", str(out), "--target", "all",
                  "--workers", "0")
    assert res.returncode == 0, res.stderr
    row = read_rows(out / "summary.csv")[0]
    assert row["target_class"] == "all"
    scan_dir = out / "scans" / row["scan_id"]
    rel = nib.load(scan_dir / "relevance.nii.gz")
    assert rel.shape[3] == 3
    assert sorted(p.name for p in scan_dir.glob("overlay_*.png")) == ["overlay_a.png", "overlay_b.png",
                                                                      "overlay_c.png"]
    regions = read_rows(scan_dir / "regions.csv")
    assert {r["target_class"] for r in regions} == {"a", "b", "c"}
    every_class = float(np.asarray(rel.dataobj, dtype=np.float64).sum())
    assert float(row["relevance_sum"]) == pytest.approx(every_class, rel=1e-4)


def test_sglrp_conservation_is_measured_against_the_size_of_the_output_relevance(small_set: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = run_cli("explain", str(small_set), "--init", "sglrp", "--out", str(out), "--workers", "0")
    assert res.returncode == 0, res.stderr
    for row in read_rows(out / "summary.csv"):
        assert abs(float(row["output_relevance"])) < 1e-5  # SGLRP's output relevance sums to zero
        assert float(row["conservation_error"]) < 0.05


def test_a_named_target_class_is_explained_for_every_scan(small_set: Path, tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "vol.pt", "cnn3d", 3, (32, 32, 32))
    out = tmp_path / "out"
    assert run_cli("explain", str(small_set), "--checkpoint", str(ckpt), "--out", str(out), "--target", "b",
                   "--workers", "0").returncode == 0
    assert {r["target_class"] for r in read_rows(out / "summary.csv")} == {"b"}
    bad = run_cli("explain", str(small_set), "--checkpoint", str(ckpt), "--out", str(out), "--target", "zebra")
    assert bad.returncode == 2 and "zebra" in bad.stderr


def test_an_atlas_gives_one_row_per_label_that_adds_up_to_the_scan_total(small_set: Path, tmp_path: Path) -> None:
    nifti = sorted(small_set.glob("*.nii.gz"))[0]
    src = nib.load(nifti)
    labels = np.zeros(src.shape, np.int16)
    labels[: src.shape[0] // 2] = 1  # two labels split along the first voxel axis, plus unlabelled background
    labels[src.shape[0] // 2:, : src.shape[1] // 2] = 2
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, src.affine), atlas)
    table = tmp_path / "labels.tsv"
    table.write_text("id\tname\n1\tfirst_half\n2\tquarter\n")
    out = tmp_path / "out"
    res = run_cli("explain", str(nifti), "--atlas", str(atlas), "--atlas-labels", str(table), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = read_rows(out / "regions.csv")
    assert [r["region_name"] for r in rows] == ["background", "first_half", "quarter"]
    total = float(read_rows(out / "summary.csv")[0]["relevance_sum"])
    assert sum(float(r["relevance_sum"]) for r in rows) == pytest.approx(total, rel=1e-4, abs=1e-7)
    assert int(rows[1]["voxels"]) == int((labels == 1).sum())
