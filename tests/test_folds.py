"""Fold ensembles end to end: several checkpoints explained in one run, on real files and real models."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fold_factory import (
    CLASSES,
    as_sequential,
    base_net,
    make_folds,
    make_scans,
    run,
    save_fold,
    volume,
)
from lrp_reference import reference_lrp

from mri_lrp.errors import CheckpointError, SettingsError
from mri_lrp.folds import average_ranks, correlations, kendall_w, leave_one_out, map_agreement, outlier
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.outputs import SUMMARY_COLUMNS

FOLD_SUMMARY = ["folds", "fold_vote", "prob_std", "map_agreement", "region_agreement", "outlier_fold"]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three agreeing folds explained on two scans, with the model input saved (it is the scan's grid)."""
    root = tmp_path_factory.mktemp("folds")
    folds = make_folds(root / "folds", 3)
    scans = make_scans(root / "scans", 2)
    out = root / "out"
    assert run(scans, out, [str(root / "folds" / "fold_*" / "model.pt")], save_model_input=True) == 0
    return {"root": root, "folds": folds, "scans": scans, "out": out}


def test_each_fold_map_equals_the_float64_reference_of_that_fold_for_the_ensemble_class(ensemble: dict) -> None:
    out = ensemble["out"]
    for row in rows(out / "summary.csv"):
        scan_dir = out / "scans" / row["scan_id"]
        x = torch.from_numpy(np.moveaxis(volume(scan_dir / "model_input.nii.gz"), -1, 0))  # (C, I, J, K)
        target = CLASSES.index(row["predicted_class"])
        for k, path in enumerate(ensemble["folds"]):
            net = as_sequential(load_checkpoint(path).model).double()
            want, _ = reference_lrp(net, x, [{"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}] * 3, target=target)
            got = volume(scan_dir / f"relevance_fold{k}.nii.gz")
            scale = float(want.abs().max())
            assert np.abs(got - want.sum(0).numpy()).max() <= 1e-6 * scale, (row["scan_id"], k)


def test_a_fold_map_equals_a_one_checkpoint_run_of_that_fold_for_the_same_target(ensemble: dict,
                                                                                 tmp_path: Path) -> None:
    out = ensemble["out"]
    summary = rows(out / "summary.csv")
    single = tmp_path / "single"
    target = summary[0]["predicted_class"]
    assert run(ensemble["scans"], single, str(ensemble["folds"][1]), target=target) == 0
    got = volume(out / "scans" / summary[0]["scan_id"] / "relevance_fold1.nii.gz")
    want = volume(single / "scans" / summary[0]["scan_id"] / "relevance.nii.gz")
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()



def test_the_overlay_gains_a_row_of_fold_panels_and_the_scan_page_a_folds_section(ensemble: dict,
                                                                                   tmp_path: Path) -> None:
    from PIL import Image

    out = ensemble["out"]
    single = tmp_path / "single"
    assert run(ensemble["scans"], single, str(ensemble["folds"][0])) == 0
    for row in rows(out / "summary.csv"):
        with Image.open(out / "scans" / row["scan_id"] / "overlay.png") as fold_png, \
                Image.open(single / "scans" / row["scan_id"] / "overlay.png") as one_png:
            assert fold_png.width == one_png.width and fold_png.height > one_png.height + 40
            strip = np.asarray(fold_png.convert("RGB"))[one_png.height:]
            assert (strip[..., 0] > strip[..., 2] + 60).any()  # red relevance drawn in the fold panels
        page = next((out / "report" / "scans").glob(f"{row['scan_id']}*.html")).read_text()
        section = page.split('<section id="folds">', 1)[1].split("</section>", 1)[0]
        assert section.count("<tr") == 1 + 3 and all(str(p) in section for p in ensemble["folds"])
    assert not list((single / "report" / "scans").glob("*.html"))[0].read_text().count('id="folds"')
    assert '"key":"map_agreement"' in (out / "report.html").read_text()
    assert '"key":"map_agreement"' not in (single / "report.html").read_text()


def test_mean_and_std_maps_equal_numpys_over_the_fold_maps(ensemble: dict) -> None:
    out = ensemble["out"]
    for row in rows(out / "summary.csv"):
        scan_dir = out / "scans" / row["scan_id"]
        maps = np.stack([volume(scan_dir / f"relevance_fold{k}.nii.gz") for k in range(3)])
        scale = np.abs(maps).max()
        assert np.abs(volume(scan_dir / "relevance.nii.gz") - maps.mean(axis=0)).max() <= 1e-6 * scale
        assert np.abs(volume(scan_dir / "relevance_std.nii.gz") - maps.std(axis=0)).max() <= 1e-6 * scale


def test_ensemble_tables_carry_every_fold_and_the_agreement(ensemble: dict) -> None:
    out, folds = ensemble["out"], ensemble["folds"]
    summary = rows(out / "summary.csv")
    table = rows(out / "folds.csv")
    assert [(r["scan_id"], r["fold"]) for r in table] == [(s["scan_id"], str(k)) for s in summary for k in range(3)]
    marker_probs = {}
    for row in summary:
        assert row["folds"] == "3" and row["outlier_fold"] == "" and "fold" not in row["warnings"]
        assert float(row["map_agreement"]) > 0.8 and float(row["region_agreement"]) > 0.5
        own = [r for r in table if r["scan_id"] == row["scan_id"]]
        probs = [float(r["prob"]) for r in own]
        assert float(row["predicted_prob"]) == pytest.approx(np.mean(probs), rel=1e-5)
        assert float(row["prob_std"]) == pytest.approx(np.std(probs), rel=1e-3, abs=1e-7)
        assert float(row["fold_vote"]) == pytest.approx(np.mean([r["predicted_class"] == row["predicted_class"]
                                                                 for r in own]))
        for k, r in enumerate(own):
            assert r["checkpoint"] == str(folds[k])
            fold_map = volume(out / "scans" / row["scan_id"] / f"relevance_fold{k}.nii.gz")
            assert float(r["relevance_sum"]) == pytest.approx(fold_map.sum(), rel=1e-4)
        marker_probs[row["scan_id"]] = probs
    regions = rows(out / "regions.csv")
    assert {r["fold"] for r in regions} == {"mean", "0", "1", "2"}
    for row in summary:  # every fold's builtin regions add up to its own map's total
        for k in range(3):
            part = [float(r["relevance_sum"]) for r in regions if r["scan_id"] == row["scan_id"]
                    and r["fold"] == str(k) and r["partition"] == "builtin"]
            total = volume(out / "scans" / row["scan_id"] / f"relevance_fold{k}.nii.gz").sum()
            assert sum(part) == pytest.approx(total, rel=1e-4)
    manifest = json.loads((out / "run.json").read_text())
    assert [f["path"] for f in manifest["folds"]] == [str(p) for p in folds]


@pytest.mark.parametrize("case", ["slice model", "target all"])
def test_slice_models_and_target_all_give_each_fold_and_the_mean(tmp_path: Path, case: str) -> None:
    if case == "slice model":
        folds = make_folds(tmp_path / "folds", 3, architecture="cnn2d",
                           spec=InputSpec(dims=2, shape=(8, 8), orientation="RAS"))
        options, volumes = {}, 1
    else:
        folds = make_folds(tmp_path / "folds", 3)
        options, volumes = {"target": "all"}, len(CLASSES)
    scans = make_scans(tmp_path / "scans", 1)
    out = tmp_path / "out"
    assert run(scans, out, [str(p) for p in folds], **options) == 0
    scan_dir = out / "scans" / "scan0"
    maps = np.stack([volume(scan_dir / f"relevance_fold{k}.nii.gz") for k in range(3)])
    assert maps.shape[1:4] == (8, 8, 8) and (maps.shape[4] if maps.ndim == 5 else 1) == volumes
    assert np.abs(maps).max() > 0
    scale = np.abs(maps).max()
    assert np.abs(volume(scan_dir / "relevance.nii.gz") - maps.mean(axis=0)).max() <= 1e-6 * scale
    assert np.abs(volume(scan_dir / "relevance_std.nii.gz") - maps.std(axis=0)).max() <= 1e-6 * scale
    regions = rows(out / "regions.csv")
    per_fold = [r for r in regions if r["fold"] == "1" and r["partition"] == "builtin"]
    assert {r["target_class"] for r in per_fold} == (set(CLASSES) if volumes > 1 else {rows(out / "summary.csv")[0][
        "predicted_class"]})
    assert sum(float(r["relevance_sum"]) for r in per_fold) == pytest.approx(maps[1].sum(), rel=1e-4)
    assert len(rows(out / "folds.csv")) == 3


def test_a_redrawn_fold_is_the_outlier_and_the_warning_names_it(tmp_path: Path) -> None:
    folds = make_folds(tmp_path / "folds", 4, redrawn=2)
    scans = make_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    assert run(scans, out, [str(p) for p in folds]) == 0
    table = rows(out / "folds.csv")
    for row in rows(out / "summary.csv"):
        assert row["outlier_fold"] == "2"
        assert "fold 2's relevance map stands apart" in row["warnings"] and str(folds[2]) in row["warnings"]
        own = {r["fold"]: float(r["map_correlation"]) for r in table if r["scan_id"] == row["scan_id"]}
        assert own["2"] == min(own.values())


def test_every_fold_explains_the_ensemble_class_even_where_its_own_prediction_differs(tmp_path: Path) -> None:
    folds = make_folds(tmp_path / "folds", 3)
    for k, favoured in enumerate(("a", "b", "b")):  # fold 0 leans to a, the others (and so the mean) to b
        net = load_checkpoint(folds[k]).model
        with torch.no_grad():
            net.classifier.bias[CLASSES.index(favoured)] += 4.0
        save_fold(folds[k], net)
    scans = make_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    assert run(scans, out, [str(p) for p in folds]) == 0
    table = rows(out / "folds.csv")
    split = 0
    for row in rows(out / "summary.csv"):
        for r in (r for r in table if r["scan_id"] == row["scan_id"]):
            net = load_checkpoint(folds[int(r["fold"])]).model
            x = torch.from_numpy(volume(scans / f"{row['scan_id']}.nii.gz")).float()
            x = ((x - x[x != 0].mean()) / x[x != 0].std(correction=0))[None, None]  # zscore over voxels != 0
            with torch.no_grad():
                probs = torch.softmax(net(x), dim=1)[0].double()
            assert float(r["prob"]) == pytest.approx(float(probs[CLASSES.index(row["predicted_class"])]), rel=1e-4)
            assert r["predicted_class"] == CLASSES[int(probs.argmax())]
            if r["predicted_class"] != row["predicted_class"]:
                split += 1
                assert f"fold {r['fold']}: {r['predicted_class']}" in row["warnings"]
                assert float(row["fold_vote"]) < 1
    assert split == 2  # fold 0 on both scans


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_folds_with_other_class_names_or_input_shapes_are_refused_before_any_scan(tmp_path: Path) -> None:
    scans = make_scans(tmp_path / "scans", 1)
    good = make_folds(tmp_path / "folds", 2)
    names = save_fold(tmp_path / "names.pt", base_net(), class_names=["a", "b", "x"])
    shape = save_fold(tmp_path / "shape.pt", base_net(), spec=InputSpec(dims=3, shape=(16, 16, 16)))
    out = tmp_path / "out"
    res = run_cli("explain", str(scans), "--checkpoint", str(good[0]), "--checkpoint", str(good[1]),
                  "--checkpoint", str(names), "--out", str(out))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"{names}: fold 2: class names" in res.stderr and "'x'" in res.stderr
    assert not (out / "summary.csv").exists()
    with pytest.raises(CheckpointError, match=r"fold 1: input spec differs .*shape \[16, 16, 16\] \(fold 0: none\)"):
        run(scans, out, [str(good[0]), str(shape)])


def test_checkpoint_globs_and_config_lists_name_the_folds_in_order(tmp_path: Path) -> None:
    from mri_lrp.settings import build_settings

    folds = make_folds(tmp_path / "folds", 3)
    scans = make_scans(tmp_path / "scans", 1)
    s = build_settings({"scans": [str(scans)], "checkpoint": [str(tmp_path / "folds" / "fold_*" / "model.pt")]})
    assert s.checkpoints == tuple(str(p) for p in folds) and s.checkpoint is None
    config = tmp_path / "c.toml"
    config.write_text('checkpoints = ["folds/fold_0/model.pt", "folds/fold_[12]/model.pt"]\n')
    s = build_settings({"scans": [str(scans)]}, str(config))
    assert s.checkpoints == tuple(str(p) for p in folds)
    s = build_settings({"scans": [str(scans)], "checkpoint": [str(folds[1])]}, str(config))  # the command line wins
    assert s.checkpoint == str(folds[1]) and s.checkpoints == ()
    with pytest.raises(SettingsError, match="no file matches"):
        build_settings({"scans": [str(scans)], "checkpoint": [str(tmp_path / "none_*.pt")]})
    with pytest.raises(SettingsError, match="given twice"):
        build_settings({"scans": [str(scans)], "checkpoint": [str(folds[0]), str(folds[0])]})


def test_a_one_checkpoint_run_writes_no_fold_files_and_leaves_the_fold_columns_empty(tmp_path: Path) -> None:
    folds = make_folds(tmp_path / "folds", 1)
    scans = make_scans(tmp_path / "scans", 1)
    out = tmp_path / "out"
    assert run(scans, out, [str(folds[0])]) == 0
    assert not (out / "folds.csv").exists()
    summary = rows(out / "summary.csv")
    assert list(summary[0]) == SUMMARY_COLUMNS and all(summary[0][c] == "" for c in FOLD_SUMMARY)
    scan_dir = out / "scans" / summary[0]["scan_id"]
    assert not [*scan_dir.glob("relevance_fold*"), *scan_dir.glob("relevance_std*")]
    assert "fold" not in rows(out / "regions.csv")[0]
    marker = json.loads((scan_dir / "result.json").read_text())
    assert "folds" not in marker and not set(FOLD_SUMMARY) & set(marker["summary"])
    assert "checkpoints" not in json.loads((out / "run.json").read_text())["settings"]


def test_resume_keeps_finished_fold_scans_and_a_changed_fold_redoes_them(tmp_path: Path) -> None:
    folds = make_folds(tmp_path / "folds", 3)
    scans = make_scans(tmp_path / "scans", 2)
    out = tmp_path / "out"
    paths = [str(p) for p in folds]
    assert run(scans, out, paths) == 0
    first = (out / "folds.csv").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("scans/*/relevance_fold*.nii.gz")}
    assert run(scans, out, paths) == 0
    assert (out / "folds.csv").read_text() == first
    assert {p: p.stat().st_mtime_ns for p in out.glob("scans/*/relevance_fold*.nii.gz")} == stamps
    save_fold(folds[1], base_net(seed=5))  # fold 1 retrained: every scan is redone
    assert run(scans, out, paths) == 0
    assert (out / "folds.csv").read_text() != first
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())


def test_shards_of_a_fold_run_merge_into_the_unsharded_tables(tmp_path: Path) -> None:
    from mri_lrp.merge import merge_outputs

    folds = make_folds(tmp_path / "folds", 3)
    scans = make_scans(tmp_path / "scans", 3)
    paths = [str(p) for p in folds]
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert run(scans, whole, paths) == 0
    for i in range(2):
        assert run(scans, sharded, paths, shard=f"{i}/2", workers=1) == 0  # worker processes write them
        assert (sharded / "parts" / f"shard-{i}-of-2" / "folds.csv").is_file()
    assert merge_outputs([sharded], sharded).ok
    for table in ("folds.csv", "summary.csv", "regions.csv"):
        want, got = rows(whole / table), rows(sharded / table)
        assert len(got) == len(want) and list(got[0]) == list(want[0]), table
        for a, b in zip(got, want, strict=True):  # numbers to float32 rounding: batches differ between runs
            for column in (c for c in a if c != "seconds"):
                try:
                    assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4, abs=1e-6), column
                except ValueError:
                    assert a[column] == b[column], column


