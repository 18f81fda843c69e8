"""The `mri-lrp` command line: parse, build one Settings object, run, map errors to exit codes (only here)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from mri_lrp import __version__
from mri_lrp.errors import (
    CheckpointError,
    DiskFullError,
    MriLrpError,
    SettingsError,
    UnsupportedLayerError,
    is_disk_full,
)
from mri_lrp.evaluate.perturb import BASELINES
from mri_lrp.lrp import COMPOSITES, RULES
from mri_lrp.lrp.explain import INITS
from mri_lrp.model.spec import NORMALIZATIONS
from mri_lrp.settings import DEVICES, INPUT_SPEC_OPTIONS, LAYOUTS, TARGET_KEYWORDS, Settings, input_spec_options

EXIT_USAGE, EXIT_UNEXPECTED, EXIT_SOME_FAILED = 2, 1, 3

#: The panels `explain --help` groups its options into (every option names one with rich_help_panel=).
MODEL, RULES_PANEL, INPUTS, OUTPUTS, REGIONS, CLUSTER = "Model", "Rules", "Inputs", "Outputs", "Regions", "Cluster"

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Explain what an MRI classifier looks at: Layer-wise Relevance Propagation over DICOM/NIfTI folders.",
    epilog="Run `mri-lrp COMMAND -h` for a command's options and examples. `python -m mri_lrp` works the same.",
)


def one_of(names: Any) -> str:
    """The allowed values of a choice option for its help, from the registry that defines them."""
    return " | ".join(str(n) for n in names)


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


def _fail(message: str, code: int = EXIT_USAGE, hint: str | None = None) -> None:
    typer.echo(f"mri-lrp: error: {message}", err=True)
    if hint:
        typer.echo(f"mri-lrp: hint: {hint}", err=True)
    raise typer.Exit(code)


def _error_text(error: Exception, out: str) -> str:
    """An error's line; a full disk names the output folder (a failed write's OSError names no file)."""
    return f"{out}: no space left on device" if is_disk_full(error) else str(error)


def _json_option(text: str | None, name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{name}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name}: expected a JSON object like '{{\"spatial_dims\": 3}}'")
    return value


EXPLAIN_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp explain scans/ --rule alphabeta --alpha 2 --beta 1 --out results/

  mri-lrp explain scans/ --checkpoint best.pth --config my.toml --input-shape 96,96,96

  mri-lrp explain scans/ --checkpoint 'folds/fold_*/model.pt'     (a fold ensemble, each scan read once)

  mri-lrp explain scans/ --dry-run       (the plan: scans, model, rule per layer; writes nothing)

  mri-lrp config example byo_state_dict > my.toml       (a commented config to start from)
"""


#: Options `explain` and `evaluate` share, spelled once.
ScansArg = Annotated[list[str] | None, typer.Argument(help="Scan files or folders (DICOM, NIfTI).")]
CheckpointOpt = Annotated[list[str] | None, typer.Option(
    metavar="<path>", help="Model checkpoint (default: the shipped demo model); repeat it or give a quoted glob "
    "('folds/fold_*/model.pt') to explain a fold ensemble.", rich_help_panel=MODEL)]
ModelOpt = Annotated[str | None, typer.Option(
    help="MODULE:CLASS for a plain state_dict checkpoint.", rich_help_panel=MODEL)]
ModelKwargsOpt = Annotated[str | None, typer.Option(help="JSON keyword arguments for --model.", rich_help_panel=MODEL)]
TrustOpt = Annotated[bool | None, typer.Option(
    "--trust-checkpoint", help="Allow a pickled whole model (unpickling runs code from the file).",
    rich_help_panel=MODEL)]
DeviceOpt = Annotated[str | None, typer.Option(help=f"Where the model runs: {one_of(DEVICES)}.", rich_help_panel=MODEL)]
ModelOutputOpt = Annotated[str | None, typer.Option(
    help="Which output holds the logits when forward returns a tuple or list (INDEX) or a dict (KEY); "
    "default: the first of a tuple or list.", rich_help_panel=MODEL)]
AlphaOpt = Annotated[float | None, typer.Option(
    help="αβ rule: weight of positive contributions.", rich_help_panel=RULES_PANEL)]
