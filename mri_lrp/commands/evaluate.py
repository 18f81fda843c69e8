"""`evaluate`: evidence for choosing a rule (region perturbation and the randomisation test)."""

from __future__ import annotations

from typing import Annotated

import typer

from mri_lrp.commands.options import (
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
from mri_lrp.errors import CheckpointError, SettingsError, UnsupportedLayerError
from mri_lrp.evaluate.perturb import BASELINES
from mri_lrp.lrp import COMPOSITES, RULES

EVALUATE_EXAMPLES = """[bold]Examples[/bold]

  mri-lrp evaluate scans/ --checkpoint best.pth --rules alphabeta,epsilon,zplus,epsilon-plus-flat --out eval/

  mri-lrp evaluate scans/ --masks masks/ --baseline mean --cube 6 --steps 30 --sanity-scans 4
"""


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
               "model_kwargs": json_option(model_kwargs, "--model-kwargs"), "device": device,
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
        fail(str(e), hint=checkpoint_hint(e))
    raise typer.Exit(code)
