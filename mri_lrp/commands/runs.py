"""`merge`, `report` and `cohort`: the commands that work on finished runs' output folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mri_lrp.commands.options import error_text, fail
from mri_lrp.errors import SettingsError

MERGE_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp merge /scratch/lrp --out /scratch/lrp          (the shards of one sharded run, in place)

  mri-lrp merge run_monday run_tuesday --out all_runs    (separate runs of the same settings)
"""


def merge(
    out_dirs: Annotated[list[str], typer.Argument(help="Output folders of shards (or of earlier runs).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the combined result.")],
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="Merge parts made with different settings or checkpoints (refused otherwise).")] = False,
) -> None:
    """Combine the outputs of several shards into one result set."""
    from mri_lrp.merge import merge_outputs

    for d in out_dirs:
        if not Path(d).is_dir():
            fail(f"{d}: no such folder")
    try:
        report = merge_outputs([Path(d) for d in out_dirs], Path(out), allow_mixed=allow_mixed)
    except (SettingsError, OSError) as e:
        fail(error_text(e, out))
    typer.echo(report.describe())
    raise typer.Exit(0 if report.ok else 3)


def report(
    out: Annotated[str, typer.Argument(help="A finished run's output folder (of explain or merge).")],
) -> None:
    """Rebuild OUT/report.html (summary, gallery, failures, group plots, a page per scan) from a finished run."""
    from mri_lrp.report import write_report

    if not Path(out).is_dir():
        fail(f"{out}: no such folder")
    try:
        page = write_report(Path(out))
    except (SettingsError, OSError) as e:
        fail(error_text(e, out))
    typer.echo(f"wrote {page}")


COHORT_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp cohort results/

  mri-lrp cohort results/ --metadata sites.csv --clusters 3
"""


def cohort(
    out: Annotated[str, typer.Argument(help="A finished run's output folder (of explain or merge).")],
    metadata: Annotated[str | None, typer.Option(
        "--metadata", "-m", help="CSV/TSV of per-scan facts (site, vendor...) keyed by scan_id, case_id, source "
        "or participant_id.")] = None,
    clusters: Annotated[int | None, typer.Option(
        "--clusters", "-k", help="Clusters per class (default: from the eigengap).")] = None,
) -> None:
    """Spectral relevance analysis of a run: clusters per class, shortcut flags, group maps (OUT/cohort/)."""
    from mri_lrp.cohort.run import run_cohort

    if not Path(out).is_dir():
        fail(f"{out}: no such folder")
    try:
        result = run_cohort(Path(out), clusters=clusters, metadata=metadata)
    except (SettingsError, OSError) as e:
        fail(str(e))
    typer.echo(result.describe())
    refresh_report(Path(out))


def refresh_report(out: Path) -> None:
    from mri_lrp.report import write_report

    try:
        write_report(out)
    except Exception as e:  # noqa: BLE001 - the cohort files stand; the page is a view of them
        typer.echo(f"mri-lrp: warning: report.html not rebuilt ({type(e).__name__}: {e})", err=True)
