"""The README's description of the output tables matches the columns the code writes: every column documented,
no documented column that is not written, and the excerpts' headers in the files' own order."""

from __future__ import annotations

import re
from pathlib import Path

from mri_lrp.configs import example_configs
from mri_lrp.outputs import FAILURE_COLUMNS, SKIPPED_COLUMNS, SUMMARY_COLUMNS
from mri_lrp.regions import BY_CLASS_COLUMNS, REGION_COLUMNS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def _documented(table_intro: str) -> list[str]:
    """The backticked names in the first cell of each row of the column table that follows ``table_intro``."""
    text = _section("What each output holds").split(table_intro, 1)[1]
    rows = text.split("\n\n", 2)[1].splitlines()[2:]
    return [name for row in rows for name in re.findall(r"`([a-z_<>]+)`", row.split("|")[1])]


def _excerpt_header(first_cell: str) -> list[str]:
    line = next(line for line in README.splitlines() if line.startswith(f"| {first_cell} |") and "---" not in line)
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_summary_and_regions_column_is_documented_and_nothing_else() -> None:
    summary = _documented("`summary.csv`, one row per scan")
    assert sorted(c for c in summary if "<" not in c) == sorted(SUMMARY_COLUMNS)
    regions = _documented("`regions.csv`, one row per scan")
    assert sorted(regions) == sorted([*REGION_COLUMNS, "target_class", "fold"])


def test_failures_skipped_and_by_class_columns_are_listed() -> None:
    by_class = _section("Regions and masks").split("regions_by_class.csv", 1)[1].split("\n- ", 1)[0]
    assert re.findall(r"`([a-z_]+)`", by_class) == BY_CLASS_COLUMNS
    assert f"failures.csv        one row per scan that failed: {', '.join(FAILURE_COLUMNS)}" in README
    assert f"skipped.csv         inputs that hold no scan (notes, localizers, ...): {', '.join(SKIPPED_COLUMNS)}" \
        in README


def test_the_readme_excerpts_show_real_columns_in_the_files_order() -> None:
    for header, columns in ((_excerpt_header("scan_id | predicted_class"), SUMMARY_COLUMNS),
                            (_excerpt_header("scan_id | partition"), REGION_COLUMNS)):
        assert set(header) <= set(columns), header
        assert header == sorted(header, key=columns.index), header
    assert "partition" in _excerpt_header("scan_id | partition")


def test_the_config_list_comment_names_shipped_examples() -> None:
    line = next(line for line in README.splitlines() if line.startswith("mri-lrp config list"))
    named = [n.strip() for n in line.split("#", 1)[1].split(",") if n.strip() != "..."]
    assert named and set(named) <= set(example_configs()), named
