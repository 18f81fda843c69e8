"""The cohort analysis: spectral clustering, group statistics, shortcut probes, metadata joins, the command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cohort_factory import CLASSES, GRID, KWARGS, MARKER, MARKER_CENTRE, head, make_dataset, train

from mri_lrp.cohort import groupmaps, spray
from mri_lrp.cohort.probes import border_mask, head_only_mask, outside_head_note, shortcut_probes
from mri_lrp.cohort.run import run_cohort
from mri_lrp.cohort.scanfacts import load_model_grid, save_model_grid, scan_metadata
from mri_lrp.cohort.tables import join_metadata
from mri_lrp.errors import SettingsError


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def blob(volume: np.ndarray, centre: tuple[int, int, int], amount: float, r: int = 3) -> None:
    volume[tuple(slice(c - r, c + r) for c in centre)] += amount


def planted_maps(n: int, groups: list[tuple[int, int, int]], seed: int = 0, size: int = 32,
                 spread: float = 1.0) -> tuple[np.ndarray, list]:
    """Noise maps whose group g has a bump at groups[g] (height 4 +- spread): the truth to recover."""
    rng = np.random.default_rng(seed)
    feats, truth = [], []
    for i in range(n):
        g = i % len(groups)
        volume = rng.gamma(1.0, 1.0, (size,) * 3) * 0.3
        blob(volume, groups[g], 4.0 + rng.uniform(-spread, spread), r=max(1, size // 10))
        feats.append(spray.features(volume))
        truth.append(g)
    return np.stack(feats), truth


def same_partition(labels: np.ndarray, truth: list[int]) -> bool:
    pairs = {(int(a), b) for a, b in zip(labels, truth, strict=True)}
    return len(pairs) == len(set(truth)) == len(set(labels.tolist()))


# ----------------------------------------------------------------------------------------------- spray


def test_spectral_clustering_recovers_three_planted_groups_of_maps() -> None:
    x, truth = planted_maps(60, [(8, 8, 8), (24, 8, 20), (16, 24, 10)])
    result = spray.analyse(x)
    assert result.k == 3 and result.k_from == "eigengap"
    assert same_partition(result.labels, truth)
    assert result.layout.shape == (60, 2) and np.isfinite(result.layout).all()


def test_maps_that_differ_only_by_noise_stay_one_cluster() -> None:
    x, _ = planted_maps(40, [(16, 16, 16)], seed=3, spread=0.0)
    assert spray.analyse(x).k == 1


def test_a_class_larger_than_the_dense_limit_goes_through_the_sparse_eigensolver(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spray, "DENSE_MAX", 30)
    x, truth = planted_maps(60, [(2, 2, 2), (12, 12, 12)], seed=1, size=16)
    result = spray.analyse(x)
    assert result.k == 2 and same_partition(result.labels, truth)
    assert np.all(np.diff(result.eigenvalues) >= -1e-9) and abs(result.eigenvalues[0]) < 1e-6


def test_a_given_cluster_count_overrides_the_eigengap() -> None:
    x, _ = planted_maps(30, [(8, 8, 8), (24, 24, 24)])
    result = spray.analyse(x, clusters=4)
    assert result.k == 4 and result.k_from == "given" and len(set(result.labels.tolist())) == 4


def test_pooling_keeps_the_total_and_limits_the_grid() -> None:
    volume = np.random.default_rng(0).random((56, 64, 50))
    pooled = spray.block_sum(volume, spray.pool_factor(volume.shape))
    assert max(pooled.shape) <= spray.POOL_SIZE and np.isclose(pooled.sum(), volume.sum())


# ----------------------------------------------------------------------------------------------- group maps


def test_sign_flip_threshold_finds_a_true_effect_and_nothing_in_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((20, 400))
    t, info = groupmaps.t_test(noise)
    assert info["t_threshold"] is not None and info["voxels_above"] == 0
    effect = noise.copy()
    effect[:, 7] += 2.0
    t, info = groupmaps.t_test(effect)
    assert abs(t[7]) > info["t_threshold"] and info["voxels_above"] == 1


def test_too_few_scans_for_a_five_percent_threshold_say_so() -> None:
    t, info = groupmaps.t_test(np.random.default_rng(0).standard_normal((3, 10)))
    assert info["t_threshold"] is None and info["exact"] and "too few" in info["note"]


# ----------------------------------------------------------------------------------------------- probes


def test_a_bright_marker_in_the_air_counts_as_outside_the_head() -> None:
    volume = head(np.random.default_rng(0), tumour=False, marker=True)
    mask = head_only_mask(volume)
    assert not mask[MARKER].any() and mask[GRID // 2, GRID // 2, GRID // 2]
    on_marker = np.zeros_like(volume)
    on_marker[MARKER] = 1.0
    on_head = np.zeros_like(volume)
    on_head[12, 12, 12] = 1.0
    spacing = (4.0, 4.0, 4.0)
    assert shortcut_probes(volume, on_marker, spacing)["relevance_outside_head"] == 1.0
    assert shortcut_probes(volume, on_head - on_marker, spacing) == {"relevance_outside_head": 0.0,
                                                                     "relevance_border": 0.0}


def test_border_share_counts_the_edge_and_the_padding() -> None:
    volume = head(np.random.default_rng(0), tumour=False, marker=False)
    relevance = np.zeros_like(volume)
    relevance[0, 12, 12] = 1.0     # on the edge
    relevance[12, 12, 12] = 1.0    # in the head
    probes = shortcut_probes(volume, relevance, (4.0, 4.0, 4.0), padding_positive=2.0)
    assert probes == {"relevance_outside_head": 0.75, "relevance_border": 0.75}
    assert border_mask((10, 10, 1), (2.0, 2.0, 2.0))[:, :, 0].sum() == 100 - 4 * 4  # 3 voxels = 6 mm > 5 mm


def test_a_map_without_positive_relevance_has_no_shares() -> None:
    volume = head(np.random.default_rng(0), tumour=False, marker=False)
    assert shortcut_probes(volume, -np.ones_like(volume), (1.0, 1.0, 1.0))["relevance_border"] == ""


def test_model_grid_copy_keeps_zero_and_the_scale(tmp_path: Path) -> None:
    grid = np.zeros((6, 7, 5), dtype=np.float32)
    grid[1, 2, 3], grid[4, 4, 4], grid[0, 0, 0] = 3e-6, -1.5e-6, 2e-11
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    save_model_grid(tmp_path / "m.nii.gz", grid, affine, "glioma")
    back, got = load_model_grid(tmp_path / "m.nii.gz")
    assert np.allclose(got, affine) and back[0, 1, 0] == 0.0
    assert np.abs(back - grid).max() <= 3e-6 / 32767
    assert nib.load(tmp_path / "m.nii.gz").get_data_dtype() == np.int16


# ----------------------------------------------------------------------------------------------- metadata


def test_scan_metadata_reads_the_bids_sidecar_and_participants_tsv(tmp_path: Path) -> None:
    make_dataset(tmp_path, shortcut=False)
    file = tmp_path / "sub-003" / "anat" / "sub-003_T1w.nii.gz"
    meta = scan_metadata("sub-003__anat__sub-003_T1w", "sub-003/anat/sub-003_T1w.nii.gz", (str(file),), {})
    assert meta == {"scan_id": "sub-003__anat__sub-003_T1w", "source": "sub-003/anat/sub-003_T1w.nii.gz",
                    "case_id": "sub-003_T1w", "participant_id": "sub-003", "manufacturer": "Vendor1",
                    "magnetic_field_strength": "1.5", "site": "site1", "age": "43"}


def test_dicom_facts_win_and_no_patient_field_is_kept() -> None:
    facts = {"manufacturer": "ACME", "series_description": "T1 MPRAGE", "patient_name": "Doe^J"}
    meta = scan_metadata("s1", "dicom/s1", (), facts)
    assert meta["manufacturer"] == "ACME" and meta["series_description"] == "T1 MPRAGE"
    assert "patient_name" not in meta and "Doe^J" not in json.dumps(meta)


def scans() -> dict[str, dict[str, str]]:
    return {
        "a__sub-01_T1w": {"scan_id": "a__sub-01_T1w", "source": "a/sub-01_T1w.nii.gz", "case_id": "sub-01_T1w",
                          "participant_id": "sub-01"},
        "a__sub-01_FLAIR": {"scan_id": "a__sub-01_FLAIR", "source": "a/sub-01_FLAIR.nii.gz",
                            "case_id": "sub-01_FLAIR", "participant_id": "sub-01"},
        "b__sub-02_T1w": {"scan_id": "b__sub-02_T1w", "source": "b/sub-02_T1w.nii.gz", "case_id": "sub-02_T1w",
                          "participant_id": "sub-02"},
    }


@pytest.mark.parametrize(("header", "key_a", "key_b", "joined"), [
    ("scan_id", "a__sub-01_T1w", "b__sub-02_T1w", {"a__sub-01_T1w", "b__sub-02_T1w"}),
    ("case_id", "sub-01_FLAIR", "sub-02_T1w", {"a__sub-01_FLAIR", "b__sub-02_T1w"}),
    ("source", "a/sub-01_T1w.nii.gz", "/data/study/b/sub-02_T1w.nii.gz", {"a__sub-01_T1w", "b__sub-02_T1w"}),
    ("participant_id", "sub-01", "02", {"a__sub-01_T1w", "a__sub-01_FLAIR", "b__sub-02_T1w"}),
])
def test_metadata_joins_by_each_key_kind(tmp_path: Path, header: str, key_a: str, key_b: str,
                                         joined: set[str]) -> None:
    table = tmp_path / "meta.tsv"
    table.write_text(f"site\t{header}\nA\t{key_a}\nB\t{key_b}\n")
    found = scans()
    result = join_metadata(table, found)
    assert result.key == header and result.columns == ["site"] and result.unmatched == []
    assert {s for s, m in found.items() if "site" in m} == joined
    assert found["b__sub-02_T1w"]["site"] == "B"


def test_a_key_column_that_joins_nothing_is_an_error_naming_it(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("case_id,site\nP001,A\nP002,B\n")
    with pytest.raises(SettingsError, match="key column 'case_id' joins no scan"):
        join_metadata(table, scans())


def test_a_table_without_a_key_column_is_an_error_listing_the_keys(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("subject,site\n01,A\n")
    with pytest.raises(SettingsError, match="no key column; name one of scan_id, case_id"):
        join_metadata(table, scans())


def test_a_key_given_twice_is_an_error(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("participant_id,site\nsub-01,A\n01,B\n")
    with pytest.raises(SettingsError, match="on rows 2 and 3"):
        join_metadata(table, scans())


def test_rows_that_join_no_scan_are_counted_and_listed(tmp_path: Path) -> None:
    table = tmp_path / "meta.csv"
    table.write_text("scan_id,site\na__sub-01_T1w,A\nzz_gone,B\nyy_gone,C\n")
    result = join_metadata(table, scans())
    assert result.matched_scans == 1 and result.unmatched == ["zz_gone", "yy_gone"]
    assert result.to_json()["unmatched_rows"] == 2


# ----------------------------------------------------------------------------------------------- the command


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, text=True,
                          timeout=300)


def cohort_cli(*args: str) -> tuple[int, str]:
    """`mri-lrp cohort ...` in this process (exit code, stdout and stderr together)."""
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    result = CliRunner().invoke(app, ["cohort", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An explain --cohort run of an untrained tiny model over 12 scans (4 per site, both classes)."""
    import torch

    from mri_lrp.model.checkpoint import save_checkpoint
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.model.zoo import build_model

    root = tmp_path_factory.mktemp("cohort_cli")
    rng = np.random.default_rng(5)
    data = root / "data"
    for n in range(12):
        folder = data / f"sub-{n:02d}" / "anat"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(head(rng, n % 2 == 0, False), np.diag([4.0, 4.0, 4.0, 1.0])),
                 folder / f"sub-{n:02d}_T1w.nii.gz")
    torch.manual_seed(0)
    spec = InputSpec(dims=3, channels=1, shape=(GRID, GRID, GRID), orientation="RAS", normalization="none")
    save_checkpoint(root / "m.pt", build_model("cnn3d", **KWARGS).eval(), architecture="cnn3d", kwargs=KWARGS,
                    class_names=CLASSES, input_spec=spec)
    done = run_cli("explain", str(data), "--checkpoint", str(root / "m.pt"), "--out", str(root / "out"), "-q",
                   "--workers", "0", "--cohort")
    assert done.returncode == 0, done.stderr
    return root / "out"


