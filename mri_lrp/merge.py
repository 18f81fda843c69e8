"""Combine the outputs of shards (or of separate runs) into one result set, as if one run had made it.

Inputs are output folders. Each holds one or more *table sets*: ``parts/shard-I-of-N/`` (a sharded run)
and/or the top-level ``summary.csv``/``regions.csv``/``failures.csv``/``run.json`` (an unsharded run or an
earlier merge). A folder's top-level tables are skipped when its ``run.json`` marks them as a merge and the
folder also has parts, so merging a folder into itself twice gives the same result.

Per scan: a success (a summary row not in that set's failures) beats any failure from another set, so a
scan that failed and then succeeded on a later run counts once, as the success. The scan is *duplicated*
when two sets both succeeded with it (or, with no success anywhere, both failed it); later inputs win.
It is *missing* when a shard's ``plan.txt`` lists it and no set has it. Per-scan folders
(``scans/<scan_id>/``) of the kept rows are hard-linked (copied across file systems) into ``out`` when
they live elsewhere. Every table is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mri_lrp import __version__
from mri_lrp.errors import SettingsError
from mri_lrp.outputs import FAILURE_COLUMNS, SKIPPED_COLUMNS, atomic_write_json, read_csv, write_csv
from mri_lrp.pipeline.layout import BIDSIGNORE, DESCRIPTION, README, files_outside
from mri_lrp.regions import by_class_table
from mri_lrp.report import write_report
from mri_lrp.shard import Shard, assign

TABLES = ("summary", "regions", "failures", "folds")  # folds: only a fold ensemble's runs write it
BY_CLASS_TABLE = "regions_by_class.csv"
TIMING_KEYS = ("seconds", "timings")
_RUN_MERGED_KEY = "merged"


@dataclass
class _TableSet:
    """One run's tables: a shard's part folder or a folder's top level."""

    label: str                       # e.g. "out_a/parts/shard-1-of-3" or "out_b"
    folder: Path                     # where its tables are
    root: Path                       # the output folder whose scans/ holds this set's per-scan folders
    shard: Shard | None
    columns: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    plan: list[str] | None = None
    run: dict | None = None


