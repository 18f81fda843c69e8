"""The built-in regions when no atlas is given: the head mask and its octants in world RAS coordinates.

The octants sit around the head's centre in world space, which makes the table the same for a LAS and a RAS
copy of one scan. An image file (no anatomy) is split into the quarters of the picture instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mri_lrp.regions.partition import Partition
from mri_lrp.scans.scan import Scan

OUTSIDE_HEAD = "outside_head"
IMAGE_REGIONS = ("image_top_left", "image_top_right", "image_bottom_left", "image_bottom_right")
_TIE_MM = 1e-6  # voxels this close to the head's centre plane go to the right/anterior/superior side


def head_mask(data: np.ndarray) -> np.ndarray:
    """A rough head: voxels above 10% of the robust (2nd-98th percentile) range, with enclosed holes filled.

    Skull, CSF and necrotic cores are dark on T1 but lie inside the head; a voxel counts as inside when bright
    voxels surround it along all three grid axes, which fills such holes without filling in the background.
    """
    values = np.asarray(data, dtype=np.float32)
    if not np.isfinite(values).all():  # readers already replace NaN; a copy only when some are left
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    step = 2 if values.size > 1 << 20 else 1  # every 8th voxel pins the percentiles of a large volume
    sample = values[::step, ::step, ::step]
    low, high = np.percentile(sample, [2.0, 98.0]) if values.size else (0.0, 0.0)
    bright = values > low + 0.1 * (high - low)
    # Inside along an axis = between the first and the last bright voxel of its line. The running ORs work on
    # bits packed eight to a byte along another axis, eight lines at once; packing is fastest along the axis
    # that is contiguous in memory (the first for nibabel's Fortran-ordered arrays, the last for C order).
    fast, second, third = np.argsort(bright.strides, kind="stable")
    packed = np.packbits(bright, axis=fast)
    across = np.unpackbits(_between(packed, second) & _between(packed, third), axis=fast, count=bright.shape[fast])
    along = np.unpackbits(_between(np.packbits(bright, axis=second), fast), axis=second,
                          count=bright.shape[second])
    return (across & along).view(bool)


def _between(bits: np.ndarray, axis: int) -> np.ndarray:
    """Bits set at and after the first set bit of their line along ``axis``, and at and before the last."""
    before = np.bitwise_or.accumulate(bits, axis=axis)
    after = np.flip(np.bitwise_or.accumulate(np.flip(bits, axis), axis=axis), axis)
    return before & after


def builtin_partition(scan: Scan) -> Partition:
    """Left/right x anterior/posterior x superior/inferior around the head centre in world RAS, plus outside.

    The centre is the mean world position of the head mask. Single-slice scans are not split along the world
    axis closest to their slice normal (every voxel would sit on one side), so their names have two parts.
    """
    shape = scan.shape
    head = head_mask(scan.volume)  # a multi-channel case: its first channel
    if not head.any():
        head = np.ones(shape, dtype=bool)
    if scan.kind == "image":
        return _image_partition(head)
    world = _world_coords(shape, scan.affine)
    # The affine is linear, so the mean world position is the affine applied to the mean voxel index.
    count = float(head.sum())
    mean_index = [float((np.arange(n) * head.sum(axis=tuple(a for a in range(3) if a != axis))).sum() / count)
                  for axis, n in enumerate(shape)]
    centre = list(np.asarray(scan.affine, dtype=np.float64)[:3, :3] @ mean_index + np.asarray(scan.affine)[:3, 3])
    axes = [0, 1, 2]
    if scan.is_2d:
        columns = np.asarray(scan.affine, dtype=np.float64)[:3, :3]
        normal = columns[:, 2]
        if not np.linalg.norm(normal) > 0:
            normal = np.cross(columns[:, 0], columns[:, 1])
        if np.linalg.norm(normal) > 0:
            axes.remove(int(np.argmax(np.abs(normal))))
    words = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))
    side = np.zeros((1, 1, 1), dtype=np.intp)  # broadcast: one-dimensional per axis on an axis-aligned grid
    for place, axis in enumerate(reversed(axes)):
        side = side + ((world[axis] - centre[axis] > -_TIE_MM).astype(np.intp) << place)
    names = [OUTSIDE_HEAD]
    for code in range(2 ** len(axes)):
        parts = [words[axis][(code >> place) & 1] for place, axis in enumerate(reversed(axes))]
        names.append("_".join(reversed(parts)))
    index = np.where(head, side + 1, 0)  # intp already: what bincount takes, no copy per map
    return Partition(index=index, ids=tuple(range(len(names))), names=tuple(names), kind="builtin")


def _image_partition(head: np.ndarray) -> Partition:
    """An image file's stand-in geometry names no anatomy: quarters of the picture as displayed (axis 0 = rows
    top to bottom, axis 1 = columns left to right) around the centre of the head mask, plus outside."""
    rows, cols = np.nonzero(head.any(axis=2))
    side = ((np.arange(head.shape[0]) >= rows.mean())[:, None, None].astype(np.intp) << 1) \
        + (np.arange(head.shape[1]) >= cols.mean())[None, :, None].astype(np.intp)
    index = np.where(head, side + 1, 0)
    return Partition(index=index, ids=tuple(range(5)), names=(OUTSIDE_HEAD, *IMAGE_REGIONS), kind="builtin")


def _world_coords(shape: Sequence[int], affine: np.ndarray) -> list[np.ndarray]:
    """World x, y, z of every voxel centre, as three broadcastable arrays (no full (N, 3) copy).

    Terms with a zero coefficient are left out, so on an axis-aligned grid each array stays one-dimensional.
    """
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    a = np.asarray(affine, dtype=np.float64)
    coords = []
    for d in range(3):
        value: np.ndarray = np.full((1, 1, 1), a[d, 3])
        for axis in range(3):
            if a[d, axis] != 0.0:
                value = value + a[d, axis] * grids[axis]
        coords.append(value)
    return coords
