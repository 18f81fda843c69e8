"""Per-scan shortcut probes, computed at explain time: how much positive relevance lies outside the head, and
how much on padding or the field-of-view edge.

The head is the head itself: the largest connected bright component with its holes filled, so a marker, a
burned-in label or a fiducial in the air around it counts as outside (the built-in ``outside_head`` region is
a looser mask that counts such objects as head).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Bright = above this share of the robust (2nd-98th percentile) intensity range, as the built-in regions use.
BRIGHT_SHARE = 0.1
#: The border: voxels within this many millimetres of the field-of-view edge (at least one voxel).
BORDER_MM = 5.0


def head_only_mask(volume: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of bright voxels, holes filled; all False for an empty image."""
    values = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    low, high = np.percentile(values, [2.0, 98.0])
    bright = values > low + BRIGHT_SHARE * (high - low)
    labels, count = ndimage.label(bright)
    if count == 0:
        return bright
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def border_mask(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Voxels within BORDER_MM of the grid's edge along any axis longer than one voxel."""
    mask = np.zeros(shape, dtype=bool)
    for axis, (n, step) in enumerate(zip(shape, spacing, strict=True)):
        if n <= 1:
            continue
        width = min(n, max(1, int(np.ceil(BORDER_MM / max(float(step), 1e-6)))))
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, width)
        mask[tuple(index)] = True
        index[axis] = slice(n - width, n)
        mask[tuple(index)] = True
    return mask


def shortcut_probes(volume: np.ndarray, relevance: np.ndarray, spacing: tuple[float, ...],
                    padding_positive: float = 0.0) -> dict[str, float | str]:
    """``relevance_outside_head`` and ``relevance_border``: shares of the positive relevance (scan grid plus
    ``padding_positive``, the positive relevance on model voxels past the scan, which counts as both).

    Empty strings when the map has no positive relevance (no share to speak of).
    """
    positive = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    total = float(positive.sum()) + padding_positive
    if total <= 0.0:
        return {"relevance_outside_head": "", "relevance_border": ""}
    head = head_only_mask(volume)
    border = border_mask(positive.shape, spacing)
    outside = float(positive[~head].sum()) + padding_positive
    edge = float(positive[border].sum()) + padding_positive
    return {"relevance_outside_head": round(outside / total, 6), "relevance_border": round(edge / total, 6)}
