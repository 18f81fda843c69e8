"""Group maps of one class: the mean map and a voxel-wise one-sample t map with a family-wise threshold.

Each scan's map is divided by its total absolute relevance first, so every scan weighs the same. The t map
tests, voxel by voxel, whether the mean relevance differs from zero; its threshold comes from a sign-flip
permutation test with the maximum |t| over voxels (Nichols & Holmes 2002): under the null each scan's map is
as likely negated, the ``1 - FWE_ALPHA`` quantile of the permutations' maximum |t| bounds the family-wise error
over all voxels. The t map is computed on the model grid block-averaged to at most ``T_GRID_MAX`` voxels per
axis (same factor on every axis, stated in the sidecar), which keeps thousands of permutations of thousands
of scans within seconds.
"""

from __future__ import annotations

from itertools import product

import numpy as np

T_GRID_MAX = 40
PERMUTATIONS = 1000
FWE_ALPHA = 0.05
SEED = 0
_CHUNK = 64


def normalised(volume: np.ndarray) -> np.ndarray:
    """The map divided by its total absolute relevance (all zero stays zero)."""
    total = float(np.abs(volume).sum(dtype=np.float64))
    return (volume / total).astype(np.float32) if total > 0 else np.zeros_like(volume, dtype=np.float32)


def t_factor(shape: tuple[int, ...]) -> int:
    """Block size (the same on every axis) giving at most T_GRID_MAX voxels per axis."""
    return max(1, -(-max(shape) // T_GRID_MAX))


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over blocks of ``factor`` voxels per axis; a partial block at the end is averaged over what it has."""
    if factor == 1:
        return np.asarray(volume, dtype=np.float32)
    if not any(n % factor for n in volume.shape):  # whole blocks: a plain mean
        blocks = [d for n in volume.shape for d in (n // factor, factor)]
        return volume.reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    padded_shape = [-(-n // factor) * factor for n in volume.shape]
    total = np.zeros(padded_shape)
    count = np.zeros(padded_shape)
    inner = tuple(slice(0, n) for n in volume.shape)
    total[inner], count[inner] = volume, 1.0
    blocks = [d for n in padded_shape for d in (n // factor, factor)]
    axes = tuple(range(1, 2 * volume.ndim, 2))
    return (total.reshape(blocks).sum(axis=axes) / count.reshape(blocks).sum(axis=axes)).astype(np.float32)


def block_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of a grid block-averaged by ``factor``: block centres, ``factor`` times the voxel size."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    out[:3, :3] = affine[:3, :3] * factor
    return out


def _t(sums: np.ndarray, squares: np.ndarray, n: int) -> np.ndarray:
    """One-sample t from the sum and the sum of squares per voxel (0 where the variance is 0)."""
    mean = sums / n
    var = np.maximum(squares - n * mean**2, 0.0) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / np.sqrt(var / n)
    return np.where(var > 0, t, 0.0)


def t_test(stack: np.ndarray, permutations: int = PERMUTATIONS) -> tuple[np.ndarray, dict[str, object]]:
    """The t map of ``stack`` (N, V) and what its sign-flip max-|t| threshold is, for the sidecar."""
    n = stack.shape[0]
    data = stack.astype(np.float64)
    squares = (data**2).sum(axis=0)
    t = _t(data.sum(axis=0), squares, n) if n > 1 else np.zeros(data.shape[1])
    info: dict[str, object] = {
        "test": "one-sample t (mean relevance differs from 0), two-sided",
        "threshold": "sign-flip permutations, maximum |t| over voxels (family-wise error)",
        "fwe_alpha": FWE_ALPHA, "scans": n,
    }
    if n < 2:
        return t, {**info, "t_threshold": None, "note": "fewer than 2 scans: no test"}
    if 2**n <= permutations:  # every sign pattern: the exact distribution
        signs = np.array(list(product((1.0, -1.0), repeat=n)))
        exact = True
    else:
        rng = np.random.default_rng(SEED)
        signs = np.vstack([np.ones(n), rng.choice((1.0, -1.0), size=(permutations - 1, n))])
        exact = False
    single = data.astype(np.float32)  # the permutations' maxima need no float64
    maxima = np.concatenate([np.abs(_t(chunk.astype(np.float32) @ single, squares, n)).max(axis=1)
                             for chunk in np.array_split(signs, max(1, len(signs) // _CHUNK))])
    info.update(permutations=len(signs), exact=exact)
    if len(signs) * FWE_ALPHA < 1:
        return t, {**info, "t_threshold": None,
                   "note": f"{n} scans allow only {len(signs)} sign patterns: too few for a {FWE_ALPHA:.0%} test"}
    threshold = float(np.quantile(maxima, 1 - FWE_ALPHA, method="higher"))
    return t, {**info, "t_threshold": threshold, "voxels_above": int((np.abs(t) > threshold).sum())}
