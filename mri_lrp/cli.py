"""The `mri-lrp` command line: parse, build one Settings object, run, map errors to exit codes (only here)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from mri_lrp.errors import CheckpointError, MriLrpError, SettingsError, UnsupportedLayerError

EXIT_USAGE, EXIT_UNEXPECTED = 2, 1

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Explain what an MRI classifier looks at: Layer-wise Relevance Propagation over DICOM/NIfTI folders.",
)


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"mri-lrp: error: {message}", err=True)
    raise typer.Exit(code)


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


@app.command()
def explain(
    scans: Annotated[list[str] | None, typer.Argument(help="Scan files or folders (DICOM, NIfTI).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Model checkpoint (default: the shipped demo model).")] = None,
    model: Annotated[str | None, typer.Option(help="MODULE:CLASS for a plain state_dict checkpoint.")] = None,
    model_kwargs: Annotated[str | None, typer.Option(help="JSON keyword arguments for --model.")] = None,
    trust_checkpoint: Annotated[bool | None, typer.Option(
        "--trust-checkpoint", help="Allow a pickled whole model (unpickling runs code from the file).")] = None,
    rule: Annotated[str | None, typer.Option("--rule", "-r", help="LRP rule on every conv/linear layer.")] = None,
    alpha: Annotated[float | None, typer.Option(help="αβ rule: weight of positive contributions.")] = None,
    beta: Annotated[float | None, typer.Option(help="αβ rule: weight of negative contributions.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="ε rule stabiliser.")] = None,
    gamma: Annotated[float | None, typer.Option(help="γ rule: extra weight on positive weights.")] = None,
    composite: Annotated[str | None, typer.Option(help="Per-layer rule preset (overrides --rule).")] = None,
    target: Annotated[str | None, typer.Option(help="predicted | CLASS_NAME | INDEX | all.")] = None,
    init: Annotated[str | None, typer.Option(help="Output relevance: prob | logit | sglrp.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", "-b", help="auto | N.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Reader processes (0: inline).")] = None,
    atlas: Annotated[str | None, typer.Option(help="Label image in the scans' world space.")] = None,
    atlas_labels: Annotated[str | None, typer.Option(help="Label table (TSV/CSV/FreeSurfer LUT).")] = None,
    masks: Annotated[str | None, typer.Option(help="Folder of masks matched to scans by id or stem.")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="TOML file of options.")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: take shard I of N (0-based).")] = None,
    resume: Annotated[bool | None, typer.Option("--resume/--no-resume",
                                                   help="Skip scans already done with the same settings.")] = None,
    quiet: Annotated[bool | None, typer.Option("--quiet", "-q", help="Only failures and the summary.")] = None,
    volume: Annotated[int | None, typer.Option(help="4D NIfTI: explain only this volume (0-based).")] = None,
    by_class: Annotated[bool | None, typer.Option(
        "--by-class", help="Also write regions_by_class.csv (mean per region per predicted class).")] = None,
) -> None:
    """Explain every scan found: heatmap overlays, relevance volumes and region tables."""
    cli = dict(locals())
    cli.pop("config")
    from mri_lrp.pipeline import run_explain
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import build_settings

    cli["model_kwargs"] = _json_option(model_kwargs, "--model-kwargs")
    try:
        settings = build_settings(cli, config)
        code = run_explain(settings, Reporter(quiet=settings.quiet))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        _fail(str(e))
    raise typer.Exit(code)


@app.command()
def inspect(
    scans: Annotated[list[str], typer.Argument(help="Scan files or folders.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows for scripts.")] = False,
    volume: Annotated[int | None, typer.Option(help="4D NIfTI: only this volume.")] = None,
) -> None:
    """List what `explain` would read, one row per scan, without loading a model."""
    from mri_lrp.scans import inspect_rows

    for path in scans:
        if not Path(path).exists():
            _fail(f"{path}: no such file or folder")
    rows = inspect_rows(scans, volume=volume)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, ["scan_id", "source", "kind", "shape", "spacing", "orientation", "series_description",
                            "problems"])
    if not any(r.get("kind") not in ("skipped", "error") for r in rows):
        raise typer.Exit(4)


@app.command()
def info(
    checkpoint: Annotated[str | None, typer.Argument(help="Checkpoint (default: the demo model).")] = None,
    model: Annotated[str | None, typer.Option(help="MODULE:CLASS for a plain state_dict.")] = None,
    model_kwargs: Annotated[str | None, typer.Option(help="JSON keyword arguments for --model.")] = None,
    trust_checkpoint: Annotated[bool | None, typer.Option("--trust-checkpoint")] = None,
    rule: Annotated[str | None, typer.Option(help="Rule to show per layer (default alphabeta).")] = None,
    alpha: Annotated[float | None, typer.Option(help="αβ rule: weight of positive contributions.")] = None,
    beta: Annotated[float | None, typer.Option(help="αβ rule: weight of negative contributions.")] = None,
    epsilon: Annotated[float | None, typer.Option(help="ε rule stabiliser.")] = None,
    gamma: Annotated[float | None, typer.Option(help="γ rule: extra weight on positive weights.")] = None,
    composite: Annotated[str | None, typer.Option(help="Composite to show per layer.")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help=(
        "TOML file as for explain: its model, class names, input spec, rules and overrides are shown."))] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The model: classes, input spec, parameters, and the LRP rule each layer would get."""
    from mri_lrp.model.checkpoint import describe_model, load_checkpoint
    from mri_lrp.model.spec import InputSpec
    from mri_lrp.settings import load_config

    try:
        given = {"checkpoint": checkpoint, "model": model, "trust_checkpoint": trust_checkpoint, "rule": rule,
                 "model_kwargs": _json_option(model_kwargs, "--model-kwargs"), "composite": composite,
                 "alpha": alpha, "beta": beta, "epsilon": epsilon, "gamma": gamma}
        values = load_config(config) if config else {}
        values.update({k: v for k, v in given.items() if v is not None})
        loaded = load_checkpoint(
            values.get("checkpoint"), model=values.get("model"), model_kwargs=values.get("model_kwargs"),
            class_names=values.get("class_names"),
            input_spec=InputSpec.from_dict(values["input_spec"]) if values.get("input_spec") else None,
            trust_checkpoint=bool(values.get("trust_checkpoint", False)))
        params = {k: values[k] for k in ("alpha", "beta", "epsilon", "gamma") if k in values}
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


@app.command()
def merge(
    out_dirs: Annotated[list[str], typer.Argument(help="Output folders of shards (or of earlier runs).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the combined result.")],
) -> None:
    """Combine the outputs of several shards into one result set."""
    from mri_lrp.merge import merge_outputs

    for d in out_dirs:
        if not Path(d).is_dir():
            _fail(f"{d}: no such folder")
    try:
        report = merge_outputs([Path(d) for d in out_dirs], Path(out))
    except (SettingsError, OSError) as e:
        _fail(str(e))
    typer.echo(report.describe())
    raise typer.Exit(0 if report.ok else 3)


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
        typer.echo(f"mri-lrp: unexpected error: {type(e).__name__}: {e} (set MRI_LRP_DEBUG=1 for details)",
                   err=True)
        sys.exit(EXIT_UNEXPECTED)


if __name__ == "__main__":
    main()
