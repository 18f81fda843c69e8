"""`mri-lrp evaluate`: which rule explains this model faithfully, measured on the user's own scans.

For every scan and rule: relevance, then batched region perturbation (MoRF, LeRF, random) scored by the
model's target probability, and mask metrics when a mask is found. On the first few scans, the cascading
randomisation test per rule. Writes faithfulness.csv, curves.csv, sanity.csv, their plots and evaluation.json,
and prints a ranking of the rules.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp import __version__
from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.evaluate.folds import ensemble_target, fold_stability, unstable
from mri_lrp.evaluate.perturb import BASELINES, Curves, as_model, as_volume, perturbation_curves
from mri_lrp.evaluate.plots import plot_curves, plot_sanity
from mri_lrp.evaluate.sanity import (
    SURVIVES_THRESHOLD,
    cascade_points,
    parameter_layers,
    randomised_copies,
    spearman,
    ssim,
)
from mri_lrp.fitness.score import flagged_by_class
from mri_lrp.lrp import COMPOSITES, RULES, Explainer
from mri_lrp.model.checkpoint import LoadedModel
from mri_lrp.model.transform import to_scan
from mri_lrp.outputs import FAILURE_COLUMNS, atomic_write_json, write_csv
from mri_lrp.pipeline.read import Prepared, prepare
from mri_lrp.pipeline.run import (
    find_scans,
    fitness_check,
    load_ensemble,
    load_model,
    model_notices,
    resolve_device,
    resolve_target,
)
from mri_lrp.progress import Reporter
from mri_lrp.regions import find_mask, load_mask, mask_metrics, voxel_volume_ml
from mri_lrp.scans.read import content_notes
from mri_lrp.settings import Settings

FAITHFULNESS_COLUMNS = ["scan_id", "rule", "metric", "value"]
CURVE_COLUMNS = ["scan_id", "rule", "order", "step", "fraction", "score"]
SANITY_COLUMNS = ["rule", "scan_id", "step", "layers_randomised", "layer", "spearman_abs", "spearman", "ssim"]
RANKING_COLUMNS = ["rule", "scans", "aopc_morf", "aopc_lerf", "abpc", "morf_minus_random",
                   "relevance_mass_accuracy", "sanity_spearman_abs", "survives_randomisation"]
# scans evaluate could not read; its own name, so evaluating into an explain run keeps that run's failures.csv
FAILURES_NAME = "evaluation_failures.csv"
EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_SCANS = 0, 3, 4


@dataclass(frozen=True)
class EvaluateOptions:
    """What `evaluate` adds to the explain settings: the rules to compare and how to perturb."""

    rules: tuple[str, ...] = ("alphabeta", "epsilon", "zplus", "epsilon-plus-flat")
    cube: int = 4                  # cube edge in model voxels
    steps: int = 20
    fraction: float = 0.2          # share of the cubes replaced at the last step
    baseline: str = "blur"
    random_repeats: int = 3
    sanity_scans: int = 2          # scans the randomisation test runs on (it re-traces the model per step)
    sanity_steps: int = 5
    seed: int = 0

    def validate(self) -> None:
        unknown = [r for r in self.rules if r not in RULES and r not in COMPOSITES]
        if not self.rules or unknown:
            raise SettingsError(f"--rules: unknown rule or composite {', '.join(unknown) or '(none given)'} "
                                f"(rules: {', '.join(sorted(RULES))}; composites: {', '.join(sorted(COMPOSITES))})")
        if self.baseline not in BASELINES:
            raise SettingsError(f"--baseline: must be one of {', '.join(BASELINES)}, got '{self.baseline}'")
        for name in ("cube", "steps", "random_repeats", "sanity_steps"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.sanity_scans < 0:
            raise SettingsError(f"--sanity-scans: must be >= 0, got {self.sanity_scans}")
        if not 0 < self.fraction <= 1:
            raise SettingsError(f"--fraction: must be in (0, 1], got {self.fraction}")


class _Scorer:
    """Target-class probability of volume-form inputs, in device batches (slice models: mean over slices)."""

    def __init__(self, explainer: Explainer, dims: int, target: int) -> None:
        self.explainer, self.dims, self.target = explainer, dims, target

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.explainer.logits(as_model(v, self.dims)).double(), dim=1)[:, self.target]
        return probs.view(v.shape[0], -1).mean(1) if self.dims == 2 else probs


def run_evaluate(settings: Settings, options: EvaluateOptions, reporter: Reporter) -> int:
    """Evaluate every rule on every scan found; returns the exit code. Setup errors raise."""
    options.validate()
    t_start = time.time()
    # As explain loads it: a partial [input_spec] updates the checkpoint's key by key. With several checkpoints,
    # fold 0 is perturbed and randomised, and every fold gives fold_stability.
    folds = load_ensemble(settings) if settings.checkpoints else []
    loaded = folds[0] if folds else load_model(settings)
    for note in model_notices(loaded):  # the demo model, an assumed spec: the ranking is about this model
        reporter.note(note, always=True)
    device = resolve_device(settings.device)
    model = loaded.model.to(device)
    target = resolve_target(settings.target, loaded.class_names)
    if target == "all":
        raise SettingsError("--target all: evaluate one class per scan (predicted, a name or an index)")
    explainers = {name: _explainer(model, name, settings) for name in options.rules}
    other_folds = {name: [_explainer(f.model.to(device), name, settings) for f in folds[1:]] for name in options.rules}
    fitness = fitness_check(settings, loaded, explainers[options.rules[0]])  # features: the first rule's pass
    fit_rows: list[dict[str, Any]] = []
    refs, skipped = find_scans(settings, loaded)  # explain's filters and multi-channel cases
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = loaded.input_spec
    batch_size = settings.batch_size_value or (32 if device.type == "cuda" else 8)

    faith: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    sanity: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    scan_warnings: dict[str, list[str]] = {}
    sanity_done = 0
    reporter.start(len(refs), verb="evaluate")
    for ref in refs:
        try:
            prepared = prepare(ref, spec)
            mask = _scan_mask(settings, prepared)  # a bad mask fails its scan here, as in explain
        except ScanError as e:
            failures.append({"scan_id": ref.scan_id, "source": ref.source, "stage": e.stage, "error": e.reason})
            reporter.scan_failed(ref.scan_id, f"{ref.location}: {e.reason}")
            continue
        except Exception as e:  # noqa: BLE001 - a reader bug costs one scan, as in explain
            failures.append({"scan_id": ref.scan_id, "source": ref.source, "stage": "read",
                             "error": f"unexpected {type(e).__name__}: {e}"})
            reporter.scan_failed(ref.scan_id, f"{ref.location}: unexpected {type(e).__name__}: {e}")
            continue
        notes = [*content_notes(prepared.scan), *prepared.model_input.notes]
        if notes:  # what explain puts in the summary's warnings: the numbers below inherit it
            scan_warnings[ref.scan_id] = notes
            for note in notes:
                reporter.note(f"warning: {ref.scan_id}: {note}", always=True)
        refused = fitness.refuse(prepared.model_input)
        if refused:
            failures.append({"scan_id": ref.scan_id, "source": ref.source, "stage": "preprocess", "error": refused})
            reporter.scan_failed(ref.scan_id, f"{ref.location}: {refused}")
            continue
        x = prepared.model_input.tensor.to(device)
        batch = x if spec.dims == 2 else x.unsqueeze(0)
        first = options.rules[0]
        t = _scan_target(explainers[first], batch, target, spec.dims) if not folds or target is not None \
            else ensemble_target([explainers[first], *other_folds[first]], batch, spec.dims)
        originals: dict[str, torch.Tensor] = {}
        for name, explainer in explainers.items():
            t0 = time.perf_counter()
            relevance = _relevance(explainer, batch, t, settings.init, spec.dims)
            if name == options.rules[0]:
                feats = fitness.features(batch.shape[0])
                fit = fitness.assess(prepared.model_input, prepared.raw,
                                     None if feats is None else feats.mean(axis=0))
                fit_rows.append({"scan_id": ref.scan_id, "class": loaded.class_names[t], **fit})
            scorer = _Scorer(explainer, spec.dims, t)
            per_input = max(1, batch_size // (x.shape[0] if spec.dims == 2 else 1))
            v = as_volume(x, spec.dims)
            cube = (1, options.cube, options.cube) if spec.dims == 2 else (options.cube,) * 3
            c = perturbation_curves(v, relevance, scorer, cube=cube, steps=options.steps,
                                    fraction=options.fraction, baseline=options.baseline, batch_size=per_input,
                                    random_repeats=options.random_repeats, seed=options.seed)
            metrics = _metrics(c)
            metrics.update(_mask_metrics(mask, prepared, relevance, spec.dims))
            if folds:
                metrics["fold_stability"] = fold_stability(
                    [relevance, *(_relevance(e, batch, t, settings.init, spec.dims) for e in other_folds[name])])
            metrics["seconds"] = round(time.perf_counter() - t0, 3)
            faith += [{"scan_id": ref.scan_id, "rule": name, "metric": k, "value": val} for k, val in metrics.items()]
            curves += _curve_rows(ref.scan_id, name, c)
            originals[name] = relevance.sum(0).cpu()
        if sanity_done < options.sanity_scans:
            sanity += _sanity_rows(model, settings, options, ref.scan_id, batch, t, originals, spec.dims)
            sanity_done += 1
        reporter.scan_done(ref.scan_id, "ok")

    ranking = rank_rules(faith, sanity, options.rules)
    write_csv(out / "faithfulness.csv", faith, FAITHFULNESS_COLUMNS)
    write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    write_csv(out / "sanity.csv", sanity, SANITY_COLUMNS)
    write_csv(out / "ranking.csv", ranking, [*RANKING_COLUMNS, *(["fold_stability"] if folds else [])])
    write_csv(out / FAILURES_NAME, failures, FAILURE_COLUMNS)
    if curves:
        plot_curves(out / "curves.png", curves, options.rules)
    if sanity:
        plot_sanity(out / "sanity.png", sanity, options.rules)
    manifest = _manifest(settings, options, loaded, refs, failures, ranking, time.time() - t_start)
    by_class = flagged_by_class(fit_rows)
    atomic_write_json(out / "evaluation.json", {**manifest, "skipped": [[k.path, k.reason] for k in skipped],
                                                "warnings": scan_warnings, "fitness_by_class": by_class,
                                                "fitness": fit_rows})
    for cls, counts in by_class.items():
        reporter.note(f"input fitness, class {cls}: {counts['flagged_share']:.0%} of {counts['scans']} scans flagged "
                      f"({counts['out']} out, {counts['doubtful']} doubtful)", always=True)
    if (out / "report.html").is_file():  # evaluated into an explain run's folder: its report gains a section
        from mri_lrp.report import write_report

        write_report(out)
    reporter.note(ranking_text(ranking), always=True)
    if not refs or len(failures) == len(refs):
        return EXIT_NO_SCANS
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _explainer(model: torch.nn.Module, name: str, settings: Settings) -> Explainer:
    params = {"alpha": settings.alpha, "beta": settings.beta, "epsilon": settings.epsilon, "gamma": settings.gamma,
              "model_output": settings.model_output}
    if name in COMPOSITES:
        return Explainer(model, composite=name, **params)
    return Explainer(model, rule=name, **params)


def _scan_target(explainer: Explainer, batch: torch.Tensor, target: int | None, dims: int) -> int:
    """The class explained for this scan: the given one, or the prediction (slice models: of the mean prob)."""
    if target is not None:
        return int(target)
    probs = torch.softmax(explainer.logits(batch).double(), dim=1)
    return int(probs.mean(0).argmax()) if dims == 2 else int(probs[0].argmax())


def _relevance(explainer: Explainer, batch: torch.Tensor, target: int, init: str, dims: int) -> torch.Tensor:
    """Volume-form relevance (C, *spatial) for one scan."""
    t = torch.full((batch.shape[0],), target, dtype=torch.long, device=batch.device)
    rel = explainer(batch, target=t, init=init).relevance.detach()
    return as_volume(rel, dims) if dims == 2 else rel[0]


def _metrics(c: Curves) -> dict[str, float]:
    morf, lerf, rnd = c.aopc("morf"), c.aopc("lerf"), c.aopc("random")
    return {"score_initial": float(c.scores["morf"][0]), "aopc_morf": morf, "aopc_lerf": lerf,
            "abpc": morf - lerf, "aopc_random": rnd, "morf_minus_random": morf - rnd}


def _scan_mask(settings: Settings, prepared: Prepared) -> np.ndarray | None:
    """The scan's lesion mask under --masks, read once per scan (every rule is scored against it)."""
    if not settings.masks:
        return None
    path = find_mask(Path(settings.masks), prepared.scan)
    return None if path is None else load_mask(path, prepared.scan)


