"""The report in a real headless browser (Debian's chromium driven by playwright-core): it loads from disk with no
console error and no network request, lists every scan and failure, sorts, filters, pages, opens a scan page
whose NiiVue viewer draws the relevance; and a 2,000-scan report stays responsive.

Needs `make browser-deps` (chromium from apt, playwright-core from npm into tests/browser/); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import make_run

from mri_lrp.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make browser-deps)"),
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
                       reason="playwright-core is not installed in tests/browser (make browser-deps)"),
]


def drive(report: Path, shot: Path) -> dict:
    res = subprocess.run(["node", str(BROWSER_DIR / "check_report.mjs"), str(report), str(shot)],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "CHROMIUM": str(CHROMIUM)})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def as_numbers(cells: list[str]) -> list[float]:
    return [float(c) for c in cells]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample scans (three NIfTI, one DICOM series) with masks, a broken file and a junk file."""
    root = tmp_path_factory.mktemp("sample")
    scans = root / "scans"
    scans.mkdir()
    for name in ("sub-02_T1w.nii.gz", "sub-03_T1w.nii.gz", "sub-04_T1w.nii.gz"):
        shutil.copy(SAMPLES / name, scans)
    shutil.copytree(SAMPLES / "dicom" / "sub-01", scans / "dicom" / "sub-01")
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    (scans / "notes.txt").write_text("not a scan")
    out = root / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(scans), "--out", str(out),
                          "--masks", str(SAMPLES / "masks")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 3, res.stderr
    return out


def test_the_sample_report_works_in_a_browser_opened_from_disk(sample_run: Path, tmp_path: Path) -> None:
    seen = drive(sample_run / "report.html", tmp_path / "viewer.png")
    assert seen["errors"] == [] and seen["network"] == []
    assert seen["rows_on_page"] == 4 and seen["shown"] == "4 of 4 scans"
    assert_inside_the_page_at_1400_px(seen["at_1400"])
    # the demo model's notice is on every row: clipped to two lines (full text on hover), not a screen per row
    assert max(seen["row_heights"]) < 80 and all("DEMO MODEL" in t for t in seen["warning_titles"])
    assert seen["failures"] == ["broken"] and seen["skipped"] >= 1
    up = as_numbers(seen["sorted_ascending"])
    assert up == sorted(up) and as_numbers(seen["sorted_descending"]) == sorted(up, reverse=True)
    assert seen["aria_sort"] == "descending"
    assert len(seen["filtered"]) == 1
    assert seen["gallery_items"] == 4 and seen["gallery_lazy"]
    assert seen["scan_page"].endswith(".html") and "/report/scans/" in seen["scan_page"]
    assert seen["viewer"] == "ready", seen["viewer_status"]
    assert seen["overlays_loaded"] == [True]
    from matplotlib.image import imread

    pixels = imread(tmp_path / "viewer.png")[..., :3]
    assert pixels.std() > 0.05  # not a blank canvas
    grey = np.abs(pixels - pixels.mean(axis=-1, keepdims=True)).max(axis=-1) < 0.05
    assert grey.mean() > 0.3 and (pixels.max(axis=-1) > 0.5).mean() > 0.05  # the scan, in grey
    red = (pixels[..., 0] > 0.5) & (pixels[..., 1] < 0.35) & (pixels[..., 2] < 0.35)
    assert red.sum() > 10  # and relevance over it


def assert_inside_the_page_at_1400_px(wide: dict) -> None:
    """The summary table's box ends inside a 1400 px window and the page never scrolls sideways."""
    assert wide["viewport"] == 1400
    assert wide["box_right"] <= wide["viewport"] and wide["page_width"] <= wide["viewport"], wide
    assert wide["box_scrolls"] == "auto"
    assert "probability" in wide["headers"] and "p" not in wide["headers"]


def test_a_table_of_long_paths_and_ids_scrolls_in_its_box_not_past_the_page_at_1400_px(tmp_path: Path) -> None:
    from mri_lrp.outputs import read_csv, write_csv

    out = tmp_path / "long"
    make_run(out, scans=5)
    rows = read_csv(out / "summary.csv")
    deep = "/".join(["a_folder_name_as_a_pacs_export_writes_it"] * 6)
    for row in rows:
        row["source"] = f"{deep}/{row['scan_id']}_{'x' * 60}.nii.gz"
        row["top_region"] = "left_" * 30 + "region"
    write_csv(out / "summary.csv", rows, list(rows[0]))
    seen = drive(write_report(out), tmp_path / "viewer.png")
    assert seen["errors"] == [] and seen["network"] == []
    wide = seen["at_1400"]
    assert_inside_the_page_at_1400_px(wide)
    assert wide["table_width"] > wide["viewport"]  # wider than the window: it scrolls inside its own box


def test_a_2000_scan_report_is_built_in_seconds_and_stays_responsive(tmp_path: Path) -> None:
    out = tmp_path / "big"
    make_run(out, scans=2000, failures=20, skipped=5)
    t0 = time.perf_counter()
    main = write_report(out)
    built = time.perf_counter() - t0
    assert built < 30, built
    assert main.stat().st_size < 2_000_000 and main.read_text().count("<img") == 0
    seen = drive(main, tmp_path / "viewer.png")
    assert seen["errors"] == [] and seen["network"] == []
    assert seen["shown"] == "2000 of 2000 scans" and seen["rows_on_page"] == 100
    assert len(seen["failures"]) == 20
    assert seen["load_ms"] < 5000, seen["load_ms"]
    assert seen["sort_ms"] < 2000 and seen["filter_ms"] < 2000, (seen["sort_ms"], seen["filter_ms"])
    assert seen["second_page"] == "101–200 of 2000"
    assert seen["gallery_items"] == 24 and seen["gallery_lazy"]
    assert seen["viewer"] == "ready", seen["viewer_status"]
