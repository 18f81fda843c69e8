"""A user's metadata table (``--metadata FILE.csv|tsv``) joined onto the scans of a run.

The key is the table's first column named one of ``KEYS`` (in that order): ``scan_id``; ``case_id`` (or
``case``); ``source`` (or ``path``: the input's path as the run lists it, or any path ending with it);
``participant_id`` (``sub-01`` or ``01``, joining every scan of that subject). A key column that joins no scan
is an error naming the column; rows that join no scan are counted and listed; two rows for one key are an
error (which one would hold?).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from mri_lrp.errors import SettingsError

#: Key columns in the order they are looked for, each with the metadata field it matches.
KEYS = (("scan_id", "scan_id"), ("case_id", "case_id"), ("case", "case_id"), ("source", "source"),
        ("path", "source"), ("participant_id", "participant_id"))


@dataclass
class Joined:
    """What a join did: the key column, the columns it added, and the rows that matched no scan."""

    file: str
    key: str
    columns: list[str]
    rows: int
    matched_scans: int
    unmatched: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "key": self.key, "columns": self.columns, "rows": self.rows,
                "matched_scans": self.matched_scans, "unmatched_rows": len(self.unmatched),
                "unmatched": self.unmatched}


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The table's columns and rows; tab-separated for .tsv (and .txt), else comma-separated."""
    path = Path(path)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SettingsError(f"--metadata {path}: cannot be read as a table ({error})") from None
    if not columns:
        raise SettingsError(f"--metadata {path}: empty file, no header row")
    return columns, rows


def join_metadata(path: str | Path, scans: dict[str, dict[str, str]]) -> Joined:
    """Add the table's columns to each scan's metadata (``scans``: scan_id -> metadata, changed in place)."""
    columns, rows = read_table(path)
    found = next(((column, field_name) for column, field_name in KEYS if column in columns), None)
    if found is None:
        raise SettingsError(f"--metadata {path}: no key column; name one of "
                            f"{', '.join(dict.fromkeys(c for c, _ in KEYS))} (columns: {', '.join(columns)})")
    column, field_name = found
    index: dict[str, list[str]] = {}
    for scan_id, meta in scans.items():
        for value in _key_values(field_name, meta.get(field_name, "")):
            index.setdefault(value, []).append(scan_id)
    added = [c for c in columns if c != column]
    seen: dict[str, int] = {}
    unmatched: list[str] = []
    matched: set[str] = set()
    for number, row in enumerate(rows, start=2):
        key = _normalise(field_name, row.get(column, ""))
        if key in seen:
            raise SettingsError(f"--metadata {path}: {column} '{row.get(column, '')}' is on rows {seen[key]} and "
                                f"{number}; one row per key")
        seen[key] = number
        targets = _lookup(field_name, key, index)
        if not targets:
            unmatched.append(row.get(column, ""))
            continue
        for scan_id in targets:
            scans[scan_id].update({c: row.get(c, "") for c in added})
            matched.add(scan_id)
    if rows and not matched:
        raise SettingsError(f"--metadata {path}: key column '{column}' joins no scan of this run (e.g. "
                            f"'{rows[0].get(column, '')}'; the run's {field_name} values look like "
                            f"'{next(iter(scans.values()), {}).get(field_name, '')}')")
    return Joined(str(path), column, added, len(rows), len(matched), unmatched)


def _normalise(field_name: str, value: str) -> str:
    value = value.strip()
    if field_name == "source":
        return value.replace("\\", "/").rstrip("/")
    if field_name == "participant_id" and value and not value.startswith("sub-"):
        return f"sub-{value}"
    return value


def _key_values(field_name: str, value: str) -> list[str]:
    return [_normalise(field_name, value)] if value else []


def _lookup(field_name: str, key: str, index: dict[str, list[str]]) -> list[str]:
    """The scans a key joins; a source path also joins by its ending (an absolute path to the same file)."""
    if not key:
        return []
    if key in index or field_name != "source":
        return index.get(key, [])
    return [scan for source, ids in index.items() if key.endswith("/" + source) for scan in ids]
