"""OUT/report.html and the per-scan pages, read back as HTML: what they list, what they link, what they compute."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nibabel as nib
import numpy as np
import pytest
from report_fixtures import make_run, parse_page
from typer.testing import CliRunner

from mri_lrp.cli import app
from mri_lrp.report import write_report
from mri_lrp.report.preview import block_affine, block_factor, block_mean, preview_volumes, read_preview

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def table_by_class(page, cls: str) -> dict:
    return next(t for t in page.tables if cls in (t["attrs"].get("class") or "").split())


def test_report_lists_every_scan_failure_skipped_input_and_the_run_settings(tmp_path: Path) -> None:
    made = make_run(tmp_path / "out", scans=7, failures=2, skipped=3)
    page = parse_page(write_report(tmp_path / "out"))
    rows = json.loads(page.scripts["rows-data"])
    assert [r["scan_id"] for r in rows] == [r["scan_id"] for r in made["summary"]]
    assert [r["conservation_error"] for r in rows] == [r["conservation_error"] for r in made["summary"]]
    columns = [c["key"] for c in json.loads(page.scripts["columns-data"])]
    assert {"scan_id", "predicted_class", "predicted_prob", "conservation_error", "warnings",
            "relevance_mass_accuracy", "pointing_game"} <= set(columns)
    failures = table_by_class(page, "failures")["rows"][1:]
    assert [r[0] for r in failures] == ["broken_0", "broken_1"] and "not a readable NIfTI" in failures[0][3]
    skipped = table_by_class(page, "skipped")["rows"][1:]
    assert [r[0] for r in skipped] == ["/data/notes_0.txt", "/data/notes_1.txt", "/data/notes_2.txt"]
    settings = {r[0]: r[1] for t in page.tables if t["attrs"].get("class") == "kv" for r in t["rows"]}
    assert settings["rule"] == "alphabeta" and settings["alpha"] == "2.0" and settings["torch"] == "2.13.0"
    assert settings["sha256"] == "ab" * 32


def test_the_probability_column_says_probability_and_the_table_sits_in_its_own_scrolling_box(tmp_path: Path) -> None:
    make_run(tmp_path / "out", scans=3)
    main = write_report(tmp_path / "out")
    labels = {c["key"]: c["label"] for c in json.loads(parse_page(main).scripts["columns-data"])}
    assert labels["predicted_prob"] == "probability"
    assert '<div class="table-box"><table id="summary-table"' in main.read_text(encoding="utf-8")
    css = (tmp_path / "out" / "report" / "assets" / "report.css").read_text(encoding="utf-8")
    assert ".table-box { max-width: 100%; max-height: 80vh; overflow: auto;" in css


def test_mask_columns_and_the_mass_accuracy_plot_appear_only_when_masks_were_given(tmp_path: Path) -> None:
    make_run(tmp_path / "masked", scans=4, masks=True)
    make_run(tmp_path / "plain", scans=4, masks=False)
    masked = (write_report(tmp_path / "masked")).read_text()
    plain_page = write_report(tmp_path / "plain")
    columns = [c["key"] for c in json.loads(parse_page(plain_page).scripts["columns-data"])]
    assert "relevance_mass_accuracy" not in columns and "mask_volume_ml" not in columns
    assert "Relevance mass accuracy per predicted class" in masked
    assert "Relevance mass accuracy per predicted class" not in plain_page.read_text()


def test_the_heat_table_is_the_mean_fraction_per_partition_region_and_predicted_class(tmp_path: Path) -> None:
    made = make_run(tmp_path / "out", scans=11)
    page = parse_page(write_report(tmp_path / "out"))
    predicted = {r["scan_id"]: r["predicted_class"] for r in made["summary"]}
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in made["regions"]:
        values[(row["partition"], row["region_name"], predicted[row["scan_id"]])].append(
            float(row["relevance_fraction"]))
    heat = [t for t in page.tables if t["attrs"].get("class") == "heat"]
    assert sorted(t["attrs"]["data-partition"] for t in heat) == ["builtin", "mask"]
    checked = 0
    for table in heat:
        part = table["attrs"]["data-partition"]
        header = [cell.split(" ")[0] for cell in table["rows"][0][1:]]
        for row in table["rows"][1:]:
            for cls, cell in zip(header, row[1:], strict=True):
                want = values.get((part, row[0], cls))
                if want is None:
                    assert cell == "–"
                else:
                    assert float(cell) == pytest.approx(sum(want) / len(want), abs=5e-4)
                    checked += 1
    assert checked == 4 * 4 + 2 * 3  # builtin regions x classes, mask regions x classes that have masks


def test_each_heat_table_heads_a_class_with_the_scans_that_have_its_partition(tmp_path: Path) -> None:
    made = make_run(tmp_path / "out", scans=11)  # no_tumour scans get no mask
    page = parse_page(write_report(tmp_path / "out"))
    for table in (t for t in page.tables if t["attrs"].get("class") == "heat"):
        part = table["attrs"]["data-partition"]
        have = {r["scan_id"] for r in made["regions"] if r["partition"] == part}
        for cell in table["rows"][0][1:]:
            cls, count = cell.split(" ")[0], int(cell.split(" ")[1])
            assert count == sum(1 for r in made["summary"] if r["predicted_class"] == cls and r["scan_id"] in have)
    mask_head = next(t for t in page.tables if t["attrs"].get("data-partition") == "mask")["rows"][0]
    assert "no_tumour 0 scans" in mask_head


def _resolves(page_path: Path, link: str, out: Path) -> bool:
    target = (page_path.parent / unquote(urlsplit(link).path)).resolve()
    return target.is_file() and (target == out.resolve() or out.resolve() in target.parents)


def test_the_report_needs_no_network_and_every_link_resolves_inside_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    made = make_run(out, scans=5)
    main = write_report(out)
    pages = [main, *sorted((out / "report" / "scans").glob("*.html"))]
    assert len(pages) == 1 + len(made["summary"])
    for page_path in pages:
        page = parse_page(page_path)
        for link in page.links:
            assert not urlsplit(link).scheme and not link.startswith("//"), (page_path.name, link)
            if urlsplit(link).path:
                assert _resolves(page_path, link, out), (page_path.name, link)
    for row in json.loads(parse_page(main).scripts["rows-data"]):  # the links the table and gallery draw
        assert _resolves(main, row["_page"], out) and _resolves(main, row["_thumb"], out)
    assert (out / "report/assets/LICENSE-niivue.txt").read_text().startswith("niivue.umd.js")


def test_a_scan_page_shows_its_overlay_region_rows_and_loads_the_viewer_data_by_script_tag(tmp_path: Path) -> None:
    out = tmp_path / "out"
    made = make_run(out, scans=3)
    write_report(out)
    scan_id = made["summary"][1]["scan_id"]
    page_path = out / "report" / "scans" / f"{scan_id}.html"
    page = parse_page(page_path)
    text = page_path.read_text()
    assert f"../../scans/{scan_id}/overlay.png" in page.links
    scripts = [link for link in page.links if link.endswith(".js")]
    assert scripts == ["../assets/niivue.umd.js", f"../../scans/{scan_id}/preview.js", "../assets/scan.js"]
    regions = table_by_class(page, "regions")["rows"]
    own = [r for r in made["regions"] if r["scan_id"] == scan_id]
    assert len(regions) == 1 + len(own)
    assert [r[regions[0].index("region_name")] for r in regions[1:]] == [r["region_name"] for r in own]
    assert 'rel="prev"' in text and 'rel="next"' in text and 'id="viewer"' in text


def test_the_viewer_names_the_class_its_map_explains_also_with_target_all(tmp_path: Path) -> None:
    out = tmp_path / "out"
    made = make_run(out, scans=2)
    summary = out / "summary.csv"
    lines = summary.read_text().splitlines()
    col = lines[0].split(",").index("target_class")
    # second scan as if run with --target all: the preview holds the predicted class's map
    cells = lines[2].split(",")
    cells[col] = "all"
    summary.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    write_report(out)
    for row in made["summary"]:
        text = (out / "report" / "scans" / f"{row['scan_id']}.html").read_text()
        assert f"red is relevance for {row['predicted_class']}, blue against" in text


def test_text_from_the_run_is_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    out = tmp_path / "out"
    made = make_run(out, scans=2, failures=1)
    rows = (out / "summary.csv").read_text().replace("low contrast", "x")
    (out / "summary.csv").write_text(rows)
    failures = (out / "failures.csv").read_text().replace("not a readable", "</script><script>alert(1)</script>")
    (out / "failures.csv").write_text(failures)
    summary = (out / "summary.csv").read_text().splitlines()
    summary[1] = summary[1].replace("sub-0000_T1w.nii.gz", "</script><img src=x onerror=alert(2)>.nii.gz")
    (out / "summary.csv").write_text("\n".join(summary) + "\n")
    html = write_report(out).read_text()
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html
    page = parse_page(out / "report.html")
    rows = json.loads(page.scripts["rows-data"])
    assert rows[0]["source"] == "</script><img src=x onerror=alert(2)>.nii.gz"
    assert len(rows) == len(made["summary"])


def _reference_block_mean(data: np.ndarray, f: int) -> np.ndarray:
    """Block means by explicit loops over the blocks (edge blocks averaged over what they cover, padded by
    repeating the border as the fast path does)."""
    shape = [-(-n // f) if n > 1 else 1 for n in data.shape]
    out = np.zeros(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                idx = [np.minimum(np.arange(b * f, b * f + f) if n > 1 else np.array([0]), n - 1)
                       for b, n in zip((i, j, k), data.shape, strict=True)]
                out[i, j, k] = data[np.ix_(*idx)].mean()
    return out


@pytest.mark.parametrize("shape", [(20, 17, 9), (64, 64, 1), (130, 150, 121)])
def test_the_preview_grid_is_a_block_mean_under_the_voxel_budget_with_centred_voxels(shape: tuple) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=shape).astype(np.float32)
    f = block_factor(shape, budget=4000)
    small = block_mean(data, f)
    assert small.size <= 4000 and (f == 1 or block_mean(data, f - 1).size > 4000)
    np.testing.assert_allclose(small, _reference_block_mean(data, f), rtol=1e-5, atol=1e-6)
    affine = np.array([[-1.5, 0, 0, 90], [0, 1.2, 0.1, -120], [0, 0, 2.0, -60], [0, 0, 0, 1]])
    new = block_affine(affine, f, shape)
    corner_block = [np.arange(min(f, n)) if n > 1 else np.array([0]) for n in shape]
    centre = np.array([idx.mean() for idx in corner_block])  # the first block's voxel centre, in source voxels
    np.testing.assert_allclose(new @ [0, 0, 0, 1], affine @ [*centre, 1])


def test_preview_volumes_read_back_as_nifti_with_the_block_grid_and_quantised_relevance(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scan = rng.uniform(0, 1000, size=(90, 100, 80)).astype(np.float32)
    rel = rng.normal(scale=1e-3, size=scan.shape).astype(np.float32)
    affine = np.diag([1.1, 1.1, 1.3, 1.0])
    content = preview_volumes(scan, rel, affine)

    def load(b64: str) -> nib.Nifti1Image:
        raw = gzip.decompress(base64.b64decode(b64))
        return nib.Nifti1Image.from_file_map({"image": nib.FileHolder(fileobj=io.BytesIO(raw)),
                                              "header": nib.FileHolder(fileobj=io.BytesIO(raw))})

    img_scan, img_rel = load(content["scan"]), load(content["relevance"])
    f = content["block"]
    expected = _reference_block_mean(rel[:30, :30, :30], f)[: 30 // f, : 30 // f, : 30 // f]
    got = np.asarray(img_rel.dataobj, dtype=np.float64)[: 30 // f, : 30 // f, : 30 // f]
    slope = float(img_rel.dataobj.slope)  # nibabel moves scl_slope from the header to the array proxy
    assert img_rel.get_data_dtype() == np.int8 and img_scan.get_data_dtype() == np.uint8
    assert np.max(np.abs(got - expected)) <= slope / 2 + 1e-9
    np.testing.assert_allclose(img_rel.affine, block_affine(affine, f, scan.shape), atol=1e-5)
    assert np.prod(img_scan.shape) <= 2**19 and content["shape"] == list(img_scan.shape)
    path = tmp_path / "preview.js"
    path.write_text("window.MRI_LRP_PREVIEW = " + json.dumps(content) + ";\n")
    assert read_preview(path)["peak"] == content["peak"]


def test_explain_writes_the_report_and_report_rebuilds_it(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLES / "sub-02_T1w.nii.gz", scans)
    (scans / "broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    (scans / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    res = run_cli("explain", str(scans), "--out", str(out), "--masks", str(SAMPLES / "masks"), "--workers", "0")
    assert res.returncode == 3, res.stderr
    page = parse_page(out / "report.html")
    assert [r["scan_id"] for r in json.loads(page.scripts["rows-data"])] == ["sub-02_T1w"]
    assert [r[0] for r in table_by_class(page, "failures")["rows"][1:]] == ["broken"]
    assert any("notes.txt" in r[0] for r in table_by_class(page, "skipped")["rows"][1:])
    assert (out / "scans/sub-02_T1w/preview.js").is_file()
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    shutil.rmtree(out / "report")
    again = CliRunner().invoke(app, ["report", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "report.html").read_text() == first
    assert (out / "report/scans/sub-02_T1w.html").is_file()


def test_report_of_a_folder_that_holds_no_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    for folder in (tmp_path / "nowhere", tmp_path):
        res = runner.invoke(app, ["report", str(folder)])
        assert res.exit_code == 2
        assert res.output.count("\n") == 1 and "mri-lrp: error:" in res.output


def test_the_counts_line_speaks_of_one_scan_and_one_input_in_the_singular(tmp_path: Path) -> None:
    make_run(tmp_path / "out", scans=1, failures=0, skipped=1)
    text = write_report(tmp_path / "out").read_text()
    assert ">1 scan explained<" in text and ">1 input skipped<" in text
    make_run(tmp_path / "two", scans=2, failures=0, skipped=2)
    text = write_report(tmp_path / "two").read_text()
    assert ">2 scans explained<" in text and ">2 inputs skipped<" in text
