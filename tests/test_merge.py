"""Merging shard outputs: same tables as one run, gaps and doubles reported, both layouts, idempotent."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from mri_lrp.errors import SettingsError
from mri_lrp.merge import merge_outputs
from mri_lrp.shard import Shard, assign

SUMMARY = ["scan_id", "source", "predicted_class", "status", "seconds"]
REGIONS = ["target_class", "scan_id", "region_id", "region_name", "relevance_sum", "relevance_fraction",
           "relevance_density"]
FAILURES = ["scan_id", "source", "stage", "error"]
SCANS = [f"case{i:02d}_t1" for i in range(10)]
BROKEN = {"case03_t1", "case07_t1"}  # these fail in every run


def summary_row(scan_id: str, seconds: str = "1.5") -> dict[str, str]:
    status = "failed" if scan_id in BROKEN else "ok"
    return {"scan_id": scan_id, "source": f"{scan_id}.nii.gz", "predicted_class": "glioma",
            "status": status, "seconds": seconds}


def region_rows(scan_id: str) -> list[dict[str, str]]:
    # deliberately not alphabetical: the merge must keep each scan's own region order
    return [
        {"target_class": "", "scan_id": scan_id, "region_id": rid, "region_name": name,
         "relevance_sum": f"0.{len(scan_id)}{rid}", "relevance_fraction": "0.5", "relevance_density": "0.1"}
        for rid, name in (("2", "left_front"), ("1", "right_front"))
    ]


def failure_row(scan_id: str) -> dict[str, str]:
    return {"scan_id": scan_id, "source": f"{scan_id}.nii.gz", "stage": "read", "error": "truncated file"}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_tables(folder: Path, scans: list[str], plan: list[str] | None = None,
                 run: dict | None = None, failed: set[str] = BROKEN) -> None:
    """One run's tables for ``scans`` in ``folder`` (rows in the given order), plus per-scan folders."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "summary.csv", SUMMARY, [summary_row(s) for s in scans])
    write_csv(folder / "regions.csv", REGIONS, [r for s in scans if s not in failed for r in region_rows(s)])
    write_csv(folder / "failures.csv", FAILURES, [failure_row(s) for s in scans if s in failed])
    if plan is not None:
        (folder / "plan.txt").write_text("".join(f"{s}\n" for s in plan))
    default = {"settings": {"rule": "alphabeta"},
               "seconds": {"wall": 2.0, "explain": 1.0, "device_busy_fraction": 0.5}}
    (folder / "run.json").write_text(json.dumps(run or default))


def write_scan_folders(out: Path, scans: list[str]) -> None:
    for scan_id in scans:
        if scan_id not in BROKEN:
            (out / "scans" / scan_id).mkdir(parents=True, exist_ok=True)
            (out / "scans" / scan_id / "relevance.nii.gz").write_bytes(scan_id.encode() * 10)


def write_sharded_run(out: Path, count: int, skip: tuple[int, ...] = (), scans: list[str] = SCANS) -> None:
    """A sharded run into ``out``: parts/shard-I-of-N/ with plans, and the shared scans/ folder."""
    for index in range(count):
        if index in skip:
            continue
        share = assign(scans, Shard(index, count))
        write_tables(out / "parts" / Shard(index, count).part_name, share, plan=share)
        write_scan_folders(out, share)


def single_run_tables(tmp_path: Path) -> Path:
    """What one unsharded run over every scan writes (rows sorted by scan_id)."""
    single = tmp_path / "single"
    write_tables(single, sorted(SCANS))
    return single


def test_merged_shards_give_the_same_tables_as_one_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3)
    report = merge_outputs([out], out)
    single = single_run_tables(tmp_path)
    for table in ("summary", "regions", "failures"):
        assert (out / f"{table}.csv").read_text() == (single / f"{table}.csv").read_text(), table
    assert report.ok
    assert (report.succeeded, report.failed) == (8, 2)
    assert report.missing == report.duplicates == report.shards_missing == ()
    assert report.linked_folders == 0  # the per-scan folders already live in out


def test_merged_run_json_counts_scans_sums_timings_and_lists_parts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3)
    merge_outputs([out], out)
    run = json.loads((out / "run.json").read_text())
    assert run["merged"] is True and run["complete"] is True
    assert run["counts"]["scans"] == 10 and run["counts"]["failed"] == 2
    assert run["seconds"] == {"wall": 6.0, "explain": 3.0}  # summed; the ratio is not
    assert run["settings"] == {"rule": "alphabeta"}  # shared by every part, so kept
    assert [part["shard"] for part in run["parts"]] == ["0/3", "1/3", "2/3"]


