"""Partitions of a scan grid into regions, and the grid arithmetic every kind of region needs.

A *partition* gives every voxel of a scan exactly one region, so the region sums of a partition always add up
to the scan's total relevance. Label images in another grid (an atlas, a mask) reach the scan's grid by
nearest-neighbour resampling through the two voxel->world affines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Partition:
    """Every voxel of one scan grid assigned to exactly one region.

    ``index`` holds positions into ``ids``/``names`` (not the label values), so sums are one ``bincount``.
    The flat index and the voxel counts are computed once per partition, however many maps are summed over it.
    """

    index: np.ndarray           # integer (intp or int32), scan shape, values in [0, len(ids))
    ids: tuple[int, ...]
    names: tuple[str, ...]
    kind: str = "builtin"       # the ``partition`` column: builtin, atlas or mask

    @cached_property
    def flat_index(self) -> np.ndarray:
        """The index as one flat intp array (what ``bincount`` takes without a copy)."""
        return np.ascontiguousarray(self.index, dtype=np.intp).reshape(-1)

    @cached_property
    def voxels(self) -> np.ndarray:
        return np.bincount(self.flat_index, minlength=len(self.ids))


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres; the determinant is right for sheared and oblique grids too."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) / 1000.0)


def resample_nearest(data: np.ndarray, affine: np.ndarray, target_shape: Sequence[int],
                     target_affine: np.ndarray, fill: int | float = 0) -> np.ndarray:
    """Nearest-neighbour resampling of ``data`` onto a target grid, through both voxel->world affines.

    Target voxels whose world position falls outside ``data`` get ``fill``. Identical grids return a copy
    without interpolation error.
    """
    src = np.asarray(data)
    shape = tuple(int(n) for n in target_shape)
    try:
        to_src = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, np.float64)
    except np.linalg.LinAlgError as exc:
        raise ValueError("source affine is singular") from exc
    if src.shape == shape and np.allclose(to_src, np.eye(4), atol=1e-6):
        return src.copy()
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    idx = []
    inside = np.ones(shape, dtype=bool)
    for d in range(3):
        coord = (to_src[d, 0] * grids[0] + to_src[d, 1] * grids[1] + to_src[d, 2] * grids[2]
                 + to_src[d, 3])
        rounded = np.floor(coord + 0.5 + 1e-9).astype(np.int64)
        rounded = np.broadcast_to(rounded, shape)
        inside &= (rounded >= 0) & (rounded < src.shape[d])
        idx.append(np.clip(rounded, 0, src.shape[d] - 1))
    out = src[idx[0], idx[1], idx[2]]
    out[~inside] = fill
    return out