@dataclass(frozen=True)
class MergeReport:
    """What a merge found; ``ok`` is false when any scan may be missing or doubled.

    ``shards_inconsistent`` lists shards (``I/N``) whose plan.txt disagrees with the others: they ran over a
    different set of scans, so a scan can have fallen between them without being in any plan.
    """

    out: Path
    sources: tuple[str, ...]
    succeeded: int
    failed: int
    missing: tuple[str, ...]
    duplicates: tuple[str, ...]
    shards_missing: tuple[str, ...]
    shards_inconsistent: tuple[str, ...]
    recovered: tuple[str, ...]
    linked_folders: int
    warnings: tuple[str, ...]
    files_missing: tuple[str, ...] = ()  # explained per the tables, but the scan's folder is gone

    @property
    def ok(self) -> bool:
        """True when every planned scan is present exactly once (failed scans count as present)."""
        return not (self.missing or self.duplicates or self.shards_missing or self.shards_inconsistent
                    or self.files_missing)

    def describe(self, limit: int = 10) -> str:
        """A few lines for people and logs: totals first, then each kind of problem with examples."""
        lines = [
            f"merged {len(self.sources)} result set(s) into {self.out}: {self.succeeded + self.failed} scans "
            f"({self.succeeded} explained, {self.failed} failed)"
        ]
        for title, items in (
            ("missing (planned, never written)", self.missing),
            ("present twice", self.duplicates),
            ("explained, but the scan folder is gone", self.files_missing),
            ("shards missing", self.shards_missing),
            ("shards that saw different scans", self.shards_inconsistent),
            ("failed first, then succeeded", self.recovered),
        ):
            if items:
                more = f", ... {len(items) - limit} more" if len(items) > limit else ""
                shown = ", ".join(items[:limit]) + more
                lines.append(f"{title} ({len(items)}): {shown}")
        lines.extend(f"warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = [dict(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SettingsError(f"{path}: cannot be read as CSV ({error})") from None
    if columns and "scan_id" not in columns:
        raise SettingsError(f"{path}: has no scan_id column")
    if any(None in row for row in rows):
        raise SettingsError(f"{path}: a row has more fields than the header")
    return columns, rows


def _read_run(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{path}: expected a JSON object")
    return value


def _load_set(folder: Path, label: str, root: Path, shard: Shard | None) -> _TableSet:
    run = _read_run(folder / "run.json")
    table_set = _TableSet(label=label, folder=folder, root=root, shard=shard, run=run)
    for table in TABLES:
        path = folder / f"{table}.csv"
        if path.is_file():
            table_set.columns[table], table_set.rows[table] = _read_csv(path)
    plan = folder / "plan.txt"
    if plan.is_file():
        lines = plan.read_text(encoding="utf-8").splitlines()
        table_set.plan = [line.strip() for line in lines if line.strip()]
    return table_set


def _has_tables(folder: Path) -> bool:
    return any((folder / f"{table}.csv").is_file() for table in TABLES)


def _discover(out_dirs: list[Path], warnings: list[str]) -> list[_TableSet]:
    """All table sets under the given folders, in input order then shard order."""
    sets: list[_TableSet] = []
    for out_dir in out_dirs:
        if not out_dir.is_dir():
            raise SettingsError(f"{out_dir}: not a folder")
        parts: list[tuple[Shard, Path]] = []
        parts_dir = out_dir / "parts"
        if parts_dir.is_dir():
            for child in sorted(parts_dir.iterdir()):
                shard = Shard.from_part_name(child.name)
                if child.is_dir() and shard is not None:
                    parts.append((shard, child))
                elif not child.name.startswith("."):
                    warnings.append(f"{child}: not a shard-I-of-N folder, ignored")
        parts.sort(key=lambda item: (item[0].count, item[0].index))
        top_run = _read_run(out_dir / "run.json")
        top_is_merge = bool(top_run and top_run.get(_RUN_MERGED_KEY))
        if _has_tables(out_dir) and not (parts and top_is_merge):
            sets.append(_load_set(out_dir, str(out_dir), out_dir, None))
        for shard, child in parts:
            sets.append(_load_set(child, str(child), out_dir, shard))
        if not parts and not _has_tables(out_dir):
            raise SettingsError(f"{out_dir}: no summary.csv, failures.csv or parts/shard-I-of-N/ found")
    return sets


def _missing_shards(sets: list[_TableSet], warnings: list[str]) -> list[str]:
    """Shards absent from 0..N-1 for every N seen (``I/N`` labels); an empty part folder counts as absent."""
    seen: dict[int, set[int]] = {}
    for table_set in sets:
        if table_set.shard is None:
            continue
        seen.setdefault(table_set.shard.count, set())
        if table_set.plan is None and not table_set.rows:
            warnings.append(f"{table_set.label}: no plan.txt and no tables (the shard never got going)")
            continue
        if table_set.plan is None:
            warnings.append(f"{table_set.label}: no plan.txt, so its missing scans cannot be listed")
        seen[table_set.shard.count].add(table_set.shard.index)
    if len(seen) > 1:
        warnings.append(f"parts come from runs split {sorted(seen)} ways; check they cover the same scans")
    return [f"{i}/{count}" for count, got in sorted(seen.items()) for i in range(count) if i not in got]


def _check_plans(sets: list[_TableSet]) -> list[str]:
    """Shards whose plan disagrees with re-dealing the union of a full set of plans (they saw other scans).

    Then a scan may be in no plan at all, so completeness cannot be proven.
    """
    mismatched: list[str] = []
    by_count: dict[int, list[_TableSet]] = {}
    for table_set in sets:
        if table_set.shard is not None and table_set.plan is not None:
            by_count.setdefault(table_set.shard.count, []).append(table_set)
    for count, group in by_count.items():
        if {s.shard.index for s in group} != set(range(count)):
            continue
        universe = sorted({scan_id for s in group for scan_id in s.plan})
        for table_set in group:
            if set(assign(universe, table_set.shard)) != set(table_set.plan):
                mismatched.append(str(table_set.shard))
    return mismatched


def _check_consistency(sets: list[_TableSet], warnings: list[str], allow_mixed: bool = False) -> None:
    """Refuse parts made with different models or result-changing settings (their tables do not mix), or
    only warn with ``allow_mixed``; the refusal names the parts and the settings that differ."""
    checks = {
        "fingerprint": lambda run: run.get("fingerprint"),
        "checkpoint sha256": lambda run: (run.get("checkpoint") or {}).get("sha256"),
    }
    for what, get in checks.items():
        values = {json.dumps(get(s.run)) for s in sets if s.run and get(s.run) is not None}
        if len(values) <= 1:
            continue
        if allow_mixed:
            warnings.append(f"run.json {what} differs between the merged runs")
            continue
        parts = "; ".join(f"{s.label}: {get(s.run)}" for s in sets if s.run and get(s.run) is not None)
        differ = _differing_settings([s.run for s in sets if s.run])
        raise SettingsError(
            f"the parts were made with different settings or models (run.json {what}: {parts})"
            + (f"; settings that differ: {', '.join(differ)}" if differ else "")
            + ". Their tables do not mix: rerun them with the same settings, or pass --allow-mixed to merge anyway")


def _differing_settings(runs: list[dict]) -> list[str]:
    """Result-changing settings whose values are not the same in every run.json."""
    from mri_lrp.settings import RESULT_FIELDS

    settings = [run.get("settings") for run in runs if isinstance(run.get("settings"), dict)]
    return [name for name in RESULT_FIELDS
            if len({json.dumps(s.get(name), sort_keys=True) for s in settings}) > 1]


def _ordered_columns(sets: list[_TableSet], table: str) -> list[str]:
    """Union of the sets' columns for one table, in first-seen order."""
    columns: list[str] = []
    for table_set in sets:
        for column in table_set.columns.get(table, []):
            if column not in columns:
                columns.append(column)
    if not columns:
        columns = list(FAILURE_COLUMNS) if table == "failures" else ["scan_id"]
    return columns


def _link_tree(source: Path, target: Path) -> None:
    """Mirror ``source`` into ``target`` file by file: hard links where possible, copies otherwise."""
    for folder, _dirs, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            _link_file(Path(folder) / name, destination / name)


def _link_file(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to (or else a copy of) ``src``, replaced atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        try:
            shutil.copy2(src, tmp)
        except BaseException:  # a full disk: no half copy left behind
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dst)


def _sum_numbers(values: list[dict]) -> dict:
    """Key-wise sum of the numeric entries of several dicts (nested dicts summed recursively).

    Ratios (keys containing "fraction") do not add up across parts and are left out.
    """
    total: dict = {}
    for value in values:
        for key, item in value.items():
            previous = total.get(key)
            if isinstance(item, bool) or "fraction" in key:
                continue
            if isinstance(item, (int, float)):
                total[key] = (previous if isinstance(previous, (int, float)) else 0) + item
            elif isinstance(item, dict):
                total[key] = _sum_numbers([previous if isinstance(previous, dict) else {}, item])
    return total


def _safe_scan_folder(root: Path, scan_id: str) -> Path | None:
    """``root/scans/<scan_id>`` when the id is a plain folder name and the folder exists."""
    if not scan_id or scan_id in (".", "..") or "/" in scan_id or "\\" in scan_id:
        return None
    folder = root / "scans" / scan_id
    return folder if folder.is_dir() else None


@dataclass
class _Outcome:
    """Which table set each scan's rows come from, and what the comparison between sets found."""

    winner: dict[str, int] = field(default_factory=dict)
    succeeded: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)
    recovered: set[str] = field(default_factory=set)


def _choose(sets: list[_TableSet]) -> _Outcome:
    """Per scan, the set whose rows are kept: the last success, else the last failure."""
    successes: dict[str, list[int]] = {}
    failures: dict[str, list[int]] = {}
    outcome = _Outcome()
    for number, table_set in enumerate(sets):
        failed_here = {row["scan_id"] for row in table_set.rows.get("failures", [])}
        summary_ids = Counter(row["scan_id"] for row in table_set.rows.get("summary", []))
        for scan_id in {*summary_ids, *failed_here}:  # a failure row overrides that set's summary row
            (failures if scan_id in failed_here else successes).setdefault(scan_id, []).append(number)
        outcome.duplicates.update(scan_id for scan_id, times in summary_ids.items() if times > 1)
    for scan_id in {*successes, *failures}:
        chosen = successes.get(scan_id) or failures[scan_id]
        outcome.winner[scan_id] = chosen[-1]
        if len(chosen) > 1:
            outcome.duplicates.add(scan_id)
        if scan_id in successes:
            outcome.succeeded.add(scan_id)
            if scan_id in failures:
                outcome.recovered.add(scan_id)
    return outcome


def _merged_rows(sets: list[_TableSet], outcome: _Outcome, warnings: list[str]) -> dict[str, list[dict]]:
    """The kept rows of every table, sorted by scan_id; summary and failures hold one row per scan."""
    merged: dict[str, list[dict[str, str]]] = {table: [] for table in TABLES}
    orphans = 0
    for number, table_set in enumerate(sets):
        for table in TABLES:
            for row in table_set.rows.get(table, []):
                owner = outcome.winner.get(row["scan_id"])
                if owner == number:
                    merged[table].append(row)
                elif owner is None:
                    orphans += 1
    if orphans:
        warnings.append(f"{orphans} regions rows belong to no scan in the summaries or failures; dropped")
    for table in TABLES:  # stable: keeps each scan's own row order (e.g. its regions)
        merged[table].sort(key=lambda row: row["scan_id"])
    for table in ("summary", "failures"):  # a set listing a scan twice: its later row wins
        last = {row["scan_id"]: row for row in merged[table]}
        merged[table] = [last[scan_id] for scan_id in sorted(last)]
    return merged


def _unique_folders(out_dirs: Iterable[Path], warnings: list[str]) -> list[Path]:
    unique: dict[Path, Path] = {}
    for out_dir in map(Path, out_dirs):
        key = out_dir.resolve()
        if key in unique:
            warnings.append(f"{out_dir}: given twice, read once")
        else:
            unique[key] = out_dir
    return list(unique.values())


def merge_outputs(out_dirs: list[Path], out: Path, allow_mixed: bool = False) -> MergeReport:
    """Merge the result sets found in ``out_dirs`` into ``out`` and report what is missing or doubled.

    Parts made with different settings or checkpoints are refused (SettingsError) unless ``allow_mixed``.
    """
    if not out_dirs:
        raise SettingsError("merge: no output folders given")
    out = Path(out)
    if _has_tables(out) and not (_read_run(out / "run.json") or {}).get(_RUN_MERGED_KEY):
        raise SettingsError(f"{out}: holds the tables of a run, not of a merge; choose another --out")
    warnings: list[str] = []
    sets = _discover(_unique_folders(out_dirs, warnings), warnings)
    shards_missing = _missing_shards(sets, warnings)
    shards_inconsistent = _check_plans(sets)
    if shards_inconsistent:
        warnings.append("shard plans do not match each other: the shards saw different scans")
    _check_consistency(sets, warnings, allow_mixed)
    outcome = _choose(sets)
    merged = _merged_rows(sets, outcome, warnings)
    planned = {scan_id for s in sets for scan_id in (s.plan or [])}

    out.mkdir(parents=True, exist_ok=True)
    linked = 0
    files_missing = []
    for scan_id, number in sorted(outcome.winner.items()):
        source_root = sets[number].root
        folder = _safe_scan_folder(source_root, scan_id)
        if scan_id in outcome.succeeded and folder is None and (source_root / "scans").is_dir():
            files_missing.append(scan_id)  # a table row whose scan folder was lost is not a result
        if folder is not None and source_root.resolve() != out.resolve():
            _link_tree(folder, out / "scans" / scan_id)
            for relative in files_outside(folder, source_root):  # the BIDS layout's sub-*/ files
                _link_file(source_root / relative, out / relative)
            linked += 1

    report = MergeReport(
        out=out,
        sources=tuple(s.label for s in sets),
        succeeded=len(outcome.succeeded),
        failed=len(outcome.winner) - len(outcome.succeeded),
        missing=tuple(sorted(planned - outcome.winner.keys())),
        duplicates=tuple(sorted(outcome.duplicates)),
        shards_missing=tuple(shards_missing),
        shards_inconsistent=tuple(shards_inconsistent),
        recovered=tuple(sorted(outcome.recovered)),
        linked_folders=linked,
        warnings=tuple(warnings),
        files_missing=tuple(files_missing),
    )
    atomic_write_json(out / "run.json", _run_document(sets, report))  # first: marks out as a merge
    for table in TABLES:
        if table == "folds" and not any("folds" in s.columns for s in sets):
            continue
        write_csv(out / f"{table}.csv", merged[table], _ordered_columns(sets, table))
    if any((s.folder / BY_CLASS_TABLE).is_file() for s in sets):  # means over all scans, not per shard
        write_csv(out / BY_CLASS_TABLE, by_class_table(merged["summary"], merged["regions"]), [])
    skipped = {row.get("path", ""): row for s in sets if (s.folder / "skipped.csv").is_file()
               for row in read_csv(s.folder / "skipped.csv")}
    write_csv(out / "skipped.csv", [skipped[p] for p in sorted(skipped)], SKIPPED_COLUMNS)
    for name in (DESCRIPTION, BIDSIGNORE, README):  # a BIDS-layout run's dataset files
        given = next((s.root / name for s in sets if (s.root / name).is_file()), None)
        if given is not None and given.resolve() != (out / name).resolve():
            _link_file(given, out / name)
    try:
        write_report(out)
    except Exception as e:  # noqa: BLE001 - the merged tables stand; the page is a view of them
        report = replace(report, warnings=(*report.warnings, f"report.html not written ({type(e).__name__}: {e})"))
    return report


def _run_document(sets: list[_TableSet], report: MergeReport) -> dict:
    """The merged run.json: counts from the merged tables, summed timings, settings shared by all parts."""
    runs = [s.run for s in sets if s.run is not None]
    per_part = ("counts", "shard", "parts", "started", "fitness", _RUN_MERGED_KEY, *TIMING_KEYS)
    shared = {
        key: value
        for key, value in (runs[0].items() if runs else [])
        if key not in per_part and all(key in run and run[key] == value for run in runs[1:])
    }
    timings = {
        key: _sum_numbers([run[key] for run in runs if isinstance(run.get(key), dict)])
        for key in TIMING_KEYS
        if any(isinstance(run.get(key), dict) for run in runs)
    }
    return {
        **shared,
        _RUN_MERGED_KEY: True,
        "merge": {"version": __version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "counts": {
            "scans": report.succeeded + report.failed,
            "succeeded": report.succeeded,
            "failed": report.failed,
            "missing": len(report.missing),
            "duplicated": len(report.duplicates),
            "recovered": len(report.recovered),
        },
        **timings,
        **({"fitness": _sum_numbers([run["fitness"] for run in runs if isinstance(run.get("fitness"), dict)])}
           if any(isinstance(run.get("fitness"), dict) for run in runs) else {}),
        "complete": report.ok,
        "missing": list(report.missing),
        "duplicates": list(report.duplicates),
        "files_missing": list(report.files_missing),
        "shards_missing": list(report.shards_missing),
        "shards_inconsistent": list(report.shards_inconsistent),
        "warnings": list(report.warnings),
        "parts": [
            {
                "source": s.label,
                "shard": str(s.shard) if s.shard else None,
                "counts": (s.run or {}).get("counts"),
                **{key: (s.run or {}).get(key) for key in TIMING_KEYS if key in (s.run or {})},
            }
            for s in sets
        ],
    }
