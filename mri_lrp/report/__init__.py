"""The run as web pages: OUT/report.html (summary, gallery, failures, group plots) and a page per scan."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path) -> Path:
    """Write OUT/report.html and OUT/report/ from a finished run (see mri_lrp.report.build)."""
    from mri_lrp.report.build import write_report as build

    return build(out)


__all__ = ["write_report"]
