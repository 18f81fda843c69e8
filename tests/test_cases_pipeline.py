"""Multi-channel cases end to end: relevance per channel goes to exactly the file the model looked at.

The model's first convolution sees only one input channel (its weights for the others are zero), so LRP must
put all relevance on that channel's file and exactly zero on every other one, in every layout; and since each
channel's file is zero outside a box of its own, the relevance must also lie inside that file's box.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from case_factory import GLOBS, LAYOUTS, NAMES, box, brats2021, save

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model
from mri_lrp.pipeline.run import run_explain
from mri_lrp.progress import Reporter
from mri_lrp.settings import Settings

KWARGS = {"in_channels": 4, "num_classes": 2, "width": 4, "depth": 2}


def one_channel_model(path: Path, channel: int, globs: dict[str, str] | None = None) -> Path:
    """A 4-channel cnn3d whose first convolution reads only ``channel``."""
    torch.manual_seed(channel)
    model = build_model("cnn3d", **KWARGS).eval()
    with torch.no_grad():
        keep = torch.zeros(4, dtype=torch.bool)
        keep[channel] = True
        model.features[0].weight[:, ~keep] = 0.0
    spec = InputSpec(dims=3, channels=4, channel_names=NAMES, channel_files=globs or {})
    save_checkpoint(path, model, architecture="cnn3d", kwargs=KWARGS, class_names=["tumour", "none"],
                    input_spec=spec)
    return path


def explain(scans: Path, checkpoint: Path, out: Path, **options: object) -> int:
    settings = Settings(scans=(str(scans),), checkpoint=str(checkpoint), out=str(out), workers=0, device="cpu",
                        rule="alphabeta", alpha=2.0, beta=1.0, **options)
    return run_explain(settings, Reporter(quiet=True, stream=io.StringIO()))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.mark.parametrize("layout, channel", [("brats2021", 3), ("brats2023", 1), ("nnunet", 2), ("bids", 1),
                                             ("msd", 0), ("globs", 1), ("dicom", 2)])
def test_all_relevance_lands_on_the_one_channel_the_model_reads(tmp_path: Path, layout: str, channel: int) -> None:
    scans = tmp_path / "scans"
    LAYOUTS[layout](scans)
    checkpoint = one_channel_model(tmp_path / "m.pt", channel, GLOBS if layout == "globs" else None)
    out = tmp_path / "out"
    assert explain(scans, checkpoint, out) == 0, rows(out / "failures.csv")
    (summary,) = rows(out / "summary.csv")
    case_dir = out / "scans" / summary["scan_id"]
    total = volume(case_dir / "relevance.nii.gz")
    per = {name: volume(case_dir / f"relevance_{name}.nii.gz") for name in NAMES}
    reads = NAMES[channel]
    assert np.abs(per[reads]).sum() > 0
    for name in NAMES:
        if name != reads:
            assert np.all(per[name] == 0.0), name  # exactly zero, not merely small
    np.testing.assert_allclose(per[reads], total, rtol=1e-6, atol=1e-9)
    if layout != "dicom":  # a DICOM series has signal everywhere; the others only in their own box
        assert np.all(per[reads][~box(channel)] == 0.0)
    assert float(summary[f"share_{reads}"]) == pytest.approx(1.0)
    assert all(float(summary[f"share_{n}"]) == 0.0 for n in NAMES if n != reads)
    assert float(summary["relevance_sum"]) == pytest.approx(total.sum(), rel=1e-4)

    regions = rows(out / "regions.csv")
    assert [r["channel"] for r in regions[:1]] == ["all"]
    for name in ("all", *NAMES):
        own = [r for r in regions if r["channel"] == name and r["partition"] == "builtin"]
        assert own, name
        expected = total.sum() if name in ("all", reads) else 0.0
        assert sum(float(r["relevance_sum"]) for r in own) == pytest.approx(expected, rel=1e-4, abs=1e-12)
    marker_files = __import__("json").loads((case_dir / "result.json").read_text())["files"]
    assert {f"relevance_{n}.nii.gz" for n in NAMES} <= set(marker_files)
    assert (case_dir / "overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_channel_is_one_failure_row_and_the_batch_goes_on(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    brats2021(scans, "BraTS2021_00001")
    brats2021(scans, "BraTS2021_00002")
    next(scans.rglob("BraTS2021_00002_t2.nii.gz")).unlink()
    out = tmp_path / "out"
    assert explain(scans, one_channel_model(tmp_path / "m.pt", 0), out) == 3
    (failure,) = rows(out / "failures.csv")
    assert failure["scan_id"] == "BraTS2021_00002" and "missing channel(s) t2" in failure["error"]
    assert [r["scan_id"] for r in rows(out / "summary.csv")] == ["BraTS2021_00001"]


def test_a_single_file_for_a_multichannel_model_is_explained_with_a_warning(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    save(LAYOUTS["brats2021"](tmp_path / "elsewhere")[0], scans / "lonely.nii.gz")
    out = tmp_path / "out"
    assert explain(scans, one_channel_model(tmp_path / "m.pt", 0), out) == 0
    (summary,) = rows(out / "summary.csv")
    assert "fits no case of the model's 4 channels" in summary["warnings"]
    assert not list((out / "scans" / summary["scan_id"]).glob("relevance_*.nii.gz"))


def test_resume_keeps_a_finished_case_and_redoes_it_when_a_channel_file_changes(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    vols = brats2021(scans)
    checkpoint = one_channel_model(tmp_path / "m.pt", 3)
    out = tmp_path / "out"
    assert explain(scans, checkpoint, out) == 0
    flair = out / "scans" / "BraTS2021_00007" / "relevance_flair.nii.gz"
    before = flair.stat().st_mtime_ns
    assert explain(scans, checkpoint, out) == 0
    assert flair.stat().st_mtime_ns == before
    save(vols[3] * 2, next(scans.rglob("*_flair.nii.gz")))
    os.utime(next(scans.rglob("*_flair.nii.gz")), ns=(before + 10**9, before + 10**9))
    assert explain(scans, checkpoint, out) == 0
    assert flair.stat().st_mtime_ns != before


@pytest.mark.slow
@pytest.mark.monai
def test_cli_explains_a_brats_folder_with_a_monai_4_channel_network(tmp_path: Path) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    scans = tmp_path / "scans"
    for n in range(2):
        brats2021(scans, f"BraTS2021_{n:05d}", seed=n)
    torch.manual_seed(0)
    # a 3-voxel first kernel: the cases' 8 slices are fewer than the default 7-voxel kernel and its pooling read
    kwargs = {"spatial_dims": 3, "n_input_channels": 4, "num_classes": 2, "conv1_t_size": 3}
    model = nets.resnet10(**kwargs).eval()
    with torch.no_grad():
        model.conv1.weight[:, :3] = 0.0  # reads FLAIR only
    torch.save({"state_dict": model.state_dict()}, tmp_path / "monai.pt")
    config = tmp_path / "brats.toml"
    config.write_text(
        'model = "monai.networks.nets:resnet10"\n'
        'model_kwargs = { spatial_dims = 3, n_input_channels = 4, num_classes = 2, conv1_t_size = 3 }\n'
        'class_names = ["glioma", "none"]\n'
        '[input_spec]\ndims = 3\nchannels = 4\nchannel_names = ["t1", "t1ce", "t2", "flair"]\n'
        'shape = [16, 16, 16]\n')
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(scans), "--checkpoint",
                          str(tmp_path / "monai.pt"), "--config", str(config), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = rows(out / "summary.csv")
    assert [r["scan_id"] for r in summary] == ["BraTS2021_00000", "BraTS2021_00001"]
    for row in summary:
        assert float(row["share_flair"]) == pytest.approx(1.0)
        case_dir = out / "scans" / row["scan_id"]
        for name in ("t1", "t1ce", "t2"):
            assert np.all(volume(case_dir / f"relevance_{name}.nii.gz") == 0.0)
        assert np.all(volume(case_dir / "relevance_flair.nii.gz")[~box(3)] == 0.0)


def test_filters_pick_a_cases_files_before_grouping(tmp_path: Path) -> None:
    from dicom_factory import AXIAL, write_series

    from mri_lrp.model.checkpoint import load_checkpoint
    from mri_lrp.pipeline.run import find_scans

    scans = tmp_path / "scans"
    LAYOUTS["dicom"](scans)
    # a reformat of the contrast T1 (DERIVED) would be a second t1ce series if it were not filtered first
    write_series(scans / "study" / "mpr", AXIAL, n_slices=6, rows=16, cols=16, series_number=99,
                 description="T1 AX POST GD MPR", image_type=("DERIVED", "SECONDARY", "MPR"))
    loaded = load_checkpoint(one_channel_model(tmp_path / "m.pt", 0))
    (case,), skipped = find_scans(Settings(scans=(str(scans),), out=str(tmp_path / "out")), loaded)
    assert case.error == "" and len(case.parts) == 4
    assert any("derived image" in s.reason for s in skipped)
    (case,), _ = find_scans(Settings(scans=(str(scans),), out=str(tmp_path / "out"), series="^(?!AX T2 FLAIR)"),
                            loaded)
    assert "missing channel(s) flair" in case.error


def test_two_series_for_one_channel_are_refused_and_series_picks_one(tmp_path: Path) -> None:
    from dicom_factory import AXIAL, write_series

    from mri_lrp.model.checkpoint import load_checkpoint
    from mri_lrp.pipeline.run import find_scans

    scans = tmp_path / "scans"
    LAYOUTS["dicom"](scans)
    write_series(scans / "study" / "sag", AXIAL, n_slices=6, rows=16, cols=16, series_number=77,
                 description="T1 SAG SE")
    loaded = load_checkpoint(one_channel_model(tmp_path / "m.pt", 0))
    (case,), _ = find_scans(Settings(scans=(str(scans),), out=str(tmp_path / "out")), loaded)
    assert "several files for one channel (t1: " in case.error
    assert "'T1 AX SE'" in case.error and "'T1 SAG SE'" in case.error and "--series" in case.error
    (case,), _ = find_scans(Settings(scans=(str(scans),), out=str(tmp_path / "out"), series="^(?!T1 SAG)"), loaded)
    assert case.error == "" and case.parts[0].series_description == "T1 AX SE"
