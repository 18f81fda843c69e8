"""Fitness of one input for the run: ok, doubtful or out, and why, from the model-free checks and (with a
reference envelope) from distances to the reference.

Against a reference, a distance above the reference's ``DOUBTFUL_PERCENTILE``-th percentile is doubtful and
one beyond ``OUT_FACTOR`` times the reference's largest (leave-one-out) distance is out; voxels coarser than
``SPACING_FACTOR`` times the reference's coarsest are doubtful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mri_lrp.fitness import checks, intensity
from mri_lrp.fitness.envelope import Envelope, intensity_distance, mahalanobis
from mri_lrp.fitness.features import FeatureTap
from mri_lrp.lrp import Explainer
from mri_lrp.model.transform import ModelInput

DOUBTFUL_PERCENTILE = 95.0
OUT_FACTOR = 1.25
SPACING_FACTOR = 2.0  # a scan whose coarsest voxel size exceeds the reference's largest by this is doubtful
FITNESS_COLUMNS = ["fitness", "input_coverage", "scan_inside", "feature_distance", "feature_percentile",
                   "intensity_distance", "fitness_reasons"]


@dataclass(frozen=True)
class Profile:
    """What the checks read off one prepared input (without the features)."""

    geometry: checks.Geometry
    head_share: float
    intensity: np.ndarray

    def geometry_row(self) -> list[float]:
        g = self.geometry
        return [g.input_coverage, g.scan_inside, g.upsampling, self.head_share, *g.spacing]


def input_profile(model_input: ModelInput) -> Profile:
    """Geometry, head share and intensity profile of a model input (2D models: the slices as one volume)."""
    x = model_input.tensor
    if model_input.space.slice_axis is not None:  # (S, C, a, b) -> (C, a, b, S)
        x = x.permute(1, 2, 3, 0)
    x = x.detach().to("cpu", torch.float32)
    mask = checks.head_mask(x)
    return Profile(checks.geometry(model_input.space), float(mask.float().mean()), intensity.profile(x, mask))


class FitnessCheck:
    """The run's fitness checks: always the model-free ones; with an envelope, the reference distances (the
    features come from the explainer's own forward pass through a FeatureTap)."""

    def __init__(self, model: nn.Module, explainer: Explainer, envelope: Envelope | None = None) -> None:
        self.need = checks.input_need(model)
        self.envelope = envelope
        self.tap = FeatureTap(explainer, model) if envelope is not None else None

    def refuse(self, model_input: ModelInput) -> str:
        """Why the input cannot be classified at all (a per-scan failure), or ""."""
        return checks.too_small(checks.geometry(model_input.space), self.need)

    def out_before_explaining(self, model_input: ModelInput, raw: dict[str, float]) -> str:
        """The model-free reasons that make the input out whatever the reference says (its value range and
        geometry), or "": what --skip-unfit can decide without a forward pass."""
        geo = checks.geometry(model_input.space)
        return "; ".join(checks.value_reasons(raw) + checks.geometry_reasons(geo)[0])

    def features(self, samples: int) -> np.ndarray | None:
        """The head features of the last forward pass, (samples, D), or None without a reference."""
        if self.tap is None:
            return None
        got = self.tap.take(samples)
        return None if got is None else got.numpy()

    def assess(self, model_input: ModelInput, raw: dict[str, float], features: np.ndarray | None) -> dict[str, Any]:
        """The summary columns of one input (FITNESS_COLUMNS)."""
        prof = input_profile(model_input)
        out = checks.value_reasons(raw) + checks.head_reasons(prof.head_share)
        geo_out, doubtful = checks.geometry_reasons(prof.geometry)
        out += geo_out
        row: dict[str, Any] = {"input_coverage": round(prof.geometry.input_coverage, 4),
                               "scan_inside": round(prof.geometry.scan_inside, 4),
                               "feature_distance": "", "feature_percentile": "", "intensity_distance": ""}
        env = self.envelope
        if env is not None:
            coarsest, widest = prof.geometry.spacing[0], float(np.max(env.spacing[:, 0]))
            if coarsest > SPACING_FACTOR * widest:
                doubtful.append(f"voxels of {coarsest:.3g} mm along the coarsest axis, the reference's at most "
                                f"{widest:.3g} mm")
            d_i = intensity_distance(prof.intensity, env.intensity_mean, env.intensity_scale)
            row["intensity_distance"] = round(d_i, 4)
            level = _level(d_i, env.intensity_distances)
            if level:
                (out if level == "out" else doubtful).append(_intensity_words(prof, env, d_i))
            if features is not None and features.shape[-1] == env.feature_mean.shape[0]:
                d_f = mahalanobis(features, env.feature_mean, env.feature_precision)
                pct = percentile(d_f, env.feature_distances)
                row["feature_distance"], row["feature_percentile"] = round(d_f, 4), round(pct, 2)
                level = _level(d_f, env.feature_distances)
                if level == "out":
                    out.append(f"the model's features lie beyond every reference scan (distance {d_f:.3g}, the "
                               f"reference's largest {np.max(env.feature_distances):.3g})")
                elif level:
                    doubtful.append(f"the model's features are beyond the {pct:.0f}th percentile of the reference")
            else:
                doubtful.append("no classifier-head features to compare with the reference")
        row["fitness"] = "out" if out else "doubtful" if doubtful else "ok"
        row["fitness_reasons"] = "; ".join(out + doubtful)
        return row