def test_agreement_figures_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4, 50))
    corr = correlations(maps)
    np.testing.assert_allclose(corr, np.corrcoef(maps), atol=1e-12)
    assert map_agreement(maps) == pytest.approx(np.corrcoef(maps)[np.triu_indices(4, 1)].mean())
    loo = leave_one_out(maps)
    assert loo[1] == pytest.approx(np.corrcoef(maps[1], maps[[0, 2, 3]].mean(0))[0, 1])
    assert outlier([0.9, 0.85, 0.1, 0.88]) == 2 and outlier([0.9, 0.85, 0.8, 0.88]) is None
    assert outlier([0.1, 0.9]) is None  # two folds: both correlations are the same number
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 0.5])), [1.5, 3, 1.5, 4])
    same = np.tile(np.arange(6.0), (3, 1))
    assert kendall_w(same) == pytest.approx(1.0)
    # 3 raters, 4 items, ranks (1,2,3,4), (2,1,3,4), (1,3,2,4): rank sums 4, 6, 8, 12, S = 35
    scores = -np.array([[1, 2, 3, 4], [2, 1, 3, 4], [1, 3, 2, 4]], dtype=float)
    assert kendall_w(scores) == pytest.approx(12 * 35 / (9 * 60))
    assert kendall_w(np.array([[1.0, 2.0], [2.0, 1.0]])) == pytest.approx(0.0)


