"""The display convention shared by every picture: volumes on their closest RAS axes, the three planes and their
side letters, and one slice resampled to square display pixels.

The volume is turned to the closest RAS axes (``nibabel.orientations``), so the stored voxel order never mirrors
the picture. World axes increase to the right and upwards in every panel, which is the *neurological* view: the
patient's left is on the image's left (labelled "L"). Oblique scans are shown on their closest world axes
without resampling the obliquity away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PANEL_PX = 192            # longest field of view of the volume, in output pixels
VIEW_NOTE = "neurological view: patient's left on the image's left"
# An image file (PNG/JPEG/TIFF) has no anatomy: drawn as stored, without side letters.
IMAGE_NOTE = "image file shown as stored: no anatomical sides"

# Per plane: (horizontal RAS axis, vertical RAS axis, fixed RAS axis) and the side letters
# (left, right, top, bottom).
PLANES = {
    "axial": ((0, 1, 2), ("L", "R", "A", "P")),
    "coronal": ((0, 2, 1), ("L", "R", "S", "I")),
    "sagittal": ((1, 2, 0), ("P", "A", "S", "I")),
}


@dataclass(frozen=True)
class Panel:
    """Where one slice sits in the picture, and which side letters it carries (left, right, top, bottom)."""

    plane: str
    slice_index: int            # index along the fixed axis of the RAS-reoriented volume
    world_mm: float             # world coordinate of that slice along its axis
    top: int
    left: int
    height: int
    width: int
    sides: tuple[str, str, str, str]


def as_3d(array: np.ndarray) -> np.ndarray:
    out = np.asarray(array)
    if out.ndim == 2:
        out = out[:, :, None]
    if out.ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got shape {out.shape}")
    return out


def finite(volume: np.ndarray) -> np.ndarray:
    """NaN and infinite voxels (masked-out parts of float images) as 0, copying only when there are any."""
    return volume if np.isfinite(volume).all() else np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)


def to_ras(data: np.ndarray, rel: np.ndarray, affine: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Views of both volumes on their closest RAS axes, the voxel sizes along them, and the new affine."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    zooms = np.where(zooms > 0, zooms, 1.0)
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():  # a degenerate axis (e.g. a zero slice direction): keep stored order
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    vol = apply_orientation(data, ornt)
    rvol = apply_orientation(rel, ornt)
    ras_zooms = [0.0, 0.0, 0.0]
    for stored_axis, (ras_axis, _) in enumerate(ornt):
        ras_zooms[int(ras_axis)] = float(zooms[stored_axis])
    ras_affine = affine @ inv_ornt_aff(ornt, data.shape)
    return vol, rvol, ras_zooms, ras_affine


def slice_world(ras_affine: np.ndarray, axis: int, index: int) -> float:
    """World coordinate (mm) along ``axis`` of a slice's first voxel: the label for that slice."""
    return float(ras_affine[axis, axis] * index + ras_affine[axis, 3])


def peak_voxel(rvol: np.ndarray) -> tuple[int, int, int]:
    """The voxel of highest relevance (largest |R| if none is positive; the centre if all are zero)."""
    top = int(np.argmax(rvol))
    if rvol.flat[top] <= 0:
        top = int(np.argmax(np.abs(rvol)))
        if rvol.flat[top] == 0:
            return tuple(n // 2 for n in rvol.shape)  # type: ignore[return-value]
    return tuple(int(i) for i in np.unravel_index(top, rvol.shape))  # type: ignore[return-value]


def panel_pixels(vol: np.ndarray, h_axis: int, v_axis: int, fixed: int, index: int,
                 maps: list[np.ndarray]) -> np.ndarray:
    """One slice resampled to square display pixels, world axes pointing right and up."""
    plane = vol[(slice(None),) * fixed + (index,)]   # a view (np.take would copy the volume); (h, v) order
    plane = plane[maps[h_axis]][:, maps[v_axis]]
    return plane.T[::-1].astype(np.float32)


def edge(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it (the panel's border counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    core = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~core


def display_grid(shape: Sequence[int], zooms: Sequence[float], longest_px: int
                 ) -> tuple[list[int], list[np.ndarray]]:
    """Square display pixels for a volume: the pixels along each RAS axis (the longest field of view gets
    ``longest_px``) and, per axis, the voxel index each pixel shows."""
    px_mm = max(n * z for n, z in zip(shape, zooms, strict=True)) / longest_px
    sizes = [max(1, round(n * z / px_mm)) for n, z in zip(shape, zooms, strict=True)]
    maps = [np.minimum((np.arange(s) + 0.5) * n / s, n - 1).astype(np.intp) for s, n in zip(sizes, shape, strict=True)]
    return sizes, maps


def single_slice_plane(shape: Sequence[int]) -> str:
    """The plane that shows a single-slice volume (RAS shape): the one across its flat axis."""
    flat = [a for a in range(3) if shape[a] == 1]
    return {0: "sagittal", 1: "coronal"}.get(flat[-1], "axial") if len(flat) == 1 else "axial"
