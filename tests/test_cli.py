"""The small commands: inspect, info, merge — their output and exit codes as scripts see them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_inspect_lists_every_sample_scan_and_skips_masks_segmentations_and_readme() -> None:
    res = run_cli("inspect", str(SAMPLES.parent), "--json")  # t1/ and brats/: one image per file for this model
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    scans = [r for r in rows if r["kind"] in ("nifti", "dicom")]
    assert len(scans) == 12 + 3 * 4
    assert {r["kind"] for r in scans} == {"nifti", "dicom"}
    assert all(r["orientation"] and r["shape"] for r in scans)
    skipped = {Path(r["source"]).name for r in rows if r["kind"] == "skipped"}
    assert "README.md" in skipped and "sub-02_T1w.nii.gz" in skipped  # the label mask of sub-02
    assert "BraTS-DEMO-00001-000-seg.nii.gz" in skipped and "BraTS-DEMO-00001-000.nii.gz" in skipped


def test_inspect_prints_tab_separated_rows_without_a_terminal() -> None:
    res = run_cli("inspect", str(SAMPLES / "sub-02_T1w.nii.gz"))
    assert res.returncode == 0
    header, row = res.stdout.splitlines()[:2]
    assert header.split("\t")[:3] == ["scan_id", "source", "kind"]
    assert row.split("\t")[0] == "sub-02_T1w"


def test_inspect_of_a_folder_without_scans_exits_4(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert run_cli("inspect", str(tmp_path)).returncode == 4


def test_info_describes_the_demo_model_with_a_rule_per_layer() -> None:
    res = run_cli("info", "--json")
    assert res.returncode == 0, res.stderr
    desc = json.loads(res.stdout)
    assert desc["classes"] == ["glioma", "meningioma", "pituitary", "no_tumour"]
    assert desc["input_spec"]["dims"] == 3
    convs = [layer for layer in desc["layers"] if layer["type"] == "Conv3d"]
    assert convs and all("alphabeta" in layer["rule"] for layer in convs)


def test_info_on_a_garbage_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x00" * 64)
    res = run_cli("info", str(bad))
    assert res.returncode == 2
    assert "weights.pt" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_merge_of_two_shards_equals_the_single_run(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted(SAMPLES.glob("sub-0*_T1w.nii.gz"))[:3]:
        (scans / p.name).write_bytes(p.read_bytes())
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run_cli("explain", str(scans), "--out", str(single), "--workers", "0").returncode == 0
    for i in range(2):
        assert run_cli("explain", str(scans), "--out", str(sharded), "--shard", f"{i}/2",
                       "--workers", "0").returncode == 0
    res = run_cli("merge", str(sharded), "--out", str(sharded))
    assert res.returncode == 0, res.stdout + res.stderr
    for table in ("summary.csv", "regions.csv"):
        got = (sharded / table).read_text().splitlines()
        want = (single / table).read_text().splitlines()
        assert len(got) == len(want) and got[0] == want[0]
        assert [ln.split(",")[0] for ln in got] == [ln.split(",")[0] for ln in want]


def test_merge_reports_a_missing_shard_with_exit_3(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted(SAMPLES.glob("sub-0*_T1w.nii.gz"))[:2]:
        (scans / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert run_cli("explain", str(scans), "--out", str(out), "--shard", "0/2", "--workers", "0").returncode == 0
    res = run_cli("merge", str(out), "--out", str(out))
    assert res.returncode == 3
    assert "missing" in (res.stdout + res.stderr).lower()