def _mask_metrics(mask: np.ndarray | None, prepared: Prepared, relevance: torch.Tensor, dims: int) -> dict[str, Any]:
    if mask is None:
        return {}
    model_rel = relevance.transpose(0, 1) if dims == 2 else relevance
    rel = to_scan(model_rel.cpu(), prepared.model_input.space)
    m = mask_metrics(rel, mask, voxel_volume_ml(prepared.scan.affine))
    return {"relevance_mass_accuracy": m["relevance_mass_accuracy"], "pointing_game": float(m["pointing_game"])}


def _curve_rows(scan_id: str, rule: str, c: Curves) -> list[dict[str, Any]]:
    return [{"scan_id": scan_id, "rule": rule, "order": order, "step": k, "fraction": float(c.fractions[k]),
             "score": float(s)} for order, scores in c.scores.items() for k, s in enumerate(scores)]


def _sanity_rows(model: torch.nn.Module, settings: Settings, options: EvaluateOptions, scan_id: str,
                 batch: torch.Tensor, target: int, originals: dict[str, torch.Tensor], dims: int) -> list[dict]:
    """Similarity of each rule's map on the cascade-randomised models to its map on the trained model."""
    layers = parameter_layers(model)
    points = cascade_points(layers, options.sanity_steps)
    rows = []
    for step, (count, layer, randomised) in enumerate(randomised_copies(model, points, options.seed), start=1):
        for name in options.rules:
            rel = _relevance(_explainer(randomised, name, settings), batch, target, settings.init, dims).sum(0)
            base = originals[name]
            rows.append({"rule": name, "scan_id": scan_id, "step": step, "layers_randomised": count,
                         "layer": layer, "spearman_abs": spearman(base.abs(), rel.abs().cpu()),
                         "spearman": spearman(base, rel.cpu()), "ssim": ssim(base, rel.cpu())})
    return rows