BetaOpt = Annotated[float | None, typer.Option(
    help="αβ rule: weight of negative contributions.", rich_help_panel=RULES_PANEL)]
EpsilonOpt = Annotated[float | None, typer.Option(help="ε rule stabiliser.", rich_help_panel=RULES_PANEL)]
GammaOpt = Annotated[float | None, typer.Option(
    help="γ rule: extra weight on positive weights.", rich_help_panel=RULES_PANEL)]
InitOpt = Annotated[str | None, typer.Option(
    help=f"Output relevance to start from: {one_of(INITS)}.", rich_help_panel=RULES_PANEL)]


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
        cli["model_kwargs"] = _json_option(model_kwargs, "--model-kwargs")
        spec = input_spec_options(input_shape=input_shape, input_spacing=input_spacing, resize=resize,
                                  normalization=normalization)
        settings = build_settings(cli, config, input_spec=spec)
        code = _dry_run(settings) if dry_run else run_explain(settings, Reporter(quiet=settings.quiet))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        _fail(str(e), hint=_checkpoint_hint(e))
    except DiskFullError as e:  # some scans written: as a run with failures; none: the output is unusable
        _fail(str(e), code=EXIT_SOME_FAILED if e.written else EXIT_USAGE)
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
    _refresh_report(Path(settings.out))


def _refresh_report(out: Path) -> None:
    from mri_lrp.report import write_report

    try:
        write_report(out)
    except Exception as e:  # noqa: BLE001 - the cohort files stand; the page is a view of them
        typer.echo(f"mri-lrp: warning: report.html not rebuilt ({type(e).__name__}: {e})", err=True)


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


def _checkpoint_hint(error: Exception) -> str | None:
    """A checkpoint whose weights do not fit the named network: say what usually differs."""
    if isinstance(error, CheckpointError) and "do not fit model" in str(error):
        return ("the network must be built exactly as for training: check --model and --model-kwargs "
                "(e.g. in_channels, out_channels, spatial_dims)")
    return None


@app.command(epilog="""[bold]Examples[/bold]

  mri-lrp inspect scans/

  mri-lrp inspect scans/ --json > scans.json
""")
def inspect(
    scans: Annotated[list[str], typer.Argument(help="Scan files or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows for scripts.")] = False,
    volume: Annotated[int | None, typer.Option(help="4D NIfTI: only this volume.")] = None,
    config: Annotated[str | None, typer.Option(help="TOML whose [input_spec] channels / channel_names / "
                                                    "channel_files group the files into multi-channel cases.")] = None,
) -> None:
    """List what `explain` would read, one row per scan (or case), without loading a model."""
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.scans import inspect_rows
    from mri_lrp.scans.cases import ChannelPlan
    from mri_lrp.scans.filters import ScanFilter
    from mri_lrp.settings import load_config

    for path in scans:
        if not Path(path).exists():
            _fail(f"{path}: no such file or folder")
    try:
        spec = InputSpec.from_dict(load_config(config).get("input_spec") or {}) if config else InputSpec()
        plan = ChannelPlan.of(spec) if config else None
    except (MriLrpError, ValueError) as e:
        _fail(str(e))
    # explain's default filters (MR only, no derived images, no pilots for a 3D model), so the rows match its own
    rows = inspect_rows(scans, volume=volume, channels=plan, scan_filter=ScanFilter(volume_model=spec.dims == 3))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, ["scan_id", "source", "kind", "shape", "spacing", "orientation", "series_description",
                            *(["channel_files"] if plan is not None else []), "problems"])
    if not any(r.get("kind") not in ("skipped", "error") and r.get("status") != "skipped" for r in rows):
        raise typer.Exit(4)  # as explain exits when nothing is left to explain (all skipped or unreadable)