def test_scan_planned_but_never_written_is_reported_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    part = out / "parts" / "shard-1-of-2"
    lost = assign(SCANS, Shard(1, 2))[0]
    kept = [row for row in read_csv(part / "summary.csv") if row["scan_id"] != lost]
    write_csv(part / "summary.csv", SUMMARY, kept)
    write_csv(part / "failures.csv", FAILURES,
              [row for row in read_csv(part / "failures.csv") if row["scan_id"] != lost])
    report = merge_outputs([out], out)
    assert report.missing == (lost,)
    assert not report.ok
    assert json.loads((out / "run.json").read_text())["missing"] == [lost]


def test_preempted_shard_with_only_a_plan_reports_all_its_scans_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3)
    part = out / "parts" / "shard-2-of-3"
    for table in ("summary", "regions", "failures"):
        (part / f"{table}.csv").unlink()
    report = merge_outputs([out], tmp_path / "merged")
    assert set(report.missing) == set(assign(SCANS, Shard(2, 3)))
    assert report.shards_missing == ()


def test_absent_shard_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3, skip=(1,))
    report = merge_outputs([out], out)
    assert report.shards_missing == ("1/3",)
    assert not report.ok


def test_empty_part_folder_counts_as_an_absent_shard(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3, skip=(1,))
    (out / "parts" / "shard-1-of-3").mkdir()
    report = merge_outputs([out], out)
    assert report.shards_missing == ("1/3",)
    assert any("never got going" in warning for warning in report.warnings)


def test_scan_in_two_shards_summaries_is_reported_once_as_duplicate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    stray = assign(SCANS, Shard(0, 2))[0]
    other = out / "parts" / "shard-1-of-2"
    write_csv(other / "summary.csv", SUMMARY, [*read_csv(other / "summary.csv"), summary_row(stray, "9.9")])
    report = merge_outputs([out], out)
    assert report.duplicates == (stray,)
    assert not report.ok
    rows = [row for row in read_csv(out / "summary.csv") if row["scan_id"] == stray]
    assert [row["seconds"] for row in rows] == ["9.9"]  # one row, from the later input
    assert sum(row["scan_id"] == stray for row in read_csv(out / "regions.csv")) == 0  # shard 1 had none


def test_scan_repeated_within_one_summary_is_a_duplicate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_tables(run, ["case00_t1", "case00_t1", "case01_t1"])
    report = merge_outputs([run], tmp_path / "merged")
    assert report.duplicates == ("case00_t1",)
    merged = read_csv(tmp_path / "merged" / "summary.csv")
    assert [row["scan_id"] for row in merged] == ["case00_t1", "case01_t1"]


def test_success_on_a_later_run_replaces_the_earlier_failure(tmp_path: Path) -> None:
    first, retry = tmp_path / "first", tmp_path / "retry"
    write_tables(first, ["case00_t1", "case03_t1"])             # case03 fails here
    write_tables(retry, ["case03_t1"], failed=set())            # and succeeds on the retry
    report = merge_outputs([first, retry], tmp_path / "merged")
    assert report.duplicates == () and report.recovered == ("case03_t1",)
    assert report.ok and (report.succeeded, report.failed) == (2, 0)
    merged = tmp_path / "merged"
    assert read_csv(merged / "failures.csv") == []
    assert [row["scan_id"] for row in read_csv(merged / "summary.csv")] == ["case00_t1", "case03_t1"]
    assert {row["scan_id"] for row in read_csv(merged / "regions.csv")} == {"case00_t1", "case03_t1"}


def test_both_layouts_from_several_folders_merge_and_scan_folders_are_hard_linked(tmp_path: Path) -> None:
    unsharded, sharded, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    first, rest = SCANS[:4], SCANS[4:]
    write_tables(unsharded, first)
    write_scan_folders(unsharded, first)
    write_sharded_run(sharded, 2, scans=rest)
    report = merge_outputs([unsharded, sharded], merged)
    assert report.ok and report.succeeded + report.failed == len(SCANS)
    assert [row["scan_id"] for row in read_csv(merged / "summary.csv")] == sorted(SCANS)
    linked = sorted(p.name for p in (merged / "scans").iterdir())
    assert linked == sorted(set(SCANS) - BROKEN) and report.linked_folders == len(linked)
    for scan_id, root in (("case00_t1", unsharded), ("case09_t1", sharded)):
        source = root / "scans" / scan_id / "relevance.nii.gz"
        assert os.path.samefile(source, merged / "scans" / scan_id / "relevance.nii.gz")


def test_merging_again_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3)
    first = merge_outputs([out], out)
    tables = {name: (out / f"{name}.csv").read_bytes() for name in ("summary", "regions", "failures")}
    second = merge_outputs([out], out)  # the top-level tables are a merge now and must not count twice
    assert second.duplicates == () and second.succeeded == first.succeeded
    assert {name: (out / f"{name}.csv").read_bytes() for name in tables} == tables
    elsewhere = tmp_path / "elsewhere"
    merge_outputs([out], elsewhere)
    again = merge_outputs([out], elsewhere)
    assert again.ok and (elsewhere / "summary.csv").read_bytes() == tables["summary"]


