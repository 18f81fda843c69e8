"""The `mri-lrp` command line: the Typer app, `explain`, the other commands (``mri_lrp.commands``) registered in
the order help lists them, and the mapping of errors to exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from mri_lrp import __version__
from mri_lrp.commands.calibrate import CALIBRATE_EXAMPLES, calibrate
from mri_lrp.commands.config import config_app
from mri_lrp.commands.describe import INFO_EXAMPLES, INSPECT_EXAMPLES, info, inspect
from mri_lrp.commands.evaluate import EVALUATE_EXAMPLES, evaluate
from mri_lrp.commands.options import (
    CLUSTER,
    EXIT_SOME_FAILED,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    INPUTS,
    MODEL,
    OUTPUTS,
    REGIONS,
    RULES_PANEL,
    AlphaOpt,
    BetaOpt,
    CheckpointOpt,
    DeviceOpt,
    EpsilonOpt,
    GammaOpt,
    InitOpt,
    ModelKwargsOpt,
    ModelOpt,
    ModelOutputOpt,
    ScansArg,
    TrustOpt,
    checkpoint_hint,
    fail,
    json_option,
    one_of,
)
from mri_lrp.commands.runs import COHORT_EXAMPLES, MERGE_EXAMPLES, cohort, merge, refresh_report, report
from mri_lrp.errors import (
    CheckpointError,
    DiskFullError,
    MriLrpError,
    SettingsError,
    UnsupportedLayerError,
    is_disk_full,
)
from mri_lrp.lrp import COMPOSITES, RULES
from mri_lrp.model.spec import NORMALIZATIONS
from mri_lrp.settings import INPUT_SPEC_OPTIONS, LAYOUTS, TARGET_KEYWORDS, Settings, input_spec_options

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Explain what an MRI classifier looks at: Layer-wise Relevance Propagation over DICOM/NIfTI folders.",
    epilog="Run `mri-lrp COMMAND -h` for a command's options and examples. `python -m mri_lrp` works the same.",
)


class SettingsDefaults(TyperCommand):
    """Options default to None ("not given", so a config file can set them); help shows Settings' default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        defaults = Settings()
        for param in self.params:
            value = getattr(defaults, param.name or "", None)
            if param.default is not None or value is None or value in ((), {}) or param.show_default is False:
                continue
            if getattr(param, "is_flag", False):
                if getattr(param, "secondary_opts", None):  # --resume/--no-resume: name the side that is on
                    param.show_default = (param.opts if value else param.secondary_opts)[0]
                continue  # a plain flag is off unless given
            param.show_default = f"{value:g}" if isinstance(value, float) else str(value)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mri-lrp {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Explain what an MRI classifier looks at: Layer-wise Relevance Propagation over DICOM/NIfTI folders."""


EXPLAIN_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp explain scans/ --rule alphabeta --alpha 2 --beta 1 --out results/

  mri-lrp explain scans/ --checkpoint best.pth --config my.toml --input-shape 96,96,96

  mri-lrp explain scans/ --checkpoint 'folds/fold_*/model.pt'     (a fold ensemble, each scan read once)

  mri-lrp explain scans/ --dry-run       (the plan: scans, model, rule per layer; writes nothing)

  mri-lrp config example byo_state_dict > my.toml       (a commented config to start from)
"""


@app.command(cls=SettingsDefaults, epilog=EXPLAIN_EXAMPLES)
def explain(
    scans: ScansArg = None,
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustOpt = None,
    model_output: ModelOutputOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[str | None, typer.Option(
        "--batch-size", "-b", help="Scans per device batch: auto | N.", rich_help_panel=MODEL)] = None,
    rule: Annotated[str | None, typer.Option(
        "--rule", "-r", help=f"LRP rule on every conv/linear layer: {one_of(RULES)}.",
        rich_help_panel=RULES_PANEL)] = None,
    alpha: AlphaOpt = None,
    beta: BetaOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    composite: Annotated[str | None, typer.Option(
        help=f"Per-layer rule preset (overrides --rule): {one_of(COMPOSITES)}.", rich_help_panel=RULES_PANEL)] = None,
    target: Annotated[str | None, typer.Option(
        help=f"Class to explain: {one_of(TARGET_KEYWORDS)} | CLASS_NAME | INDEX.",
        rich_help_panel=RULES_PANEL)] = None,
    init: InitOpt = None,
    volume: Annotated[int | None, typer.Option(
        help="4D NIfTI: explain only this volume (0-based).", rich_help_panel=INPUTS)] = None,
    input_shape: Annotated[str | None, typer.Option(
        help="Model grid size, e.g. 96,96,96 (input spec 'shape'; default: the checkpoint's, else native).",
        rich_help_panel=INPUTS)] = None,
    input_spacing: Annotated[str | None, typer.Option(
        help="Model voxel size in mm, e.g. 1,1,1 (input spec 'spacing').", rich_help_panel=INPUTS)] = None,
    resize: Annotated[bool | None, typer.Option(
        "--resize/--no-resize", help="Resize the scan to --input-shape instead of cropping/padding it "
        "(input spec 'resize').", rich_help_panel=INPUTS)] = None,
    normalization: Annotated[str | None, typer.Option(
        help=f"Intensity normalisation (input spec 'normalization'): {one_of(NORMALIZATIONS)}.",
        rich_help_panel=INPUTS)] = None,
    modality: Annotated[str | None, typer.Option(
        help="DICOM modalities to explain, e.g. MR or MR,CT, or 'any' (default MR); others are skipped, not "
        "failed. NIfTI files carry no modality and are always read.", rich_help_panel=INPUTS)] = None,
    include: Annotated[list[str] | None, typer.Option(
        help="Only inputs whose path relative to the input folder matches this glob ('*' also crosses "
        "folders; repeatable), e.g. 'sub-*/anat/*'.", rich_help_panel=INPUTS)] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Skip inputs whose relative path (or a folder above it) matches this glob (repeatable).",
        rich_help_panel=INPUTS)] = None,
    series: Annotated[str | None, typer.Option(
        help="Only series whose SeriesDescription (file name for NIfTI) matches this regular expression "
        "(case-insensitive), e.g. 'T1|MPRAGE'.", rich_help_panel=INPUTS)] = None,
    keep_derived: Annotated[bool | None, typer.Option(
        "--keep-derived", help="Also read DICOM that is skipped by default (as dcm2niix -i y): derived "
        "images and series of fewer than 3 slices (pilots, single images) for a 3D model.",
        rich_help_panel=INPUTS)] = None,
    derivatives: Annotated[bool | None, typer.Option(
        "--derivatives", help="Also walk a BIDS dataset's derivatives/ folder (pipeline outputs).",
        rich_help_panel=INPUTS)] = None,
    keep_uids: Annotated[bool | None, typer.Option(
        "--keep-uids", help="Add study_uid and series_uid to summary.csv to join results back to the PACS "
        "(never patient name, ID or birth date).", rich_help_panel=OUTPUTS)] = None,
    save_model_input: Annotated[bool | None, typer.Option(
        "--save-model-input", help="Also write scans/<id>/model_input.nii.gz: the preprocessed model input "
        "(channels on the last axis, the model grid's affine) to check the preprocessing in a viewer.",
        rich_help_panel=OUTPUTS)] = None,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="TOML file of options (`mri-lrp config list`); the command line wins.",
        rich_help_panel=INPUTS)] = None,
    atlas: Annotated[str | None, typer.Option(
        help="Label image in the scans' world space.", rich_help_panel=REGIONS)] = None,
    atlas_labels: Annotated[str | None, typer.Option(
        help="Label table (TSV/CSV/FreeSurfer LUT).", rich_help_panel=REGIONS)] = None,
    masks: Annotated[str | None, typer.Option(
        help="Folder of masks matched to scans by id or stem.", rich_help_panel=REGIONS)] = None,
    by_class: Annotated[bool | None, typer.Option(
        "--by-class", help="Also write regions_by_class.csv (mean per region per predicted class).",
        rich_help_panel=REGIONS)] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUTS)] = None,
    resume: Annotated[bool | None, typer.Option(
        "--resume/--no-resume", help="Skip scans already done with the same settings.",
        rich_help_panel=OUTPUTS)] = None,
    quiet: Annotated[bool | None, typer.Option(
        "--quiet", "-q", help="Only failures and the summary.", rich_help_panel=OUTPUTS)] = None,
    layout: Annotated[str | None, typer.Option(
        help=f"Where files go: {one_of(LAYOUTS)} (flat: scans/<id>/; bids: a BIDS-derivatives dataset of BIDS "
        "inputs).",
        rich_help_panel=OUTPUTS)] = None,
    reference: Annotated[str | None, typer.Option(
        help="Input-fitness envelope from `mri-lrp calibrate` (or 'batch': the run's own scans, at least 20): "
        "adds fitness (ok/doubtful/out) and distances to summary.csv.", rich_help_panel=INPUTS)] = None,
    reference_any_model: Annotated[bool | None, typer.Option(
        "--reference-any-model", help="Accept an envelope made with another checkpoint.",
        rich_help_panel=INPUTS)] = None,
    skip_unfit: Annotated[bool | None, typer.Option(
        "--skip-unfit", help="Leave scans whose fitness is 'out' unexplained (listed in skipped.csv).",
        rich_help_panel=INPUTS)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (scans, shard, model, input spec, rule per layer) and exit; "
        "writes nothing.", rich_help_panel=OUTPUTS)] = False,
    cohort: Annotated[bool, typer.Option(
        "--cohort", help="At the end, run `mri-lrp cohort OUT` (clusters per class, shortcut flags, group maps).",
        rich_help_panel=OUTPUTS)] = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", "-j", help="Worker processes, each reading scans and writing their outputs: at least this "
        "many, more where the cores allow (0: everything in this process).", rich_help_panel=CLUSTER)] = None,
    shard: Annotated[str | None, typer.Option(
        help="I/N: take shard I of N (0-based; default: from SLURM or torchrun variables, else all).",
        rich_help_panel=CLUSTER)] = None,
) -> None:
    """Explain every scan found: heatmap overlays, relevance volumes and region tables."""
    cli = dict(locals())
    for name in ("config", "dry_run", "cohort", *INPUT_SPEC_OPTIONS):
        cli.pop(name)
    from mri_lrp.pipeline import run_explain
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import build_settings

    try:
        cli["model_kwargs"] = json_option(model_kwargs, "--model-kwargs")
        spec = input_spec_options(input_shape=input_shape, input_spacing=input_spacing, resize=resize,
                                  normalization=normalization)
        settings = build_settings(cli, config, input_spec=spec)
        code = _dry_run(settings) if dry_run else run_explain(settings, Reporter(quiet=settings.quiet))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        fail(str(e), hint=checkpoint_hint(e))
    except DiskFullError as e:  # some scans written: as a run with failures; none: the output is unusable
        fail(str(e), code=EXIT_SOME_FAILED if e.written else EXIT_USAGE)
    if cohort and not dry_run and code in (0, 3):
        _cohort_after_explain(settings)
    raise typer.Exit(code)


