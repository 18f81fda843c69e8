"""What the commands share: exit codes, help panels, the options spelled once, and the one-line failure."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from mri_lrp.errors import CheckpointError, SettingsError, is_disk_full
from mri_lrp.lrp.explain import INITS
from mri_lrp.settings import DEVICES

EXIT_USAGE, EXIT_UNEXPECTED, EXIT_SOME_FAILED = 2, 1, 3


#: The panels `explain --help` groups its options into (every option names one with rich_help_panel=).
MODEL, RULES_PANEL, INPUTS, OUTPUTS, REGIONS, CLUSTER = "Model", "Rules", "Inputs", "Outputs", "Regions", "Cluster"


def one_of(names: Any) -> str:
    """The allowed values of a choice option for its help, from the registry that defines them."""
    return " | ".join(str(n) for n in names)


def fail(message: str, code: int = EXIT_USAGE, hint: str | None = None) -> None:
    typer.echo(f"mri-lrp: error: {message}", err=True)
    if hint:
        typer.echo(f"mri-lrp: hint: {hint}", err=True)
    raise typer.Exit(code)


def error_text(error: Exception, out: str) -> str:
    """An error's line; a full disk names the output folder (a failed write's OSError names no file)."""
    return f"{out}: no space left on device" if is_disk_full(error) else str(error)


def json_option(text: str | None, name: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{name}: not valid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name}: expected a JSON object like '{{\"spatial_dims\": 3}}'")
    return value


def checkpoint_hint(error: Exception) -> str | None:
    """A checkpoint whose weights do not fit the named network: say what usually differs."""
    if isinstance(error, CheckpointError) and "do not fit model" in str(error):
        return ("the network must be built exactly as for training: check --model and --model-kwargs "
                "(e.g. in_channels, out_channels, spatial_dims)")
    return None


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