def rank_rules(faith: list[dict[str, Any]], sanity: list[dict[str, Any]], rules: tuple[str, ...]) -> list[dict]:
    """One row per rule, best first by the area between the LeRF and MoRF curves (ABPC); rules whose maps survive
    randomisation come last whatever their ABPC (a map that ignores the weights cannot explain the model)."""
    rows = []
    for rule in rules:
        def mean(metric: str, rule: str = rule) -> float | str:
            values = [r["value"] for r in faith if r["rule"] == rule and r["metric"] == metric]
            return float(np.mean(values)) if values else ""
        last = max((r["step"] for r in sanity if r["rule"] == rule), default=None)
        final = [r["spearman_abs"] for r in sanity if r["rule"] == rule and r["step"] == last]
        survives = float(np.mean(final)) if final else ""
        rows.append({
            "rule": rule, "scans": len({r["scan_id"] for r in faith if r["rule"] == rule}),
            "aopc_morf": mean("aopc_morf"), "aopc_lerf": mean("aopc_lerf"), "abpc": mean("abpc"),
            "morf_minus_random": mean("morf_minus_random"), "relevance_mass_accuracy": mean("relevance_mass_accuracy"),
            "sanity_spearman_abs": survives,
            "survives_randomisation": "" if survives == "" else bool(survives >= SURVIVES_THRESHOLD),
            **({"fold_stability": mean("fold_stability")} if any(r["metric"] == "fold_stability" for r in faith)
               else {}),
        })
    return sorted(rows, key=lambda r: (r["survives_randomisation"] is True,
                                       unstable(r),
                                       -r["abpc"] if r["abpc"] != "" else float("inf")))