def _cohort_after_explain(settings: Any) -> None:
    """explain --cohort: the analysis of the finished run; a shard's part waits for the merge. A cohort that
    cannot be made costs a warning, never the run's exit code."""
    import os

    from mri_lrp.cohort.run import run_cohort
    from mri_lrp.shard import shard_from_env

    if settings.shard or shard_from_env(os.environ):
        typer.echo("mri-lrp: cohort: a shard's part; run `mri-lrp cohort` on the merged output", err=True)
        return
    try:
        typer.echo(run_cohort(settings.out).describe())
    except SettingsError as e:
        typer.echo(f"mri-lrp: warning: cohort not written: {e}", err=True)
        return
    except Exception as e:  # noqa: BLE001 - the run's results stand; the analysis is a view of them
        typer.echo(f"mri-lrp: warning: cohort not written ({type(e).__name__}: {e}); try `mri-lrp cohort "
                   f"{settings.out}`", err=True)
        return
    refresh_report(Path(settings.out))


def _dry_run(settings: Any) -> int:
    """Print the plan; exit 0, or 4 (as the run would) when there is nothing to explain."""
    from mri_lrp.hints import no_scans_hint
    from mri_lrp.pipeline.plan import make_plan

    plan = make_plan(settings)
    for line in plan.lines():
        typer.echo(line)
    if not plan.found:
        typer.echo(f"mri-lrp: {no_scans_hint(settings.scans, plan.skipped)}", err=True)
        return 4
    return 0


