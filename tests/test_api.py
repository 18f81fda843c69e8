"""explain_scan from Python gives what `mri-lrp explain` writes, for a NIfTI file and a DICOM series."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp import ScanExplanation, explain_scan
from mri_lrp.errors import ScanError, SettingsError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans" / "t1"
NIFTI, SERIES = SAMPLES / "sub-05_T1w.nii.gz", SAMPLES / "dicom" / "sub-07"


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `mri-lrp explain` run over the NIfTI file and the DICOM series, with masks."""
    out = tmp_path_factory.mktemp("cli") / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(NIFTI), str(SERIES), "--out", str(out),
                          "--masks", str(SAMPLES / "masks"), "--workers", "0", "--quiet"],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture(scope="module")
def results() -> dict[str, ScanExplanation]:
    return {name: explain_scan(path, masks=str(SAMPLES / "masks")) for name, path in
            (("nifti", NIFTI), ("dicom", SERIES))}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_explain_scan_gives_the_relevance_the_command_line_writes(
        kind: str, results: dict[str, ScanExplanation], cli_out: Path) -> None:
    res = results[kind]
    written = nib.load(cli_out / "scans" / res.scan_id / "relevance.nii.gz")
    cli_relevance = np.asarray(written.dataobj, dtype=np.float32)
    assert res.relevance.shape == cli_relevance.shape and res.relevance.dtype == np.float32
    # The command line explained both scans in one batch; batched float sums differ in the last bits only.
    scale = float(np.abs(cli_relevance).max())
    assert scale > 0 and float(np.abs(res.relevance - cli_relevance).max()) <= 1e-5 * scale
    np.testing.assert_allclose(res.affine, written.affine, atol=1e-4)
    summary = next(r for r in read_rows(cli_out / "summary.csv") if r["scan_id"] == res.scan_id)
    assert res.predicted_class == summary["predicted_class"]
    assert res.probs[res.predicted_class] == pytest.approx(float(summary["predicted_prob"]), rel=1e-5)
    assert res.summary["relevance_mass_accuracy"] == pytest.approx(float(summary["relevance_mass_accuracy"]),
                                                                    rel=1e-4)


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_regions_match_the_command_lines_table_and_add_up_to_the_map(
        kind: str, results: dict[str, ScanExplanation], cli_out: Path) -> None:
    res = results[kind]
    cli_rows = read_rows(cli_out / "scans" / res.scan_id / "regions.csv")
    assert [r["region_name"] for r in res.region_rows] == [r["region_name"] for r in cli_rows]
    for ours, theirs in zip(res.region_rows, cli_rows, strict=True):
        assert ours["voxels"] == int(theirs["voxels"])
        assert ours["relevance_sum"] == pytest.approx(float(theirs["relevance_sum"]), rel=1e-4, abs=1e-8)
    partitions = {r["partition"] for r in res.region_rows}
    assert {"builtin", "mask"} <= partitions
    for partition in partitions:
        total = sum(r["relevance_sum"] for r in res.region_rows if r["partition"] == partition)
        assert total == pytest.approx(float(res.relevance.sum(dtype=np.float64)), rel=1e-4)
    regions = res.regions
    assert len(regions) == len(res.region_rows)


def test_regions_are_a_dataframe_when_pandas_is_installed(results: dict[str, ScanExplanation]) -> None:
    pytest.importorskip("pandas")
    frame = results["nifti"].regions
    assert list(frame["region_name"]) == [r["region_name"] for r in results["nifti"].region_rows]
    assert frame["relevance_sum"].dtype.kind == "f"


def test_probabilities_are_named_by_class_and_sum_to_one(results: dict[str, ScanExplanation]) -> None:
    probs = results["nifti"].probs
    assert list(probs) == ["glioma", "meningioma", "pituitary", "no_tumour"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_plot_is_a_figure_of_the_written_overlay_and_save_copies_the_scans_files(
        results: dict[str, ScanExplanation], tmp_path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    res = results["dicom"]
    fig = res.plot()
    assert isinstance(fig, Figure)
    shown = fig.axes[0].images[0].get_array()
    assert np.array_equal(np.asarray(shown), imread(res.overlays[0]))
    folder = res.save(tmp_path / "mine")
    assert {"relevance.nii.gz", "overlay.png", "regions.csv"} <= {p.name for p in folder.iterdir()}
    assert np.array_equal(np.asarray(nib.load(folder / "relevance.nii.gz").dataobj), res.relevance)


def test_options_use_the_command_lines_names_and_checks() -> None:
    with pytest.raises(SettingsError, match="unknown rule"):
        explain_scan(NIFTI, rule="magic")
    with pytest.raises(SettingsError, match="unknown option.*rulez"):
        explain_scan(NIFTI, rulez="epsilon")
    with pytest.raises(SettingsError, match="shard.*batch run"):
        explain_scan(NIFTI, shard="0/2")
    with pytest.raises(SettingsError, match="found 12 scans"):
        explain_scan(SAMPLES)


def test_an_unreadable_scan_is_a_scan_error_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    with pytest.raises(ScanError, match="broken.nii.gz"):
        explain_scan(broken)


@pytest.mark.slow
def test_target_all_gives_one_map_and_one_overlay_per_class() -> None:
    res = explain_scan(NIFTI, target="all", rule="epsilon", input_shape=(56, 64, 56))
    assert res.targets == ["glioma", "meningioma", "pituitary", "no_tumour"]
    assert res.relevance.shape == (*nib.load(NIFTI).shape, 4) and len(res.overlays) == 4
    assert isinstance(res.plot("pituitary").axes[0].images[0].get_array(), np.ndarray)
    with pytest.raises(SettingsError, match="no relevance map"):
        res.plot("oedema")