def ranking_text(ranking: list[dict[str, Any]]) -> str:
    """The one-screen summary: rules best first, with the randomisation flag spelled out."""
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    head = f"{'rule':<24} {'ABPC':>7} {'MoRF':>7} {'LeRF':>7} {'MoRF-rnd':>9} {'RMA':>6} {'rand. ρ':>8}  note"
    lines = ["rules ranked by ABPC (area between the LeRF and MoRF curves; higher is more faithful), rules whose "
             "maps survive randomisation last:", head]
    for r in ranking:
        note = ("maps survive randomisation: they do not depend on what the model learnt"
                if r["survives_randomisation"] is True else "")
        lines.append(f"{r['rule']:<24} {fmt(r['abpc']):>7} {fmt(r['aopc_morf']):>7} {fmt(r['aopc_lerf']):>7} "
                     f"{fmt(r['morf_minus_random']):>9} {fmt(r['relevance_mass_accuracy']):>6} "
                     f"{fmt(r['sanity_spearman_abs']):>8}  {note}".rstrip())
    return "\n".join(lines)


def _manifest(settings: Settings, options: EvaluateOptions, loaded: LoadedModel, refs: list, failures: list,
              ranking: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    return {
        "tool": "mri-lrp evaluate", "version": __version__, "settings": settings.to_json(),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()},
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "classes": loaded.class_names,
                       "demo": loaded.is_demo, "input_spec": loaded.input_spec.to_dict()},
        "counts": {"found": len(refs), "failed": len(failures)}, "ranking": ranking,
        "survives_threshold": SURVIVES_THRESHOLD, "seconds": round(wall, 3),
    }
