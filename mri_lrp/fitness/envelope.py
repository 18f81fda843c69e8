"""The reference envelope: what the model's inputs looked like on reference scans, as one plain .npz file.

Versioned, numbers and strings only (read with ``allow_pickle=False``), tied to the checkpoint's sha256.
Thresholds are the reference's own: each reference scan's distance is measured leave-one-out (the other
scans' mean and covariance), so a new in-distribution scan's distance is drawn like one of them.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from mri_lrp.errors import SettingsError
from mri_lrp.outputs import atomic_write_bytes

FORMAT = "mri-lrp-envelope"
VERSION = 2
#: Fewer reference scans than this give percentiles that mean little (the 95th of 20 is the 19th): refused.
MIN_REFERENCE = 20
#: ``--reference batch``: the run's own scans, at least this many.
MIN_BATCH = 20


@dataclass
class Envelope:
    """Per reference scan (rows) and in summary: geometry, intensity profile, head features, distances."""

    model_sha256: str
    scan_ids: np.ndarray            # (N,) str
    input_coverage: np.ndarray      # (N,)
    scan_inside: np.ndarray         # (N,)
    upsampling: np.ndarray          # (N,)
    head_share: np.ndarray          # (N,)
    spacing: np.ndarray             # (N, 3) voxel size in mm, coarsest first
    intensity: np.ndarray           # (N, F) intensity.profile rows
    intensity_names: np.ndarray     # (F,) str
    intensity_mean: np.ndarray      # (F,)
    intensity_scale: np.ndarray     # (F,)
    intensity_distances: np.ndarray  # (N,) leave-one-out
    features: np.ndarray            # (N, D) classifier-head inputs
    feature_layer: str              # the graph node they were read at
    feature_mean: np.ndarray        # (D,)
    feature_precision: np.ndarray   # (D, D) inverse of the Ledoit-Wolf covariance
    feature_shrinkage: float
    feature_distances: np.ndarray   # (N,) leave-one-out Mahalanobis distances

    @property
    def count(self) -> int:
        return int(len(self.scan_ids))

    @classmethod
    def build(cls, model_sha256: str, scan_ids: list[str], geometry: np.ndarray, intensity: np.ndarray,
              intensity_names: list[str], features: np.ndarray, feature_layer: str,
              minimum: int = MIN_REFERENCE) -> Envelope:
        """Summaries and leave-one-out distances from per-scan rows; ``geometry`` columns are coverage,
        inside share, upsampling, head share and the three voxel sizes (coarsest first)."""
        n = len(scan_ids)
        if n < minimum:
            raise SettingsError(f"the reference has {n} usable scans; at least {minimum} are needed for its "
                                f"percentiles to mean something")
        intensity = np.asarray(intensity, dtype=np.float64)
        features = np.asarray(features, dtype=np.float64)
        i_mean, i_scale = intensity_summary(intensity)
        loo_i = np.array([intensity_distance(intensity[k], *intensity_summary(np.delete(intensity, k, 0)))
                          for k in range(n)])
        lw = LedoitWolf().fit(features)
        loo_f = []
        for k in range(n):
            rest = np.delete(features, k, 0)
            fit = LedoitWolf().fit(rest)
            loo_f.append(mahalanobis(features[k], fit.location_, fit.precision_))
        g = np.asarray(geometry, dtype=np.float64)
        return cls(model_sha256, np.asarray(scan_ids, dtype=str), g[:, 0], g[:, 1], g[:, 2], g[:, 3], g[:, 4:7],
                   intensity, np.asarray(intensity_names, dtype=str), i_mean, i_scale, loo_i, features, feature_layer,
                   lw.location_, lw.precision_, float(lw.shrinkage_), np.asarray(loo_f))

    def trimmed(self, factor: float, minimum: int) -> Envelope:
        """The envelope without the scans that stand apart from the rest (a leave-one-out distance beyond
        ``factor`` times the 90th percentile, of the features or the intensities), rebuilt from the others: a
        batch taken as its own reference must not let its outliers widen the envelope that judges them."""
        keep = ((self.feature_distances <= factor * np.percentile(self.feature_distances, 90)) &
                (self.intensity_distances <= factor * np.percentile(self.intensity_distances, 90)))
        if keep.all():
            return self
        geometry = np.column_stack([self.input_coverage, self.scan_inside, self.upsampling, self.head_share,
                                    self.spacing])
        return Envelope.build(self.model_sha256, list(self.scan_ids[keep]), geometry[keep], self.intensity[keep],
                              list(self.intensity_names), self.features[keep], self.feature_layer, minimum=minimum)

    def save(self, path: str | Path) -> None:
        """Write the .npz atomically (a half-written envelope never replaces a good one)."""
        arrays: dict[str, Any] = {"format": np.asarray(FORMAT), "version": np.asarray(VERSION)}
        for f in fields(self):
            value = getattr(self, f.name)
            arrays[f.name] = np.asarray(value)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Envelope:
        """Read an envelope; anything but a readable envelope of this version is a SettingsError naming it."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise SettingsError(f"{p}: reference envelope not found") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise SettingsError(f"{p}: not a reference envelope (.npz written by `mri-lrp calibrate`): "
                                f"{e}") from None
        if str(data.get("format", "")) != FORMAT:
            raise SettingsError(f"{p}: not a reference envelope (.npz written by `mri-lrp calibrate`)")
        version = int(data.get("version", -1))
        if version != VERSION:
            raise SettingsError(f"{p}: envelope version {version}; this mri-lrp reads version {VERSION}: run "
                                f"`mri-lrp calibrate` again")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise SettingsError(f"{p}: envelope lacks {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls)}
        for name in ("model_sha256", "feature_layer"):
            values[name] = str(values[name])
        values["feature_shrinkage"] = float(values["feature_shrinkage"])
        return cls(**values)

    def check_model(self, path: str | Path, sha256: str, any_model: bool) -> None:
        """An envelope made with another checkpoint describes another model's features: refused unless
        ``any_model``."""
        if self.model_sha256 != sha256 and not any_model:
            raise SettingsError(f"{path}: the envelope was made with checkpoint sha256 {self.model_sha256[:12]}…, "
                                f"this run's is {sha256[:12]}…: calibrate for this model, or pass "
                                f"--reference-any-model to compare anyway")

    def describe(self) -> list[str]:
        """Lines for `mri-lrp info --reference`."""
        def span(a: np.ndarray, fmt: str = ".2f") -> str:
            return f"{np.min(a):{fmt}} .. {np.max(a):{fmt}} (median {np.median(a):{fmt}})"
        return [
            f"format: {FORMAT} version {VERSION}",
            f"model sha256: {self.model_sha256}",
            f"reference scans: {self.count}",
            f"input coverage: {span(self.input_coverage)}",
            f"scan inside the grid: {span(self.scan_inside)}",
            f"upsampling: {span(self.upsampling)}",
            f"head share of the grid: {span(self.head_share)}",
            f"voxel size, coarsest axis (mm): {span(self.spacing[:, 0])}",
            f"intensity features: {len(self.intensity_names)}; leave-one-out distance "
            f"{span(self.intensity_distances)}, 95th percentile {np.percentile(self.intensity_distances, 95):.2f}",
            f"head features: {self.features.shape[1]} at '{self.feature_layer}', Ledoit-Wolf shrinkage "
            f"{self.feature_shrinkage:.3f}; leave-one-out distance {span(self.feature_distances)}, 95th percentile "
            f"{np.percentile(self.feature_distances, 95):.2f}",
        ]


def intensity_summary(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per intensity feature; the scale has a floor so a feature that never varied in the
    reference does not turn rounding into a large distance."""
    mean = rows.mean(axis=0)
    std = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
    return mean, np.maximum(std, 0.05 * np.abs(mean) + 0.02)


def intensity_distance(row: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> float:
    """Root-mean-square of the features' standard scores."""
    return float(np.sqrt(np.mean(((row - mean) / scale) ** 2)))


def mahalanobis(row: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    d = row - mean
    return float(np.sqrt(max(0.0, d @ precision @ d)))
