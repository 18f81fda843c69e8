"""The overlay of a multi-channel case: its sequences side by side, each with its own relevance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mri_lrp.render.colour import BACKGROUND, CONTOUR, clip_value, colourise, grey_window
from mri_lrp.render.overlay import GAP_PX, MIN_WIDTH_PX, Overlay, finish_overlay
from mri_lrp.render.png import write_png
from mri_lrp.render.text import HEADER_PX, fit_label, header_strip
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

CHANNEL_LABEL_PX = 18


def render_channels(path: str | Path, scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *,
                    channels: tuple[str, ...], channel_relevance: np.ndarray, title: str, subtitle: str = "",
                    clip_percentile: float = 99.5, stamp: str = "", mask: np.ndarray | None = None,
                    image: bool = False) -> float:
    """The overlay of a multi-channel case: its sequences side by side, each with its own relevance, one colour
    scale for all (so the channels compare at a glance). ``relevance`` is their sum; it places the planes.
    Returns the colour limit, as :func:`render_overlay` does."""
    overlay = compose_channels(scan_data, relevance, affine, channels=channels,
                               channel_relevance=channel_relevance, title=title, subtitle=subtitle,
                               clip_percentile=clip_percentile, stamp=stamp, mask=mask, image=image)
    write_png(path, overlay.rgb, {"Warning": stamp} if stamp else None)
    return overlay.vmax


def compose_channels(scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *,
                     channels: tuple[str, ...], channel_relevance: np.ndarray, title: str, subtitle: str = "",
                     clip_percentile: float = 99.5, stamp: str = "", mask: np.ndarray | None = None,
                     image: bool = False) -> Overlay:
    """One column per channel (named above it), one row per plane (axial, coronal, sagittal) through the
    peak of the summed relevance; a single-slice case has one row. Each sequence keeps its own grey window."""
    data, rels = np.asarray(scan_data), np.asarray(channel_relevance)
    if data.ndim != 4 or data.shape != rels.shape or data.shape[0] != len(channels):
        raise ValueError(f"expected (C, I, J, K) scan and relevance for {len(channels)} channels, got "
                         f"{data.shape} and {rels.shape}")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    total = finite(as_3d(relevance))
    _, tvol, zooms, ras_affine = to_ras(total, total, affine)
    columns = [to_ras(finite(d), finite(r), affine)[:2] for d, r in zip(data, rels, strict=True)]
    mvol = None if mask is None else to_ras(as_3d(mask), as_3d(mask), affine)[0]
    vmax = clip_value(rels, clip_percentile)
    shape = tvol.shape
    sizes, maps = display_grid(shape, zooms, PANEL_PX)
    if data.shape[3] == 1:
        planes = [(single_slice_plane(shape), 0)]
        where = "a single slice"
    else:
        peak = peak_voxel(tvol)
        planes = [("axial", peak[2]), ("coronal", peak[1]), ("sagittal", peak[0])]
        world = [slice_world(ras_affine, axis, peak[axis]) for axis in range(3)]
        where = (f"rows: axial, coronal, sagittal through the peak of the summed relevance at world "
                 f"({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm")
    notes = (f"columns: {', '.join(channels)}, each with its own relevance on one colour scale; "
             f"{IMAGE_NOTE if image else VIEW_NOTE}",
             where + ("; green line: the mask's outline" if mvol is not None else ""))
    heights = [sizes[PLANES[p][0][1]] for p, _ in planes]
    col_w = max(sizes[PLANES[p][0][0]] for p, _ in planes)
    width = max(MIN_WIDTH_PX, len(channels) * (col_w + GAP_PX) + GAP_PX)
    height = HEADER_PX + CHANNEL_LABEL_PX + sum(heights) + GAP_PX * (len(planes) + 1)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    panels = []
    lefts = [(width - len(channels) * (col_w + GAP_PX) + GAP_PX) // 2 + c * (col_w + GAP_PX)
             for c in range(len(channels))]
    for (vol, rvol), left in zip(columns, lefts, strict=True):
        lo, hi = grey_window(vol)
        top = HEADER_PX + CHANNEL_LABEL_PX + GAP_PX
        for (plane, index), h in zip(planes, heights, strict=True):
            (h_axis, v_axis, fixed), sides = PLANES[plane]
            w = sizes[h_axis]
            x = left + (col_w - w) // 2
            grey = panel_pixels(vol, h_axis, v_axis, fixed, index, maps)
            signed = panel_pixels(rvol, h_axis, v_axis, fixed, index, maps)
            box = rgb[top:top + h, x:x + w]
            box[:] = colourise(grey, signed, np.ones(grey.shape, dtype=bool), lo, hi, vmax)
            if mvol is not None:
                box[edge(panel_pixels(mvol, h_axis, v_axis, fixed, index, maps) > 0.5)] = CONTOUR
            panels.append(Panel(plane, int(index), slice_world(ras_affine, fixed, index), top, x, h, w,
                                ("", "", "", "") if image else sides))
            top += h + GAP_PX
    rgb[:HEADER_PX] = header_strip(width, title, subtitle, notes, vmax, clip_percentile, stamp)
    rgb[HEADER_PX:HEADER_PX + CHANNEL_LABEL_PX] = _channel_labels(width, channels, lefts, col_w)
    return finish_overlay(rgb, panels, vmax, stamp)


def _channel_labels(width: int, channels: tuple[str, ...], lefts: list[int], col_w: int) -> np.ndarray:
    """The strip of channel names, each centred over its column."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, CHANNEL_LABEL_PX), tuple(int(c) for c in BACKGROUND))
    draw = ImageDraw.Draw(strip)
    for name, left in zip(channels, lefts, strict=True):
        label, font = fit_label(name, 12, True, col_w - 4)
        draw.text((left + (col_w - draw.textlength(label, font=font)) / 2, 2), label, font=font,
                  fill=(255, 255, 255))
    return np.asarray(strip, dtype=np.uint8)