def test_explain_writes_the_model_grid_copy_metadata_and_probes(small_run: Path) -> None:
    summary = rows(small_run / "summary.csv")
    assert len(summary) == 12
    for row in summary:
        folder = small_run / "scans" / row["scan_id"]
        marker = json.loads((folder / "result.json").read_text())
        assert {"model_relevance.nii.gz", "metadata.json"} <= set(marker["files"])
        assert nib.load(folder / "model_relevance.nii.gz").shape == (GRID, GRID, GRID)
        assert json.loads((folder / "metadata.json").read_text())["participant_id"].startswith("sub-")
        assert 0.0 <= float(row["relevance_outside_head"]) <= 1.0 and 0.0 <= float(row["relevance_border"]) <= 1.0


def test_explain_cohort_writes_the_named_files(small_run: Path) -> None:
    folder = small_run / "cohort"
    report = json.loads((folder / "cohort.json").read_text())
    for name in ("members.csv", "clusters.csv", "eigengap.png", "embedding.png"):
        assert (folder / name).is_file(), name
    members = rows(folder / "members.csv")
    assert len(members) == 12 and list(members[0])[:7] == ["scan_id", "predicted_class", "cluster", "x", "y",
                                                           "relevance_outside_head", "relevance_border"]
    for cluster in rows(folder / "clusters.csv"):
        assert (folder / f"cluster_{cluster['cluster']}_mean.nii.gz").is_file()
        assert (folder / f"cluster_{cluster['cluster']}_mean.png").is_file()
        assert cluster["flag"] in ("true", "false")
    for name in report["classes"]:
        assert (folder / f"group_{name}_mean.nii.gz").is_file()
        assert json.loads((folder / f"group_{name}_t.json").read_text())["fwe_alpha"] == 0.05
    assert report["scans"] == 12 and report["skipped"] == []
    page = (small_run / "report.html").read_text()
    assert '<section id="cohort">' in page and page.count("<circle") == 12