@app.command(cls=SettingsDefaults, epilog="""[bold]Examples[/bold]

  mri-lrp info                                   (the shipped demo model)

  mri-lrp info best.pth --config my.toml --composite epsilon-gamma-box
""")
def info(
    checkpoint: Annotated[str | None, typer.Argument(help="Checkpoint (default: the demo model).")] = None,
    model: Annotated[str | None, typer.Option(help="MODULE:CLASS for a plain state_dict.")] = None,
    model_kwargs: Annotated[str | None, typer.Option(help="JSON keyword arguments for --model.")] = None,
    trust_checkpoint: Annotated[bool | None, typer.Option("--trust-checkpoint")] = None,
    model_output: Annotated[str | None, typer.Option(
        help="Which output holds the logits: INDEX of a tuple or list, KEY of a dict.")] = None,
    rule: Annotated[str | None, typer.Option(help=f"Rule to show per layer: {one_of(RULES)}.")] = None,
    alpha: Annotated[float | None, typer.Option(help="αβ rule: weight of positive contributions.")] = None,
    beta: Annotated[float | None, typer.Option(help="αβ rule: weight of negative contributions.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="ε rule stabiliser.")] = None,
    gamma: Annotated[float | None, typer.Option(help="γ rule: extra weight on positive weights.")] = None,
    composite: Annotated[str | None, typer.Option(help=f"Composite to show per layer: {one_of(COMPOSITES)}.")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help=(
        "TOML file as for explain: its model, class names, input spec, rules and overrides are shown."))] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    reference: Annotated[str | None, typer.Option(
        help="Print this input-fitness envelope (from `mri-lrp calibrate`) instead of the model.")] = None,
) -> None:
    """The model: classes, input spec, parameters, and the LRP rule each layer would get."""
    from mri_lrp.model.checkpoint import describe_model, load_checkpoint
    from mri_lrp.settings import load_config

    if reference is not None:
        _print_envelope(reference)
        return
    try:
        given = {"checkpoint": checkpoint, "model": model, "trust_checkpoint": trust_checkpoint, "rule": rule,
                 "model_kwargs": _json_option(model_kwargs, "--model-kwargs"), "composite": composite,
                 "alpha": alpha, "beta": beta, "epsilon": epsilon, "gamma": gamma, "model_output": model_output}
        values = load_config(config) if config else {}
        values.update({k: v for k, v in given.items() if v is not None})
        loaded = load_checkpoint(
            values.get("checkpoint"), model=values.get("model"), model_kwargs=values.get("model_kwargs"),
            class_names=values.get("class_names"),
            input_spec=values.get("input_spec") or None,
            trust_checkpoint=bool(values.get("trust_checkpoint", False)), model_output=values.get("model_output"))
        params = {k: values[k] for k in ("alpha", "beta", "epsilon", "gamma", "model_output") if k in values}
        with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's warning dump
            warnings.simplefilter("always")
            desc = describe_model(loaded, rule=values.get("rule", "alphabeta"),
                                  composite=values.get("composite"), overrides=values.get("overrides") or None,
                                  **params)
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        _fail(str(e))
    for w in caught:
        typer.echo(f"mri-lrp: warning: {w.message}", err=True)
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
        return
    layers = desc.pop("layers", [])
    for key, value in desc.items():
        typer.echo(f"{key:>16}: {value}")
    _print_table([{"layer": la["name"], "type": la["type"], "rule": la["rule"]} for la in layers],
                 ["layer", "type", "rule"])


def _print_envelope(path: str) -> None:
    from mri_lrp.fitness.envelope import Envelope

    try:
        env = Envelope.load(path)
    except SettingsError as e:
        _fail(str(e))
    for line in env.describe():
        typer.echo(line)


@app.command(epilog="""[bold]Examples[/bold]

  mri-lrp calibrate train_scans/ --checkpoint best.pt --out envelope.npz

  mri-lrp explain new_scans/ --checkpoint best.pt --reference envelope.npz
""")
def calibrate(
    scans: Annotated[list[str], typer.Argument(help="Reference scans (the training or validation set).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The envelope file to write (.npz).")],
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustOpt = None,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="TOML file as for explain: the model, input spec and scan filters.")] = None,
) -> None:
    """Record the reference envelope of a model's inputs, for `explain --reference` (input fitness)."""
    from mri_lrp.pipeline.run import calibrate_scans
    from mri_lrp.settings import build_settings

    cli = {"scans": scans, "checkpoint": checkpoint, "model": model, "trust_checkpoint": trust_checkpoint,
           "model_kwargs": None}
    try:
        cli["model_kwargs"] = _json_option(model_kwargs, "--model-kwargs")
        settings = build_settings(cli, config)
        if Path(out).is_dir():
            raise SettingsError(f"{out}: --out is a folder; name the envelope file (e.g. envelope.npz)")
        calibrate_scans(settings, out, lambda line: typer.echo(f"mri-lrp: {line}", err=True))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        _fail(str(e), hint=_checkpoint_hint(e))


