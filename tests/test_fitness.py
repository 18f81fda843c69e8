"""Input fitness: model-free checks, the reference envelope, and ok/doubtful/out on a model trained here."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import fitness_factory as ff
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mri_lrp.cli import app
from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.fitness import checks
from mri_lrp.fitness.envelope import MIN_REFERENCE, VERSION, Envelope
from mri_lrp.model.checkpoint import load_checkpoint, save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.outputs import read_csv
from mri_lrp.pipeline.read import prepare
from mri_lrp.scans import discover

runner = CliRunner()
TRAIN = range(0, 40)
HELDOUT = range(1000, 1020)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CNN trained on 40 phantoms, and the envelope of those training scans made by `calibrate`."""
    work = tmp_path_factory.mktemp("fitness")
    checkpoint = ff.train_model(work / "model.pt", TRAIN, epochs=8)
    result = runner.invoke(app, ["calibrate", str(work / "train"), "--checkpoint", str(checkpoint),
                                 "--out", str(work / "envelope.npz")])
    assert result.exit_code == 0, result.output
    return {"work": work, "checkpoint": checkpoint, "envelope": work / "envelope.npz"}


def _geometry(path: Path) -> checks.Geometry:
    loaded = load_checkpoint(None)
    refs, _ = discover([str(path)])
    return checks.geometry(prepare(refs[0], loaded.input_spec).model_input.space)


def test_a_whole_head_covers_the_grid_and_a_crop_a_small_share(tmp_path: Path) -> None:
    volume, affine = ff.phantom(7)
    whole = _geometry(ff.save(tmp_path / "whole.nii.gz", volume, affine))
    crop = _geometry(ff.save(tmp_path / "crop.nii.gz", *ff.KINDS["crop"](volume, affine, np.random.default_rng(0))))
    assert whole.input_coverage > 0.9 and whole.scan_inside > 0.9
    assert crop.input_coverage < 0.1 and crop.scan_inside == pytest.approx(1.0)
    assert checks.geometry_reasons(crop)[0] == [f"covers {crop.input_coverage:.0%} of the model's field of view"]


def test_nibabel_test_mgz_fails_with_a_reason_naming_the_file(nibabel_data: Path, tmp_path: Path) -> None:
    shutil.copy(nibabel_data / "test.mgz", tmp_path / "test.mgz")
    result = runner.invoke(app, ["explain", str(tmp_path / "test.mgz"), "--out", str(tmp_path / "out"), "-j0"])
    assert result.exit_code == 3, result.output
    failures = read_csv(tmp_path / "out" / "failures.csv")
    assert len(failures) == 2 and {f["stage"] for f in failures} == {"preprocess"}
    assert "fewer than the 4 voxels per axis its first layers read" in failures[0]["error"]
    assert "test.mgz: the scan fills" in result.output
    assert read_csv(tmp_path / "out" / "summary.csv") == []


@pytest.mark.parametrize(("kind", "words"), [
    ("constant", "the volume is constant"),
    ("ct_like", "CT-like value range with air at -1000"),
])
def test_values_that_cannot_be_mr_are_out_without_a_reference(kind: str, words: str) -> None:
    volume, affine = ff.phantom(3)
    distorted, _ = ff.KINDS[kind](volume, affine, np.random.default_rng(3))
    reasons = checks.value_reasons(checks.raw_stats(distorted))
    assert len(reasons) == 1 and words in reasons[0]
    assert checks.value_reasons(checks.raw_stats(volume)) == []