# The other commands, in the order `mri-lrp --help` lists them.
app.command(epilog=INSPECT_EXAMPLES)(inspect)
app.command(cls=SettingsDefaults, epilog=INFO_EXAMPLES)(info)
app.command(epilog=CALIBRATE_EXAMPLES)(calibrate)
app.command(epilog=MERGE_EXAMPLES)(merge)
app.command()(report)
app.command(epilog=COHORT_EXAMPLES)(cohort)
app.command(cls=SettingsDefaults, epilog=EVALUATE_EXAMPLES)(evaluate)
app.add_typer(config_app, name="config")


def main() -> None:
    """Entry point: anything expected becomes one line and exit 2; anything else exit 1, without a traceback
    unless MRI_LRP_DEBUG is set."""
    import os

    try:
        app()
    except MriLrpError as e:
        typer.echo(f"mri-lrp: error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        typer.echo("mri-lrp: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if os.environ.get("MRI_LRP_DEBUG"):
            raise
        if is_disk_full(e):  # a command without a message of its own for it (merge, report, evaluate)
            where = os.path.dirname(e.filename) if isinstance(getattr(e, "filename", None), str) else "output"
            typer.echo(f"mri-lrp: error: {where or '.'}: no space left on device", err=True)
            sys.exit(EXIT_USAGE)
        typer.echo(f"mri-lrp: unexpected error: {type(e).__name__}: {e} (set MRI_LRP_DEBUG=1 for details)",
                   err=True)
        sys.exit(EXIT_UNEXPECTED)


if __name__ == "__main__":
    main()
