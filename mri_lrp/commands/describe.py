"""`inspect` and `info`: what `explain` would read and which model and rules it would use, without running."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from mri_lrp.commands.options import fail, json_option, one_of
from mri_lrp.errors import CheckpointError, MriLrpError, SettingsError, UnsupportedLayerError
from mri_lrp.lrp import COMPOSITES, RULES

INSPECT_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp inspect scans/

  mri-lrp inspect scans/ --json > scans.json
"""


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
            fail(f"{path}: no such file or folder")
    try:
        spec = InputSpec.from_dict(load_config(config).get("input_spec") or {}) if config else InputSpec()
        plan = ChannelPlan.of(spec) if config else None
    except (MriLrpError, ValueError) as e:
        fail(str(e))
    # explain's default filters (MR only, no derived images, no pilots for a 3D model), so the rows match its own
    rows = inspect_rows(scans, volume=volume, channels=plan, scan_filter=ScanFilter(volume_model=spec.dims == 3))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        _print_table(rows, ["scan_id", "source", "kind", "shape", "spacing", "orientation", "series_description",
                            *(["channel_files"] if plan is not None else []), "problems"])
    if not any(r.get("kind") not in ("skipped", "error") and r.get("status") != "skipped" for r in rows):
        raise typer.Exit(4)  # as explain exits when nothing is left to explain (all skipped or unreadable)


INFO_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp info                                   (the shipped demo model)

  mri-lrp info best.pth --config my.toml --composite epsilon-gamma-box
"""


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
                 "model_kwargs": json_option(model_kwargs, "--model-kwargs"), "composite": composite,
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
        fail(str(e))
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
        fail(str(e))
    for line in env.describe():
        typer.echo(line)


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