def test_explain_scan_with_a_list_of_checkpoints_returns_the_mean_each_fold_and_the_agreement(ensemble: dict) -> None:
    from mri_lrp import explain_scan

    scan = ensemble["scans"] / "scan0.nii.gz"
    res = explain_scan(scan, checkpoint=[str(p) for p in ensemble["folds"]], device="cpu")
    run_dir = ensemble["out"] / "scans" / "scan0"
    assert res.fold_relevance.shape == (3, *res.relevance.shape)
    for k in range(3):
        np.testing.assert_allclose(res.fold_relevance[k], volume(run_dir / f"relevance_fold{k}.nii.gz"),
                                   rtol=1e-5, atol=1e-6 * np.abs(res.fold_relevance).max())
    np.testing.assert_allclose(res.relevance, res.fold_relevance.mean(axis=0), atol=1e-6 * np.abs(res.relevance).max())
    assert res.agreement["folds"] == 3 and 0.8 < res.agreement["map_agreement"] <= 1
    assert [r["fold"] for r in res.folds] == [0, 1, 2]
    assert res.predicted_class == rows(ensemble["out"] / "summary.csv")[0]["predicted_class"]


def test_evaluate_with_folds_adds_each_rules_fold_stability_and_ranks_unstable_rules_lower(tmp_path: Path) -> None:
    from mri_lrp.evaluate import EvaluateOptions, run_evaluate
    from mri_lrp.evaluate.run import rank_rules
    from mri_lrp.lrp import Explainer
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import build_settings

    folds = make_folds(tmp_path / "folds", 3)
    scans = make_scans(tmp_path / "scans", 1)
    options = EvaluateOptions(rules=("alphabeta", "epsilon"), cube=2, steps=3, random_repeats=1, sanity_scans=0)
    for name, given in (("ens", [str(p) for p in folds]), ("one", [str(folds[0])])):
        settings = build_settings({"scans": [str(scans)], "checkpoint": given, "out": str(tmp_path / name),
                                   "workers": 0, "device": "cpu"})
        assert run_evaluate(settings, options, Reporter(quiet=True)) == 0
    ranking = {r["rule"]: r for r in rows(tmp_path / "ens" / "ranking.csv")}
    faith = rows(tmp_path / "ens" / "faithfulness.csv")
    x = torch.from_numpy(volume(scans / "scan0.nii.gz")).float()
    x = ((x - x[x != 0].mean()) / x[x != 0].std(correction=0))[None, None]
    nets = [load_checkpoint(p).model for p in folds]
    with torch.no_grad():
        target = int(torch.stack([torch.softmax(n(x), dim=1) for n in nets]).mean(0).argmax())
    for rule in ("alphabeta", "epsilon"):
        maps = np.stack([Explainer(n, rule=rule)(x, target=target).relevance[0].numpy() for n in nets])
        got = [float(r["value"]) for r in faith if r["rule"] == rule and r["metric"] == "fold_stability"]
        assert got == [pytest.approx(map_agreement(maps), abs=1e-4)]
        assert float(ranking[rule]["fold_stability"]) == pytest.approx(got[0], rel=1e-5)
    assert "fold_stability" not in rows(tmp_path / "one" / "ranking.csv")[0]
    faith_rows = [{"rule": rule, "scan_id": "s", "metric": metric, "value": value}
                  for rule, abpc, stable in (("sharp", 0.5, 0.2), ("steady", 0.3, 0.9))
                  for metric, value in (("abpc", abpc), ("fold_stability", stable))]
    assert [r["rule"] for r in rank_rules(faith_rows, [], ("sharp", "steady"))] == ["steady", "sharp"]