def fitness_counts(summary: list[dict[str, Any]], skipped_unfit: int = 0) -> dict[str, int]:
    """run.json's fitness counts: scans written per fitness, and those --skip-unfit left unexplained."""
    counts = {k: sum(1 for row in summary if row.get("fitness") == k) for k in ("ok", "doubtful", "out")}
    return {**counts, "skipped_unfit": skipped_unfit}


def flagged_by_class(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class (``class`` of each row): scans, how many are out or doubtful, and the share flagged."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        c = out.setdefault(row["class"], {"scans": 0, "out": 0, "doubtful": 0})
        c["scans"] += 1
        if row["fitness"] in ("out", "doubtful"):
            c[row["fitness"]] += 1
    for c in out.values():
        c["flagged_share"] = (c["out"] + c["doubtful"]) / c["scans"]
    return out


def percentile(value: float, reference: np.ndarray) -> float:
    """The share of reference distances below ``value``, in percent."""
    return float(100.0 * np.mean(np.asarray(reference) < value))


def _level(value: float, reference: np.ndarray) -> str:
    if value > OUT_FACTOR * float(np.max(reference)):
        return "out"
    if value > float(np.percentile(reference, DOUBTFUL_PERCENTILE)):
        return "doubtful"
    return ""


def _intensity_words(prof: Profile, env: Envelope, distance: float) -> str:
    """Say which way the intensities differ: a background brighter than the head, a flat or an inverted
    rim-to-core profile are named as such."""
    if prof.head_share > 1.5 * float(np.max(env.head_share)):
        return (f"contrast unlike the reference: {prof.head_share:.0%} of the field of view is brighter than "
                f"background, the reference's heads fill at most {np.max(env.head_share):.0%} (an inverted "
                "contrast, or no background)")
    row = prof.intensity
    names = [str(n) for n in env.intensity_names]
    depth = np.array(["depth" in n for n in names])
    mine, ref = row[depth], env.intensity_mean[depth]
    if np.std(mine) < 0.25 * np.std(ref):
        return ("contrast unlike the reference: intensity barely changes from the head's rim to its core "
                "(noise, or a blank head)")
    if np.std(mine) > 0 and np.std(ref) > 0 and float(np.corrcoef(mine, ref)[0, 1]) < -0.3:
        return ("contrast unlike the reference: intensity runs the other way from the head's rim to its core "
                "(an inverted contrast, or another sequence)")
    worst = names[int(np.argmax(np.abs((row - env.intensity_mean) / env.intensity_scale)))]
    pct = percentile(distance, env.intensity_distances)
    where = "beyond every reference scan" if pct >= 100 else f"beyond the {pct:.0f}th percentile of the reference"
    return f"intensities unlike the reference ({where}; most in {worst})"
