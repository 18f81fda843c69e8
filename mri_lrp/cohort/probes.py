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
#: Volumes larger than this many voxels are searched for the head on a coarser grid (see head_only_mask).
COARSE_VOXELS = 1 << 19


def head_only_mask(volume: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of bright voxels, holes filled; all False for an empty image.

    A volume above ``COARSE_VOXELS`` is searched on a grid coarsened by the smallest integer factor that brings
    it under (a block is bright when any voxel in it is), and the mask read back at full size: a few times
    faster, and an object in the air closer to the scalp than one block joins the head."""
    values = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    step = 2 if values.size > COARSE_VOXELS else 1  # every 8th voxel pins the percentiles of a large volume
    low, high = np.percentile(values[::step, ::step, ::step], [2.0, 98.0])
    bright = values > low + BRIGHT_SHARE * (high - low)
    factor = max(1, int(np.ceil((values.size / COARSE_VOXELS) ** (1 / 3))))
    if factor > 1:
        padded = np.zeros([-(-n // factor) * factor for n in bright.shape], dtype=bool)
        padded[tuple(slice(0, n) for n in bright.shape)] = bright
        blocks = [d for n in padded.shape for d in (n // factor, factor)]
        bright = padded.reshape(blocks).any(axis=(1, 3, 5))
    labels, count = ndimage.label(bright)
    if count == 0:
        head = bright
    else:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        head = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    if factor > 1:
        head = np.repeat(np.repeat(np.repeat(head, factor, 0), factor, 1), factor, 2)
        head = head[tuple(slice(0, n) for n in values.shape)]
    return head


def interior(shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[slice, ...]:
    """The box of voxels further than BORDER_MM from the grid's edge (axes of one voxel kept whole): the
    border is everything else."""
    box = []
    for n, step in zip(shape, spacing, strict=True):
        width = min(n, max(1, int(np.ceil(BORDER_MM / max(float(step), 1e-6))))) if n > 1 else 0
        box.append(slice(width, max(width, n - width)))
    return tuple(box)


def border_mask(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Voxels within BORDER_MM of the grid's edge along any axis longer than one voxel."""
    mask = np.ones(shape, dtype=bool)
    mask[interior(shape, spacing)] = False
    return mask


def shortcut_probes(volume: np.ndarray, relevance: np.ndarray, spacing: tuple[float, ...],
                    padding_positive: float = 0.0) -> dict[str, float | str]:
    """``relevance_outside_head`` and ``relevance_border``: shares of the positive relevance (scan grid plus
    ``padding_positive``, the positive relevance on model voxels past the scan, which counts as both).

    Empty strings when the map has no positive relevance (no share to speak of).
    """
    positive = np.maximum(np.asarray(relevance, dtype=np.float32), 0.0)
    on_scan = float(positive.sum(dtype=np.float64))
    total = on_scan + padding_positive
    if total <= 0.0:
        return {"relevance_outside_head": "", "relevance_border": ""}
    in_head = float(positive.sum(where=head_only_mask(volume), dtype=np.float64))
    inner = float(positive[interior(positive.shape, spacing)].sum(dtype=np.float64))
    outside = on_scan - in_head + padding_positive
    edge = on_scan - inner + padding_positive
    return {"relevance_outside_head": round(max(outside, 0.0) / total, 6),
            "relevance_border": round(max(edge, 0.0) / total, 6)}


OUTSIDE_HEAD_WARN = 0.3  # tumour maps of the demo models put 0.03-0.09 outside the head, "no tumour" maps 0.4-0.5


def outside_head_note(probes: dict[str, float | str]) -> str | None:
    """A warning for a map whose positive relevance lies largely outside the head: it shows little of the
    anatomy behind the class (typical of a class that means "nothing found", or of a shortcut in the air)."""
    share = probes.get("relevance_outside_head")
    if not isinstance(share, float) or share < OUTSIDE_HEAD_WARN:
        return None
    return (f"{share:.0%} of the positive relevance lies outside the head: the map shows little of what in the "
            "anatomy decided the class")