def test_cohort_joins_a_metadata_table_and_lists_rows_that_join_nothing(small_run: Path, tmp_path: Path) -> None:
    table = tmp_path / "sites.csv"
    table.write_text("participant_id,scanner\n" + "".join(f"sub-{n:02d},S{n % 3}\n" for n in range(12))
                     + "sub-99,S9\n")
    code, output = cohort_cli(str(small_run), "--metadata", str(table))
    assert code == 0, output
    assert "1 rows joined no scan (e.g. sub-99)" in output
    assert {m["scanner"] for m in rows(small_run / "cohort" / "members.csv")} == {"S0", "S1", "S2"}
    assert "purity_scanner" in rows(small_run / "cohort" / "clusters.csv")[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--metadata", "missing.csv"], "no such file"),
    (["--clusters", "0"], "--clusters: must be at least 1"),
])
def test_cohort_mistakes_are_one_line_errors(small_run: Path, args: list[str], message: str) -> None:
    code, output = cohort_cli(str(small_run), *args)
    assert code == 2 and message in output and "Traceback" not in output


def test_cohort_of_a_folder_without_a_run_is_a_one_line_error(tmp_path: Path) -> None:
    code, output = cohort_cli(str(tmp_path))
    assert code == 2 and "no summary.csv" in output


