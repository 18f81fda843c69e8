"""`calibrate`: the reference envelope of a model's inputs, for `explain --reference` (input fitness)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mri_lrp.commands.options import (
    CheckpointOpt,
    ModelKwargsOpt,
    ModelOpt,
    TrustOpt,
    checkpoint_hint,
    fail,
    json_option,
)
from mri_lrp.errors import CheckpointError, SettingsError, UnsupportedLayerError

CALIBRATE_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp calibrate train_scans/ --checkpoint best.pt --out envelope.npz

  mri-lrp explain new_scans/ --checkpoint best.pt --reference envelope.npz
"""


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
        cli["model_kwargs"] = json_option(model_kwargs, "--model-kwargs")
        settings = build_settings(cli, config)
        if Path(out).is_dir():
            raise SettingsError(f"{out}: --out is a folder; name the envelope file (e.g. envelope.npz)")
        calibrate_scans(settings, out, lambda line: typer.echo(f"mri-lrp: {line}", err=True))
    except (SettingsError, CheckpointError, UnsupportedLayerError) as e:
        fail(str(e), hint=checkpoint_hint(e))
