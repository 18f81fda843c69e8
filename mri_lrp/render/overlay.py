"""The overlay of one scan: the scan in grey with signed relevance on top, built with numpy for speed.

Only the slices that are shown are resampled and colour-mapped; the mosaic is composed as one numpy array.
With a mask, its outline is drawn on every panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mri_lrp.render.colour import CONTOUR, STAMP_COLOUR, clip_value, colourise, grey_window
from mri_lrp.render.png import write_png
from mri_lrp.render.text import HEADER_PX, header_strip, stamp_sides
from mri_lrp.render.view import (
    IMAGE_NOTE,
    PANEL_PX,
    PLANES,
    VIEW_NOTE,
    Panel,
    as_3d,
    display_grid,
    edge,
    finite,
    panel_pixels,
    peak_voxel,
    single_slice_plane,
    slice_world,
    to_ras,
)

MOSAIC_SLICES = 12
MOSAIC_COLUMNS = 4
GAP_PX = 4
MIN_WIDTH_PX = 640
STAMP_FRAME_PX = 4


@dataclass(frozen=True)
class Overlay:
    """The finished picture and its layout (the layout lets tests find what is drawn where)."""

    rgb: np.ndarray             # (H, W, 3) uint8
    panels: tuple[Panel, ...]
    vmax: float                 # |relevance| mapped to full colour


def render_overlay(path: str | Path, scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *,
                   title: str, subtitle: str = "", clip_percentile: float = 99.5, stamp: str = "",
                   mask: np.ndarray | None = None, image: bool = False) -> float:
    """Write the overlay PNG for one scan (atomically); returns the colour limit |R| it used (``Overlay.vmax``),
    which the relevance volume's display window reuses.

    A ``stamp`` (e.g. that the demo model made the picture) is drawn in the header inside an orange frame
    and kept in the PNG's text metadata ("Warning"), so a copied picture still says it.
    """
    overlay = compose_overlay(scan_data, relevance, affine, title=title, subtitle=subtitle,
                              clip_percentile=clip_percentile, stamp=stamp, mask=mask, image=image)
    write_png(path, overlay.rgb, {"Warning": stamp} if stamp else None)
    return overlay.vmax


def compose_overlay(scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *, title: str,
                    subtitle: str = "", clip_percentile: float = 99.5, stamp: str = "",
                    mask: np.ndarray | None = None, image: bool = False) -> Overlay:
    """Build the overlay picture in memory: header strip, then the panels on a dark grey backdrop.

    3D: a top row of axial, coronal and sagittal planes through the relevance peak, then a mosaic of axial
    slices spread over the part of the volume that holds the relevance. A single slice (K == 1): one panel.
    With ``mask`` (on the scan's grid), the mask's outline is drawn on each panel. An ``image`` file (stand-in
    geometry) gets no side letters: it has no anatomy to name.
    """
    data, rel = as_3d(scan_data), as_3d(relevance)
    if data.shape != rel.shape:
        raise ValueError(f"scan shape {data.shape} and relevance shape {rel.shape} differ")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    if mask is not None and as_3d(mask).shape != data.shape:
        raise ValueError(f"mask shape {np.shape(mask)} and scan shape {data.shape} differ")
    data, rel = finite(data), finite(rel)
    vol, rvol, zooms, ras_affine = to_ras(data, rel, affine)
    mvol = None if mask is None else to_ras(as_3d(mask), as_3d(mask), affine)[0]
    vmax = clip_value(rel, clip_percentile)
    lo, hi = grey_window(data)
    sizes, maps = display_grid(vol.shape, zooms, PANEL_PX)

    rows: list[list[tuple[str, int]]] = []
    if data.shape[2] == 1:
        rows.append([(single_slice_plane(vol.shape), 0)])
        notes = ("a single slice", IMAGE_NOTE if image else VIEW_NOTE)
    else:
        peak = peak_voxel(rvol)
        rows.append([("axial", peak[2]), ("coronal", peak[1]), ("sagittal", peak[0])])
        slices = _mosaic_slices(rvol, vol)
        rows += [[("axial", k) for k in slices[i:i + MOSAIC_COLUMNS]]
                 for i in range(0, len(slices), MOSAIC_COLUMNS)]
        world = [slice_world(ras_affine, axis, index) for axis, index in ((0, peak[0]), (1, peak[1]),
                                                                         (2, peak[2]))]
        z_first, z_last = (slice_world(ras_affine, 2, k) for k in (slices[0], slices[-1]))
        notes = (f"top: axial, coronal, sagittal planes through the relevance peak at world "
                 f"({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm",
                 f"below: axial slices z = {z_first:.0f} to {z_last:.0f} mm; {VIEW_NOTE}")
    if mvol is not None:
        notes = (*notes[:-1], notes[-1] + "; green line: the mask's outline")

    def panel_size(plane: str) -> tuple[int, int]:
        (h_axis, v_axis, _), _ = PLANES[plane]
        return sizes[v_axis], sizes[h_axis]

    row_sizes = [(max(panel_size(p)[0] for p, _ in row),
                  sum(panel_size(p)[1] for p, _ in row) + GAP_PX * (len(row) - 1)) for row in rows]
    width = max(MIN_WIDTH_PX, max(w for _, w in row_sizes) + 2 * GAP_PX)
    height = HEADER_PX + sum(h for h, _ in row_sizes) + GAP_PX * (len(rows) + 1)

    body = (height - HEADER_PX, width)               # the panel area below the header strip
    grey = np.zeros(body, dtype=np.float32)
    signed = np.zeros(body, dtype=np.float32)
    inside = np.zeros(body, dtype=bool)
    outline = np.zeros(body, dtype=bool)
    panels = []
    top = GAP_PX
    for row, (row_h, row_w) in zip(rows, row_sizes, strict=True):
        left = (width - row_w) // 2
        for plane, index in row:
            (h_axis, v_axis, fixed), sides = PLANES[plane]
            h, w = panel_size(plane)
            box = (slice(top, top + h), slice(left, left + w))  # in body coordinates
            grey[box] = panel_pixels(vol, h_axis, v_axis, fixed, index, maps)
            signed[box] = panel_pixels(rvol, h_axis, v_axis, fixed, index, maps)
            inside[box] = True
            if mvol is not None:
                outline[box] = edge(panel_pixels(mvol, h_axis, v_axis, fixed, index, maps) > 0.5)
            panels.append(Panel(plane, int(index), slice_world(ras_affine, fixed, index), HEADER_PX + top,
                                left, h, w, ("", "", "", "") if image else sides))
            left += w + GAP_PX
        top += row_h + GAP_PX

    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[HEADER_PX:] = colourise(grey, signed, inside, lo, hi, vmax)
    rgb[HEADER_PX:][outline] = CONTOUR
    rgb[:HEADER_PX] = header_strip(width, title, subtitle, notes, vmax, clip_percentile, stamp)
    return finish_overlay(rgb, panels, vmax, stamp)


def finish_overlay(rgb: np.ndarray, panels: list[Panel], vmax: float, stamp: str) -> Overlay:
    """Side letters on every panel and, for a stamped overlay (the demo model), a frame that cannot be missed."""
    for panel in panels:
        stamp_sides(rgb, panel)
    if stamp:
        rgb[:STAMP_FRAME_PX], rgb[-STAMP_FRAME_PX:] = STAMP_COLOUR, STAMP_COLOUR
        rgb[:, :STAMP_FRAME_PX], rgb[:, -STAMP_FRAME_PX:] = STAMP_COLOUR, STAMP_COLOUR
    return Overlay(rgb=rgb, panels=tuple(panels), vmax=vmax)


def _mosaic_slices(rvol: np.ndarray, vol: np.ndarray) -> list[int]:
    """Axial slices spread evenly over the central 98% of the |R| mass (of the scan itself if R is zero)."""
    mass = np.abs(rvol).sum(axis=(0, 1), dtype=np.float64)
    if not mass.any():
        mass = np.clip(vol, 0, None).sum(axis=(0, 1), dtype=np.float64)
    if not mass.any():
        mass = np.ones(vol.shape[2])
    cumulative = np.cumsum(mass) / mass.sum()
    first = int(np.searchsorted(cumulative, 0.01))
    last = max(first, int(np.searchsorted(cumulative, 0.99)))
    count = min(MOSAIC_SLICES, last - first + 1)
    return sorted({int(round(v)) for v in np.linspace(first, last, count)})