# ----------------------------------------------------------------------------------------------- planted shortcut


def explain_and_cohort(root: Path, shortcut: bool) -> tuple[Path, list[str]]:
    import io

    from mri_lrp.pipeline.run import run_explain
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import Settings

    volumes, labels, marked = make_dataset(root / "data", shortcut)
    checkpoint = train(root / "m.pt", volumes, labels)
    settings = Settings(scans=(str(root / "data"),), checkpoint=str(checkpoint), out=str(root / "out"),
                        workers=0, device="cpu", rule="alphabeta", alpha=2.0, beta=1.0)
    assert run_explain(settings, Reporter(quiet=True, stream=io.StringIO())) == 0
    predicted = [r["predicted_class"] for r in rows(root / "out" / "summary.csv")]
    assert predicted.count("tumour") == predicted.count("healthy")  # the model learnt the classes
    run_cohort(root / "out")
    return root / "out", marked


@pytest.mark.slow
def test_a_planted_shortcut_gives_a_flagged_cluster_of_the_marked_scans_peaking_at_the_marker(
        tmp_path: Path) -> None:
    out, marked = explain_and_cohort(tmp_path, shortcut=True)
    members = rows(out / "cohort" / "members.csv")
    clusters = {c["cluster"]: c for c in rows(out / "cohort" / "clusters.csv")}
    of_marked = {m["cluster"] for m in members if m["scan_id"] in marked}
    assert len(of_marked) == 1, of_marked
    name = of_marked.pop()
    cluster = clusters[name]
    inside = {m["scan_id"] for m in members if m["cluster"] == name}
    assert inside == set(marked)
    assert cluster["flag"] == "true" and cluster["value_site"] == "site1" and float(cluster["purity_site"]) == 1.0
    assert "site = site1" in cluster["why"]
    mean = np.asarray(nib.load(out / "cohort" / f"cluster_{name}_mean.nii.gz").dataobj)
    peak = np.unravel_index(int(np.argmax(mean)), mean.shape)
    assert max(abs(int(p) - c) for p, c in zip(peak, MARKER_CENTRE, strict=True)) <= 1, peak
    summary = {r["scan_id"]: r for r in rows(out / "summary.csv")}
    assert min(float(summary[s]["relevance_outside_head"]) for s in marked) > max(
        float(r["relevance_outside_head"]) for s, r in summary.items() if s not in marked)