def test_model_free_checks_fill_the_summary_without_a_reference(trained: dict[str, Path], tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ff.write_phantoms(scans, range(2000, 2001))
    ff.write_phantoms(scans, range(2001, 2002), "ct_like")
    result = runner.invoke(app, ["explain", str(scans), "--checkpoint", str(trained["checkpoint"]),
                                 "--out", str(tmp_path / "out"), "-j0"])
    assert result.exit_code == 0, result.output
    rows = {r["scan_id"].split("_")[0]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows["normal"]["fitness"] == "ok" and float(rows["normal"]["input_coverage"]) > 0.9
    assert rows["normal"]["feature_distance"] == ""
    assert rows["ct"]["fitness"] == "out" and "CT-like" in rows["ct"]["warnings"]
    assert "input unlike the model's inputs" in result.output


def test_the_envelope_round_trips_without_pickle(trained: dict[str, Path]) -> None:
    env = Envelope.load(trained["envelope"])
    with np.load(trained["envelope"], allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    assert env.count == len(TRAIN) == len(env.feature_distances)
    assert env.features.shape[0] == env.count and env.feature_precision.shape[0] == env.features.shape[1]
    copy = trained["work"] / "copy.npz"
    env.save(copy)
    again = Envelope.load(copy)
    assert np.array_equal(again.feature_precision, env.feature_precision)
    assert list(again.scan_ids) == list(env.scan_ids) and again.model_sha256 == env.model_sha256


def test_a_pickled_or_foreign_npz_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "objects.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SettingsError, match="not a reference envelope"):
        Envelope.load(tmp_path / "objects.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(SettingsError, match="not a reference envelope"):
        Envelope.load(tmp_path / "other.npz")


def test_an_envelope_of_another_model_is_refused_unless_asked(trained: dict[str, Path], tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ff.write_phantoms(scans, range(3000, 3001))
    args = ["explain", str(scans), "--reference", str(trained["envelope"]), "-j0"]  # the demo model
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "calibrate for this model" in refused.output
    assert not (tmp_path / "a").exists()  # refused before --out is made
    accepted = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--reference-any-model"])
    assert accepted.exit_code == 0, accepted.output
    row = read_csv(tmp_path / "b" / "summary.csv")[0]
    assert row["feature_distance"] == "" and "no classifier-head features" in row["fitness_reasons"]


def test_calibrate_refuses_too_few_reference_scans(trained: dict[str, Path], tmp_path: Path) -> None:
    ff.write_phantoms(tmp_path / "few", range(MIN_REFERENCE - 1))
    result = runner.invoke(app, ["calibrate", str(tmp_path / "few"), "--checkpoint", str(trained["checkpoint"]),
                                 "--out", str(tmp_path / "e.npz")])
    assert result.exit_code == 2
    assert f"{MIN_REFERENCE - 1} usable scans; at least {MIN_REFERENCE}" in result.output
    assert not (tmp_path / "e.npz").exists()


def test_info_prints_the_envelope(trained: dict[str, Path]) -> None:
    result = runner.invoke(app, ["info", "--reference", str(trained["envelope"])])
    assert result.exit_code == 0, result.output
    assert f"reference scans: {len(TRAIN)}" in result.output and "Ledoit-Wolf" in result.output


def test_heldout_scans_pass_and_unfit_kinds_are_flagged(trained: dict[str, Path]) -> None:
    """Held-out in-distribution scans: out at most 5%; each unfit kind flagged (out, or refused) >= 90%."""
    work = trained["work"]
    normal = ff.assess(trained["checkpoint"], trained["envelope"], ff.write_phantoms(work / "heldout", HELDOUT))
    assert sum(r["fitness"] == "out" for r in normal) <= 0.05 * len(normal)
    for kind in ff.KINDS:
        rows = ff.assess(trained["checkpoint"], trained["envelope"],
                         ff.write_phantoms(work / kind, range(1000, 1010), kind))
        flagged = Counter(r["fitness"] in ("out", "failed") for r in rows)
        assert flagged[True] >= 0.9 * len(rows), (kind, rows)


def test_explain_with_a_reference_marks_and_skips_unfit_scans(trained: dict[str, Path], tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ff.write_phantoms(scans, range(4000, 4002))
    ff.write_phantoms(scans, range(4002, 4003), "inverted")
    ff.write_phantoms(scans, range(4003, 4004), "ct_like")
    base = ["explain", str(scans), "--checkpoint", str(trained["checkpoint"]), "--reference",
            str(trained["envelope"]), "-j0"]
    kept = runner.invoke(app, [*base, "--out", str(tmp_path / "kept")])
    assert kept.exit_code == 0, kept.output
    rows = {r["scan_id"]: r for r in read_csv(tmp_path / "kept" / "summary.csv")}
    inverted = rows["inverted_04002"]
    assert inverted["fitness"] == "out" and float(inverted["feature_percentile"]) == 100.0
    assert "input fitness out" in inverted["warnings"] and "contrast unlike the reference" in inverted["warnings"]
    from PIL import Image

    overlay = Image.open(tmp_path / "kept" / "scans" / "inverted_04002" / "overlay.png")
    assert "INPUT UNLIKE THE MODEL'S" in overlay.text["Warning"]
    assert all(rows[f"normal_0400{i}"]["fitness"] != "out" for i in (0, 1))
    counts = json.loads((tmp_path / "kept" / "run.json").read_text())["fitness"]
    assert counts["out"] == 2 and counts["skipped_unfit"] == 0

    skipped = runner.invoke(app, [*base, "--out", str(tmp_path / "skipped"), "--skip-unfit"])
    assert skipped.exit_code == 0, skipped.output
    assert {r["scan_id"] for r in read_csv(tmp_path / "skipped" / "summary.csv")} == {"normal_04000", "normal_04001"}
    listed = {Path(r["path"]).name: r["reason"] for r in read_csv(tmp_path / "skipped" / "skipped.csv")}
    assert set(listed) == {"inverted_04002.nii.gz", "ct_like_04003.nii.gz"}
    assert listed["inverted_04002.nii.gz"].startswith("not explained (--skip-unfit): ")
    assert "CT-like" in listed["ct_like_04003.nii.gz"]  # decided before its forward pass
    assert not (tmp_path / "skipped" / "scans" / "inverted_04002").exists()
    assert json.loads((tmp_path / "skipped" / "run.json").read_text())["fitness"]["skipped_unfit"] == 2


def test_evaluate_with_a_reference_reports_the_share_flagged_per_class(trained: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ff.write_phantoms(scans, range(5000, 5002))
    ff.write_phantoms(scans, range(5002, 5003), "noise")
    result = runner.invoke(app, ["evaluate", str(scans), "--checkpoint", str(trained["checkpoint"]), "--rules",
                                 "epsilon", "--steps", "2", "--sanity-scans", "0", "--reference",
                                 str(trained["envelope"]), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    by_scan = {r["scan_id"]: r for r in report["fitness"]}
    assert by_scan["noise_05002"]["fitness"] == "out"
    by_class = report["fitness_by_class"]
    assert sum(c["scans"] for c in by_class.values()) == 3
    assert sum(c["out"] for c in by_class.values()) >= 1
    noisy = by_class[by_scan["noise_05002"]["class"]]
    assert noisy["flagged_share"] == (noisy["out"] + noisy["doubtful"]) / noisy["scans"]
    assert "input fitness, class" in result.output


def test_reference_batch_flags_the_scans_that_stand_apart(trained: dict[str, Path], tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    ff.write_phantoms(scans, range(6000, 6022))
    ff.write_phantoms(scans, range(6022, 6023), "inverted")
    ff.write_phantoms(scans, range(6023, 6024), "noise")
    result = runner.invoke(app, ["explain", str(scans), "--checkpoint", str(trained["checkpoint"]), "--reference",
                                 "batch", "--out", str(tmp_path / "out"), "-j0"])
    assert result.exit_code == 0, result.output
    rows = {r["scan_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows["inverted_06022"]["fitness"] == "out" and rows["noise_06023"]["fitness"] == "out"
    assert sum(r["fitness"] == "out" for k, r in rows.items() if k.startswith("normal")) <= 1
    assert Envelope.load(tmp_path / "out" / "reference_batch.npz").count <= 22


def test_reference_batch_needs_enough_scans(trained: dict[str, Path], tmp_path: Path) -> None:
    ff.write_phantoms(tmp_path / "scans", range(7000, 7005))
    result = runner.invoke(app, ["explain", str(tmp_path / "scans"), "--checkpoint", str(trained["checkpoint"]),
                                 "--reference", "batch", "--out", str(tmp_path / "out"), "-j0"])
    assert result.exit_code == 2 and "the reference has 5 usable scans; at least 20" in result.output


def test_merged_shards_add_up_their_fitness_counts(trained: dict[str, Path], tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    ff.write_phantoms(scans, range(8000, 8002))
    ff.write_phantoms(scans, range(8002, 8004), "ct_like")
    for shard in ("0/2", "1/2"):
        result = runner.invoke(app, ["explain", str(scans), "--checkpoint", str(trained["checkpoint"]), "--shard",
                                     shard, "--out", str(out), "-j0"])
        assert result.exit_code == 0, result.output
    merged = runner.invoke(app, ["merge", str(out), "--out", str(out)])
    assert merged.exit_code == 0, merged.output
    counts = json.loads((out / "run.json").read_text())["fitness"]
    assert counts["out"] == 2 and counts["ok"] + counts["doubtful"] == 2


def test_explain_scan_refuses_a_volume_narrower_than_the_first_layers(nibabel_data: Path) -> None:
    from mri_lrp import explain_scan

    with pytest.raises(ScanError, match=r"test.mgz: the scan fills .* fewer than the 4 voxels"):
        explain_scan(nibabel_data / "test.mgz", volume=0)


def test_an_envelope_of_another_version_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    with np.load(trained["envelope"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "v99.npz", **{**arrays, "version": np.asarray(99)})
    with pytest.raises(SettingsError, match=f"envelope version 99; this mri-lrp reads version {VERSION}"):
        Envelope.load(tmp_path / "v99.npz")


def test_a_slice_model_is_judged_on_its_slices_features(tmp_path: Path) -> None:
    """A 2D model: the features of every slice of the scan (from the forward pass of its explanation) averaged,
    as calibrate averages them."""
    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.model.zoo import cnn2d
    from mri_lrp.phantoms import LABELS

    spec = InputSpec(dims=2, channels=1, shape=(24, 28), spacing=(8.0, 8.0), orientation="RAS",
                     normalization="zscore", slice_axis="S")
    kwargs = {"in_channels": 1, "num_classes": 4, "width": 4, "depth": 2}
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m2d.pt", cnn2d(**kwargs).eval(), architecture="cnn2d", kwargs=kwargs,
                    class_names=list(LABELS), input_spec=spec)
    ff.write_phantoms(tmp_path / "ref", range(MIN_REFERENCE))
    made = runner.invoke(app, ["calibrate", str(tmp_path / "ref"), "--checkpoint", str(tmp_path / "m2d.pt"),
                               "--out", str(tmp_path / "e.npz")])
    assert made.exit_code == 0, made.output
    ff.write_phantoms(tmp_path / "run", range(100, 101))
    ff.write_phantoms(tmp_path / "run", range(101, 102), "inverted")
    result = runner.invoke(app, ["explain", str(tmp_path / "run"), "--checkpoint", str(tmp_path / "m2d.pt"),
                                 "--reference", str(tmp_path / "e.npz"), "--out", str(tmp_path / "out"), "-j0"])
    assert result.exit_code == 0, result.output
    rows = {r["scan_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert rows["normal_00100"]["fitness"] != "out" and rows["normal_00100"]["feature_distance"] != ""
    assert rows["inverted_00101"]["fitness"] == "out"


def test_the_fitness_columns_are_one_block_of_the_summary() -> None:
    from mri_lrp.fitness.score import FITNESS_COLUMNS
    from mri_lrp.outputs import SUMMARY_COLUMNS

    at = SUMMARY_COLUMNS.index(FITNESS_COLUMNS[0])
    assert SUMMARY_COLUMNS[at:at + len(FITNESS_COLUMNS)] == FITNESS_COLUMNS
    assert SUMMARY_COLUMNS.index("warnings") > at


def test_voxels_far_coarser_than_the_references_are_doubtful(trained: dict[str, Path], tmp_path: Path) -> None:
    volume, affine = ff.phantom(9000)
    coarse = affine.copy()
    coarse[:3, 2] *= 3.0  # every third slice: 18 mm slices where the reference has 6 mm
    path = ff.save(tmp_path / "thick.nii.gz", volume[:, :, ::3], coarse)
    (row,) = ff.assess(trained["checkpoint"], trained["envelope"], [path])
    assert row["fitness"] != "ok"
    assert "voxels of 18 mm along the coarsest axis, the reference's at most 6 mm" in row["fitness_reasons"]


THIN_SPEC = InputSpec(dims=3, channels=1, shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0), orientation="RAS",
                      normalization="zscore")


def _slab(path: Path, slices: int, slice_mm: float = 3.0, in_plane_mm: float = 2.0) -> Path:
    """A smooth blob of 20x20 voxels by `slices` slices."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 20, slices)], indexing="ij"))
    volume = np.exp(-2 * (grid**2).sum(0)) * 1000 + np.random.default_rng(slices).normal(0, 20, grid.shape[1:])
    return ff.save(path, volume, np.diag([in_plane_mm, in_plane_mm, slice_mm, 1.0]))


def _thin_model(path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, ff.WideFirstLayer().eval(), architecture="fitness_factory:WideFirstLayer", kwargs={},
                    class_names=["a", "b"], input_spec=THIN_SPEC)
    return path


def test_the_width_that_counts_is_the_scans_extent_on_the_model_grid(tmp_path: Path) -> None:
    assert checks.input_need(ff.WideFirstLayer()) == 9

    def geometry(path: Path) -> checks.Geometry:
        (ref,), _ = discover([str(path)])
        return checks.geometry(prepare(ref, THIN_SPEC).model_input.space)

    thin = geometry(_slab(tmp_path / "thin.nii.gz", 8))  # 8 slices of 3 mm: 24 mm, 12 voxels of 2 mm
    assert thin.spanned[2] == pytest.approx(12.0) and checks.too_small(thin, 9) == ""
    narrow = geometry(_slab(tmp_path / "narrow.nii.gz", 4))  # 12 mm: 6 model voxels
    assert "fewer than the 9 voxels per axis" in checks.too_small(narrow, 9)
    thumbnail = geometry(_slab(tmp_path / "thumb.nii.gz", 3, slice_mm=24.0, in_plane_mm=24.0))
    assert checks.too_small(thumbnail, 9) == ""  # 3 voxels of its own, blown up: the resampling factor's case
    assert any("coarser than the model's grid" in r for r in checks.geometry_reasons(thumbnail)[0])


def test_a_thin_slab_wide_enough_on_the_model_grid_is_explained_and_a_narrower_one_fails(tmp_path: Path) -> None:
    checkpoint = _thin_model(tmp_path / "wide.pt")
    _slab(tmp_path / "scans" / "thin.nii.gz", 8)
    _slab(tmp_path / "scans" / "narrow.nii.gz", 4)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(tmp_path / "scans"), "--checkpoint", str(checkpoint),
                                 "--out", str(out), "-j0"])
    assert result.exit_code == 3, result.output
    assert [r["scan_id"] for r in read_csv(out / "summary.csv")] == ["thin"]
    (failure,) = read_csv(out / "failures.csv")
    assert failure["source"] == "narrow.nii.gz" and "\n" not in failure["error"]
    assert failure["error"].endswith("fewer than the 9 voxels per axis its first layers read: "
                                     "not an input this model can classify")
    assert "narrow.nii.gz: the scan fills 20.0x20.0x6.0 voxels" in result.output