def test_dry_run_lists_the_folds_after_loading_and_checking_them(tmp_path: Path) -> None:
    from mri_lrp.pipeline.plan import make_plan
    from mri_lrp.settings import build_settings

    folds = make_folds(tmp_path / "folds", 2)
    scans = make_scans(tmp_path / "scans", 1)
    lines = make_plan(build_settings({"scans": [str(scans)], "checkpoint": [str(p) for p in folds]})).lines()
    assert any(line.startswith("fold ensemble: 2 checkpoints") and str(folds[1]) in line for line in lines)
    bad = save_fold(tmp_path / "bad.pt", base_net(), class_names=["a", "b", "x"])
    with pytest.raises(CheckpointError, match="fold 1: class names"):
        make_plan(build_settings({"scans": [str(scans)], "checkpoint": [str(folds[0]), str(bad)]}))


def test_each_scan_is_read_and_preprocessed_once_for_every_fold(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import mri_lrp.pipeline.read as read

    calls: dict[str, list[str]] = {"read_scan": [], "to_model": []}

    def counting(name: str):  # noqa: ANN202 - wraps either function with its own signature
        real = getattr(read, name)

        def wrapper(first, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls[name].append(first.scan_id)
            return real(first, *args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(read, name, counting(name))
    folds = make_folds(tmp_path / "folds", 4)
    scans = make_scans(tmp_path / "scans", 3)
    assert run(scans, tmp_path / "out", [str(p) for p in folds]) == 0
    assert {name: sorted(ids) for name, ids in calls.items()} == {name: ["scan0", "scan1", "scan2"] for name in calls}
    assert len(rows(tmp_path / "out" / "folds.csv")) == 3 * 4


def test_a_multi_channel_case_gets_each_folds_map_and_the_mean_of_its_channel_sums(tmp_path: Path) -> None:
    import nibabel as nib

    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.zoo import build_model

    images = tmp_path / "imagesTr"  # an MSD-style 4D stack: volume N is channel N
    images.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.uniform(1, 100, (8, 8, 8, 2)).astype(np.float32), np.eye(4)),
             images / "case_0.nii.gz")
    kwargs = {"in_channels": 2, "num_classes": 3, "width": 4, "depth": 2}
    base = build_model("cnn3d", **kwargs)
    paths = []
    for k in range(3):
        net = build_model("cnn3d", **kwargs)
        net.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=torch.Generator().manual_seed(k)))
        paths.append(tmp_path / f"f{k}.pt")
        save_checkpoint(paths[-1], net.eval(), architecture="cnn3d", kwargs=kwargs, class_names=CLASSES,
                        input_spec=InputSpec(dims=3, channels=2, orientation="RAS"))
    out = tmp_path / "out"
    assert run(images, out, [str(p) for p in paths]) == 0
    scan_dir = out / "scans" / rows(out / "summary.csv")[0]["scan_id"]
    maps = np.stack([volume(scan_dir / f"relevance_fold{k}.nii.gz") for k in range(3)])
    mean = volume(scan_dir / "relevance.nii.gz")
    channels = sum(volume(p) for p in sorted(scan_dir.glob("relevance_ch*.nii.gz")))
    assert maps.shape == (3, 8, 8, 8) and np.abs(maps).max() > 0
    assert np.abs(mean - maps.mean(axis=0)).max() <= 1e-6 * np.abs(maps).max()
    assert np.abs(mean - channels).max() <= 1e-6 * np.abs(maps).max()