@app.command(epilog="""[bold]Examples[/bold]

  mri-lrp merge /scratch/lrp --out /scratch/lrp          (the shards of one sharded run, in place)

  mri-lrp merge run_monday run_tuesday --out all_runs    (separate runs of the same settings)
""")
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
            _fail(f"{d}: no such folder")
    try:
        report = merge_outputs([Path(d) for d in out_dirs], Path(out), allow_mixed=allow_mixed)
    except (SettingsError, OSError) as e:
        _fail(_error_text(e, out))
    typer.echo(report.describe())
    raise typer.Exit(0 if report.ok else 3)


@app.command()
def report(
    out: Annotated[str, typer.Argument(help="A finished run's output folder (of explain or merge).")],
) -> None:
    """Rebuild OUT/report.html (summary, gallery, failures, group plots, a page per scan) from a finished run."""
    from mri_lrp.report import write_report

    if not Path(out).is_dir():
        _fail(f"{out}: no such folder")
    try:
        page = write_report(Path(out))
    except (SettingsError, OSError) as e:
        _fail(_error_text(e, out))
    typer.echo(f"wrote {page}")


@app.command(epilog="""[bold]Examples[/bold]

  mri-lrp cohort results/

  mri-lrp cohort results/ --metadata sites.csv --clusters 3
""")
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
        _fail(f"{out}: no such folder")
    try:
        result = run_cohort(Path(out), clusters=clusters, metadata=metadata)
    except (SettingsError, OSError) as e:
        _fail(str(e))
    typer.echo(result.describe())
    _refresh_report(Path(out))