def test_a_merge_leaves_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    merge_outputs([out], tmp_path / "merged")
    leftovers = [p for p in (tmp_path / "merged").rglob(".*")]
    assert leftovers == []


def test_refuses_to_overwrite_an_unmerged_run(tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    write_tables(run, SCANS[:2])
    write_tables(other, SCANS[2:4])
    before = (run / "summary.csv").read_bytes()
    with pytest.raises(SettingsError, match="not of a merge"):
        merge_outputs([run, other], run)
    assert (run / "summary.csv").read_bytes() == before


def test_folder_without_outputs_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no summary.csv"):
        merge_outputs([tmp_path], tmp_path / "merged")
    with pytest.raises(SettingsError, match="not a folder"):
        merge_outputs([tmp_path / "nope"], tmp_path / "merged")
    with pytest.raises(SettingsError, match="no output folders"):
        merge_outputs([], tmp_path / "merged")


def test_table_without_a_scan_id_column_is_a_settings_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_tables(run, SCANS[:2])
    write_csv(run / "summary.csv", ["id", "x"], [{"id": "a", "x": "1"}])
    with pytest.raises(SettingsError, match="summary.csv: has no scan_id column"):
        merge_outputs([run], tmp_path / "merged")


def test_broken_run_json_is_a_settings_error_naming_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_tables(run, SCANS[:2])
    (run / "run.json").write_text("{not json")
    with pytest.raises(SettingsError, match="run.json"):
        merge_outputs([run], tmp_path / "merged")


def test_columns_missing_from_older_parts_are_left_empty(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    part = out / "parts" / "shard-1-of-2"
    rows = [{**row, "extra": "x"} for row in read_csv(part / "summary.csv")]
    write_csv(part / "summary.csv", [*SUMMARY, "extra"], rows)
    merge_outputs([out], out)
    merged = read_csv(out / "summary.csv")
    assert list(merged[0]) == [*SUMMARY, "extra"]
    share = set(assign(SCANS, Shard(1, 2)))
    assert all(row["extra"] == ("x" if row["scan_id"] in share else "") for row in merged)


def test_shards_that_saw_different_scans_make_the_merge_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    part = out / "parts" / "shard-0-of-2"
    # shard 0 ran when the scan that sorts first by hash was not there yet: every later scan moved over
    first = assign(SCANS, Shard(0, 2))[0]
    seen = assign([s for s in SCANS if s != first], Shard(0, 2))
    write_tables(part, seen, plan=seen)
    report = merge_outputs([out], out)
    assert report.shards_inconsistent == ("0/2", "1/2") and not report.ok
    assert first not in report.missing  # it is in no plan: only the inconsistency reveals the gap
    assert report.duplicates  # and the scans dealt to both shards were written twice


def test_runs_with_different_settings_or_models_are_refused_unless_allowed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, scans, n in ((a, SCANS[:2], 1), (b, SCANS[2:4], 2)):
        run = {"fingerprint": f"f{n}", "checkpoint": {"sha256": f"c{n}"}, "settings": {"x": n}}
        write_tables(folder, scans, run=run)
    with pytest.raises(SettingsError, match="different settings.*--allow-mixed"):
        merge_outputs([a, b], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    report = merge_outputs([a, b], tmp_path / "merged", allow_mixed=True)
    assert any("fingerprint differs" in warning for warning in report.warnings)
    assert any("checkpoint sha256 differs" in warning for warning in report.warnings)
    assert "settings" not in json.loads((tmp_path / "merged" / "run.json").read_text())  # not shared


def test_by_class_table_is_recomputed_over_all_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    for index in range(2):
        (out / "parts" / Shard(index, 2).part_name / "regions_by_class.csv").write_text("stale\n")
    merge_outputs([out], out)
    rows = read_csv(out / "regions_by_class.csv")
    assert [(row["region_name"], row["scans"]) for row in rows] == [("left_front", "8"), ("right_front", "8")]


def test_the_same_folder_given_twice_is_read_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 2)
    report = merge_outputs([out, tmp_path / "out" / ".." / "out"], tmp_path / "merged")
    assert report.ok and report.duplicates == ()
    assert any("given twice" in warning for warning in report.warnings)


def test_description_names_the_problems_and_shortens_long_lists(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_sharded_run(out, 3, skip=(1,))
    part = out / "parts" / "shard-0-of-3"
    for table in ("summary", "regions", "failures"):
        (part / f"{table}.csv").unlink()
    report = merge_outputs([out], tmp_path / "merged")
    text = report.describe(limit=2)
    assert text.splitlines()[0].startswith("merged 2 result set(s)")
    assert f"missing (planned, never written) ({len(report.missing)}): " in text
    assert f"... {len(report.missing) - 2} more" in text
    assert "shards missing (1): 1/3" in text