@pytest.mark.slow
def test_the_same_pipeline_without_the_shortcut_flags_no_cluster(tmp_path: Path) -> None:
    out, marked = explain_and_cohort(tmp_path, shortcut=False)
    assert marked == []
    clusters = rows(out / "cohort" / "clusters.csv")
    assert [c["cluster"] for c in clusters if c["flag"] == "true"] == []
    assert all(float(c["relevance_outside_head"]) < 0.05 for c in clusters)


def test_cohort_reads_a_merged_run_as_the_run_itself(small_run: Path, tmp_path: Path) -> None:
    from mri_lrp.merge import merge_outputs

    merge_outputs([small_run], tmp_path / "merged")
    result = run_cohort(tmp_path / "merged")
    assert result.scans == 12 and result.skipped == []
    merged = {(m["scan_id"], m["cluster"]) for m in rows(tmp_path / "merged" / "cohort" / "members.csv")}
    run_cohort(small_run)
    assert merged == {(m["scan_id"], m["cluster"]) for m in rows(small_run / "cohort" / "members.csv")}


def test_scans_explained_without_a_model_grid_copy_are_left_out_and_listed(small_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "older"
    shutil.copytree(small_run, copy)
    gone = rows(copy / "summary.csv")[0]["scan_id"]
    (copy / "scans" / gone / "model_relevance.nii.gz").unlink()
    result = run_cohort(copy)
    assert result.scans == 11 and [s["scan_id"] for s in result.skipped] == [gone]
    assert "--no-resume" in result.skipped[0]["reason"]


def test_the_report_section_stays_light_with_two_thousand_scans(tmp_path: Path) -> None:
    import time

    from mri_lrp.outputs import write_csv
    from mri_lrp.report.cohort import cohort_section

    folder = tmp_path / "cohort"
    rng = np.random.default_rng(0)
    members = [{"scan_id": f"s{n:04d}", "predicted_class": "glioma", "cluster": f"glioma-{n % 4}",
                "x": rng.normal(), "y": rng.normal(), "site": f"site{n % 3}"} for n in range(2000)]
    write_csv(folder / "members.csv", members, ["scan_id", "predicted_class", "cluster", "x", "y", "site"])
    write_csv(folder / "clusters.csv", [{"cluster": f"glioma-{c}", "predicted_class": "glioma", "size": 500,
                                         "flag": "true" if c == 3 else "false", "why": "focus: test" if c == 3
                                         else ""} for c in range(4)], ["cluster"])
    (folder / "cohort.json").write_text(json.dumps({"metadata_columns": ["site"]}))
    pages = {m["scan_id"]: {"_page": f"report/scans/{m['scan_id']}.html", "_thumb": ""} for m in members}
    start = time.perf_counter()
    html = cohort_section(tmp_path, pages)
    assert time.perf_counter() - start < 2.0
    assert html.count("<circle") == 2000 and html.count('<a href="report/scans/s') == 2000
    assert "candidates for a person to look at" in html and "glioma-3 (flagged)" in html
    assert '<option value="site">site</option>' in html and "again" not in html
    del pages["s0001"]
    assert "does not cover the run's current scans" in cohort_section(tmp_path, pages)


def test_block_mean_averages_partial_blocks_over_the_voxels_they_have() -> None:
    volume = np.arange(5 * 4 * 2, dtype=np.float32).reshape(5, 4, 2)
    pooled = groupmaps.block_mean(volume, 2)
    assert pooled.shape == (3, 2, 1)
    assert np.isclose(pooled[2, 0, 0], volume[4, 0:2, 0:2].mean())
    assert np.isclose(pooled[0, 0, 0], volume[0:2, 0:2, 0:2].mean())


def test_a_map_mostly_outside_the_head_carries_a_warning_and_a_map_on_the_head_none() -> None:
    volume = np.zeros((20, 20, 20), dtype=np.float32)
    volume[5:15, 5:15, 5:15] = 100.0
    on_head, in_air = np.zeros_like(volume), np.zeros_like(volume)
    on_head[8:12, 8:12, 8:12] = 1.0
    in_air[1, 1, 1], in_air[10, 10, 10] = 3.0, 1.0
    assert outside_head_note(shortcut_probes(volume, on_head, (1.0, 1.0, 1.0))) is None
    note = outside_head_note(shortcut_probes(volume, in_air, (1.0, 1.0, 1.0)))
    assert note is not None and note.startswith("75% of the positive relevance lies outside the head")


def test_a_no_tumour_map_in_the_air_is_flagged_in_summary_and_a_tumour_map_on_its_lesion_is_not(
        tmp_path: Path) -> None:
    """The demo model's evidence for 'no tumour' is an absence: its map lies outside the head and its row says so."""
    samples = Path(__file__).resolve().parents[1] / "sample_scans" / "t1"
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("sub-04_T1w.nii.gz", "sub-05_T1w.nii.gz"):  # no tumour, glioma
        (scans / name).write_bytes((samples / name).read_bytes())
    done = run_cli("explain", str(scans), "--out", str(tmp_path / "out"), "-q", "--workers", "0")
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out" / "summary.csv").open(newline="") as handle:
        rows = {r["scan_id"]: r for r in csv.DictReader(handle)}
    assert rows["sub-04_T1w"]["predicted_class"] == "no_tumour"
    assert float(rows["sub-04_T1w"]["relevance_outside_head"]) >= 0.3
    assert "lies outside the head" in rows["sub-04_T1w"]["warnings"]
    assert rows["sub-05_T1w"]["predicted_class"] == "glioma"
    assert "lies outside the head" not in rows["sub-05_T1w"]["warnings"]
