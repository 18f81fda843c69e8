"""Intensity normalisation of a channel-first volume: an affine map per voxel, so relevance passes it 1:1.

Statistics are over all channels together, or per channel with ``channel_wise`` (MONAI
``NormalizeIntensity(channel_wise=...)``). A constant image gives zeros, never NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from mri_lrp.model.spec import InputSpec


def normalise(volume: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """``volume`` is (C, ...) with C the scan's or the model's channels (meanstd needs the model's).

    zscore: mean and (population) standard deviation of the voxels exactly != 0; those are standardised and
    zero voxels stay 0 (MONAI ``NormalizeIntensity(nonzero=True)``). All voxels are used when none is
    non-zero. percentile: clip to the ``spec.clip`` percentiles, then scale to [0, 1]. minmax: to [0, 1].
    range: MONAI ``ScaleIntensityRange`` (a_min..a_max -> b_min..b_max, clipped to [b_min, b_max] when
    ``range_clip``). meanstd/imagenet: (x - mean[c]) / std[c] per channel. none: unchanged.
    """
    kind = spec.normalization
    if kind == "none":
        return volume
    if kind == "range":
        assert spec.range is not None
        a_min, a_max, b_min, b_max = spec.range
        out = (volume - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
        return out.clamp(min(b_min, b_max), max(b_min, b_max)) if spec.range_clip else out
    if kind in ("meanstd", "imagenet"):
        mean, std = spec.mean_std()
        if volume.shape[0] != len(mean):
            raise ValueError(f"{kind} has {len(mean)} channels of mean/std, the volume {volume.shape[0]}")
        shape = (-1,) + (1,) * (volume.dim() - 1)
        m = torch.tensor(mean, dtype=volume.dtype, device=volume.device).reshape(shape)
        s = torch.tensor(std, dtype=volume.dtype, device=volume.device).reshape(shape)
        return (volume - m) / s
    if spec.channel_wise:
        return torch.stack([_statistical(c, spec) for c in volume])
    return _statistical(volume, spec)


def _statistical(volume: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    kind = spec.normalization
    if kind == "zscore":
        mask = volume != 0
        values = volume[mask] if bool(mask.any()) else volume.reshape(-1)
        std, mean = torch.std_mean(values.to(torch.float64), correction=0)
        std_f, mean_f = float(std), float(mean)
        scaled = (volume - mean_f) / std_f if _spread(std_f, mean_f) else torch.zeros_like(volume)
        return torch.where(mask, scaled, torch.zeros_like(volume)) if bool(mask.any()) else scaled
    if kind == "percentile":
        lo, hi = _percentiles(volume, spec.clip)
        volume = volume.clamp(lo, hi)
    else:
        lo, hi = float(volume.min()), float(volume.max())
    return (volume - lo) / (hi - lo) if _spread(hi - lo, max(abs(lo), abs(hi))) else torch.zeros_like(volume)


def _spread(width: float, level: float) -> bool:
    """Whether a spread is real contrast, not float32 rounding of a constant (e.g. after resampling)."""
    return width > 1e-6 * max(abs(level), 1e-30)


def _percentiles(volume: torch.Tensor, clip: tuple[float, float]) -> tuple[float, float]:
    """Percentiles with linear interpolation between order statistics (numpy's default), any tensor size."""
    values = volume.reshape(-1).sort().values.to(torch.float64)
    n = values.numel()
    out = []
    for q in clip:
        pos = min(max(q, 0.0), 100.0) / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        out.append(float(values[lo] + (values[hi] - values[lo]) * (pos - lo)))
    return out[0], out[1]
