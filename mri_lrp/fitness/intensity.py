"""Intensity profile of the model input inside the head: per-channel quantiles and a rim-to-core depth profile.

Quantiles alone barely tell an inverted contrast from a normal one (both spread over a similar range); how
intensity changes with depth below the head's surface does: a T1 head goes from bright scalp and dark skull
to bright white matter at the core, an inverted one the other way round, and a volume of noise not at all.
Depth is counted in model voxels by repeated 3x3x3 erosion of the head mask (cheap on the model grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEPTH_BINS = ((0, 1), (2, 3), (4, 6), (7, 10), (11, 10_000))   # depth below the surface, model voxels
MAX_DEPTH = 24


def feature_names(channels: int) -> list[str]:
    """Names of ``profile``'s entries, for the envelope and for reasons in words."""
    names = []
    for c in range(channels):
        names += [f"ch{c} q{int(q * 100):02d}" for q in QUANTILES]
        names += [f"ch{c} depth {a}-{b if b < 10_000 else '+'}" for a, b in DEPTH_BINS]
    return names


def depth_map(mask: torch.Tensor) -> torch.Tensor:
    """Per head voxel, how many erosions it survives (0 on the surface); -1 outside the head."""
    depth = torch.full(mask.shape, -1, dtype=torch.int16)
    current = mask.float()[None, None]
    for d in range(MAX_DEPTH + 1):
        if not bool(current.any()):
            break
        depth[current[0, 0] > 0] = d
        current = -F.max_pool3d(-current, 3, stride=1, padding=1)
    return depth


def profile(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(C * (len(QUANTILES) + len(DEPTH_BINS)),) float64: each channel's raw quantiles inside the head, then
    its mean intensity per depth bin in units of the head's interquartile range about its median (so the
    profile's shape, not the scanner's scale, is compared). An empty head or depth bin gives 0."""
    channels = x.shape[0]
    size = len(QUANTILES) + len(DEPTH_BINS)
    if not bool(mask.any()):
        return torch.zeros(channels * size, dtype=torch.float64)
    depth = depth_map(mask)
    bins = [(depth >= a) & (depth <= b) for a, b in DEPTH_BINS]
    parts = []
    for c in range(channels):
        values = x[c].detach().double()[mask]
        q = torch.quantile(values[:: max(1, values.numel() // 1_000_000)],
                           torch.tensor(QUANTILES, dtype=torch.float64))
        scale = float(q[3] - q[1]) or float(values.std()) or 1.0
        standard = (x[c].detach().double() - q[2]) / scale
        means = [float(standard[b].mean()) if bool(b.any()) else 0.0 for b in bins]
        parts += [q, torch.tensor(means, dtype=torch.float64)]
    return torch.cat(parts)