@app.command(cls=SettingsDefaults, epilog="""[bold]Examples[/bold]

  mri-lrp evaluate scans/ --checkpoint best.pth --rules alphabeta,epsilon,zplus,epsilon-plus-flat --out eval/

  mri-lrp evaluate scans/ --masks masks/ --baseline mean --cube 6 --steps 30 --sanity-scans 4
""")
def evaluate(
    scans: ScansArg = None,
    rules: Annotated[str, typer.Option(
        help=f"Comma-separated rules and composites to compare: {one_of(RULES)} | {one_of(COMPOSITES)}.",
        rich_help_panel=RULES_PANEL)] = "alphabeta,epsilon,zplus,epsilon-plus-flat",
    checkpoint: CheckpointOpt = None,
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    trust_checkpoint: TrustOpt = None,
    model_output: ModelOutputOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[str | None, typer.Option(
        "--batch-size", "-b", help="Perturbed inputs per device batch: auto | N.", rich_help_panel=MODEL)] = None,
    alpha: AlphaOpt = None,
    beta: BetaOpt = None,
    epsilon: EpsilonOpt = None,
    gamma: GammaOpt = None,
    target: Annotated[str | None, typer.Option(
        help="Class to explain and score: predicted | CLASS_NAME | INDEX.", rich_help_panel=RULES_PANEL)] = None,
    init: InitOpt = None,
    cube: Annotated[int, typer.Option(help="Cube edge in model voxels (the perturbed region).",
                                      rich_help_panel="Perturbation")] = 4,
    steps: Annotated[int, typer.Option(help="Perturbation steps per order.", rich_help_panel="Perturbation")] = 20,
    fraction: Annotated[float, typer.Option(help="Share of the cubes replaced at the last step.",
                                            rich_help_panel="Perturbation")] = 0.2,
    baseline: Annotated[str, typer.Option(help=f"What a replaced cube holds: {one_of(BASELINES)}.",
                                          rich_help_panel="Perturbation")] = "blur",
    random_repeats: Annotated[int, typer.Option(help="Random orders averaged for the random baseline.",
                                                rich_help_panel="Perturbation")] = 3,
    sanity_scans: Annotated[int, typer.Option(help="Scans the randomisation test runs on (0: skip it).",
                                              rich_help_panel="Perturbation")] = 2,
    sanity_steps: Annotated[int, typer.Option(help="Cascade steps of the randomisation test.",
                                              rich_help_panel="Perturbation")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random orders and the randomised weights.",
                                      rich_help_panel="Perturbation")] = 0,
    masks: Annotated[str | None, typer.Option(
        help="Folder of lesion masks: adds relevance mass accuracy and pointing game.",
        rich_help_panel=REGIONS)] = None,
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="TOML file of explain options (model, input spec, rule parameters).",
        rich_help_panel=INPUTS)] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUTS)] = "mri-lrp-eval",
    reference: Annotated[str | None, typer.Option(
        help="Input-fitness envelope (`mri-lrp calibrate`): report the share of scans flagged per class.",
        rich_help_panel=INPUTS)] = None,
    reference_any_model: Annotated[bool | None, typer.Option(
        "--reference-any-model", help="Accept an envelope made with another checkpoint.",
        rich_help_panel=INPUTS)] = None,
    quiet: Annotated[bool | None, typer.Option(
        "--quiet", "-q", help="Only failures and the ranking.", rich_help_panel=OUTPUTS)] = None,
) -> None:
    """Evidence for choosing a rule: region perturbation (MoRF/LeRF/random, AOPC) and the randomisation test."""
    from mri_lrp.evaluate import EvaluateOptions, run_evaluate
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import build_settings

    try:
        cli = {"scans": scans, "checkpoint": checkpoint, "model": model, "trust_checkpoint": trust_checkpoint,
               "model_kwargs": _json_option(model_kwargs, "--model-kwargs"), "device": device,
               "batch_size": batch_size, "alpha": alpha, "beta": beta, "epsilon": epsilon, "gamma": gamma,
               "model_output": model_output, "target": target, "init": init, "masks": masks, "out": out,
               "quiet": quiet, "workers": 0, "reference": reference, "reference_any_model": reference_any_model}
        settings = build_settings(cli, config)
        options = EvaluateOptions(
            rules=tuple(r.strip() for r in rules.split(",") if r.strip()), cube=cube, steps=steps,
            fraction=fraction, baseline=baseline, random_repeats=random_repeats, sanity_scans=sanity_scans,
            sanity_steps=sanity_steps, seed=seed)
        code = run_evaluate(settings, options, Reporter(quiet=settings.quiet))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        _fail(str(e), hint=_checkpoint_hint(e))
    raise typer.Exit(code)


config_app = typer.Typer(no_args_is_help=True, help="Example configs that ship with the package.",
                         epilog="[bold]Example[/bold]\n\n  mri-lrp config example alphabeta > my.toml")
app.add_typer(config_app, name="config")


@config_app.command("list")
def config_list() -> None:
    """The example configs, with the first line of each."""
    from mri_lrp.configs import example_configs

    for name, text in example_configs().items():
        first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
        typer.echo(f"{name}\t{first}")


@config_app.command("example")
def config_example(name: Annotated[str, typer.Argument(help="Its name, as `mri-lrp config list` shows it.")]) -> None:
    """Print an example config, to save and edit: `mri-lrp config example alphabeta > my.toml`."""
    from mri_lrp.configs import example_configs

    configs = example_configs()
    if name.removesuffix(".toml") not in configs:
        _fail(f"no example config '{name}' (there are: {', '.join(configs)})")
    typer.echo(configs[name.removesuffix(".toml")], nl=False)


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A rich table on a terminal; tab-separated lines otherwise (easy to grep in logs)."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns)
        for row in rows:
            table.add_row(*(_cell(row.get(c, "")) for c in columns))
        Console().print(table)
    else:
        typer.echo("\t".join(columns))
        for row in rows:
            typer.echo("\t".join(_cell(row.get(c, "")) for c in columns))


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) for v in value):  # a shape or a spacing
            return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        return "; ".join(str(v) for v in value)
    return "" if value is None else str(value)


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
