"""Intensity profile of the model input inside the head: per-channel quantiles and a rim-to-core depth profile.

Quantiles alone barely tell an inverted contrast from a normal one (both spread over a similar range); how
intensity changes with depth below the head's surface does: a T1 head goes from bright scalp and dark skull
to bright white matter at the core, an inverted one the other way round, and a volume of noise not at all.
Depth is counted in model voxels by repeated erosion of the head mask (cheap on the model grid).
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEPTH_BINS = ((0, 1), (2, 3), (4, 6), (7, 10), (11, 10_000))   # depth below the surface, model voxels
MAX_DEPTH = 11  # the last bin starts here: deeper erosions would change nothing


def feature_names(channels: int) -> list[str]:
    """Names of ``profile``'s entries, for the envelope and for reasons in words."""
    names = []
    for c in range(channels):
        names += [f"ch{c} q{int(q * 100):02d}" for q in QUANTILES]
        names += [f"ch{c} depth {a}-{b if b < 10_000 else '+'}" for a, b in DEPTH_BINS]
    return names


def depth_map(mask: np.ndarray) -> np.ndarray:
    """Per head voxel, how many 6-neighbour erosions it survives (0 on the surface, at most MAX_DEPTH); -1
    outside the head. Boolean slicing on the model grid: a few milliseconds."""
    depth = np.where(mask, 0, -1).astype(np.int16)
    current = np.asarray(mask, dtype=bool)
    for d in range(1, MAX_DEPTH + 1):
        inner = current.copy()
        for axis in range(current.ndim):
            lo = [slice(None)] * current.ndim
            hi = [slice(None)] * current.ndim
            lo[axis], hi[axis] = slice(1, None), slice(None, -1)
            inner[tuple(hi)] &= current[tuple(lo)]
            inner[tuple(lo)] &= current[tuple(hi)]
            edge = [slice(None)] * current.ndim
            for end in (0, -1):
                edge[axis] = end
                inner[tuple(edge)] = False
        if not inner.any():
            break
        depth[inner] = d
        current = inner
    return depth


def profile(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """(C * (len(QUANTILES) + len(DEPTH_BINS)),) float64: each channel's raw quantiles inside the head, then
    its mean intensity per depth bin in units of the head's interquartile range about its median (so the
    profile's shape, not the scanner's scale, is compared). An empty head or depth bin gives 0."""
    channels = x.shape[0]
    size = len(QUANTILES) + len(DEPTH_BINS)
    inside = mask.numpy()
    if not inside.any():
        return np.zeros(channels * size)
    depth = depth_map(inside)[inside]
    bins = [(depth >= a) & (depth <= b) for a, b in DEPTH_BINS]
    parts = []
    for c in range(channels):
        values = x[c].detach().numpy().astype(np.float64)[inside]
        q = np.percentile(values, [100 * p for p in QUANTILES])
        scale = float(q[3] - q[1]) or float(values.std()) or 1.0
        standard = (values - q[2]) / scale
        parts += [q, np.array([float(standard[b].mean()) if b.any() else 0.0 for b in bins])]
    return np.concatenate(parts)
