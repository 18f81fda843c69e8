"""Overlay pictures: the scan in grey with signed relevance on top, built with numpy for speed.

Only the slices that are shown are resampled and colour-mapped; the mosaic is composed as one numpy array and
written as a PNG. A small matplotlib ``Figure`` (Agg canvas, no pyplot state, so safe in threads) draws only
the header strip: title, subtitle, notes and the colour bar.

Display convention: the volume is turned to the closest RAS axes (``nibabel.orientations``), so the stored
voxel order never mirrors the picture. World axes increase to the right and upwards in every panel, which is
the *neurological* view: the patient's left is on the image's left (labelled "L"). Oblique scans are shown
on their closest world axes without resampling the obliquity away.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mri_lrp.outputs import atomic_path

PANEL_PX = 192            # longest field of view of the volume, in output pixels
MOSAIC_SLICES = 12
MOSAIC_COLUMNS = 4
GAP_PX = 4
HEADER_PX = 104
MIN_WIDTH_PX = 640
CMAP_NAME = "bwr"
BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)
_STATS_SAMPLES = 1 << 18  # voxels sampled for the grey window and the clipping percentile
_LABEL_PT = 9
_VIEW_NOTE = "neurological view: patient's left on the image's left"

# Per plane: (horizontal RAS axis, vertical RAS axis, fixed RAS axis) and the side letters
# (left, right, top, bottom).
_PLANES = {
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


@dataclass(frozen=True)
class Overlay:
    """The finished picture and its layout (the layout lets tests find what is drawn where)."""

    rgb: np.ndarray             # (H, W, 3) uint8
    panels: tuple[Panel, ...]
    vmax: float                 # |relevance| mapped to full colour


def render_overlay(path: str | Path, scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *,
                   title: str, subtitle: str = "", clip_percentile: float = 99.5) -> None:
    """Write the overlay PNG for one scan; written to a temporary file in the same folder, then renamed."""
    overlay = compose_overlay(scan_data, relevance, affine, title=title, subtitle=subtitle,
                              clip_percentile=clip_percentile)
    write_png(path, overlay.rgb)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Atomically write an RGB uint8 array as PNG (a reader never sees half a file)."""
    from matplotlib.image import imsave

    with atomic_path(path, suffix=".png") as tmp:
        imsave(tmp, rgb, format="png", pil_kwargs={"compress_level": 1})


def compose_overlay(scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *, title: str,
                    subtitle: str = "", clip_percentile: float = 99.5) -> Overlay:
    """Build the overlay picture in memory: header strip, then the panels on a dark grey backdrop.

    3D: a top row of axial, coronal and sagittal planes through the relevance peak, then a mosaic of axial
    slices spread over the part of the volume that holds the relevance. A single slice (K == 1): one panel.
    """
    data, rel = _as_3d(scan_data), _as_3d(relevance)
    if data.shape != rel.shape:
        raise ValueError(f"scan shape {data.shape} and relevance shape {rel.shape} differ")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    data, rel = _finite(data), _finite(rel)
    vol, rvol, zooms, ras_affine = _to_ras(data, rel, affine)
    vmax = _clip_value(rel, clip_percentile)
    lo, hi = _grey_window(data)
    px_mm = max(n * z for n, z in zip(vol.shape, zooms, strict=True)) / PANEL_PX
    sizes = [max(1, round(n * z / px_mm)) for n, z in zip(vol.shape, zooms, strict=True)]
    maps = [np.minimum((np.arange(s) + 0.5) * n / s, n - 1).astype(np.intp)
            for s, n in zip(sizes, vol.shape, strict=True)]

    rows: list[list[tuple[str, int]]] = []
    if data.shape[2] == 1:
        flat = [a for a in range(3) if vol.shape[a] == 1]
        plane = {0: "sagittal", 1: "coronal"}.get(flat[-1], "axial") if len(flat) == 1 else "axial"
        rows.append([(plane, 0)])
        notes = ("a single slice", _VIEW_NOTE)
    else:
        peak = _peak(rvol)
        rows.append([("axial", peak[2]), ("coronal", peak[1]), ("sagittal", peak[0])])
        slices = _mosaic_slices(rvol, vol)
        rows += [[("axial", k) for k in slices[i:i + MOSAIC_COLUMNS]]
                 for i in range(0, len(slices), MOSAIC_COLUMNS)]
        world = [_slice_world(ras_affine, axis, index) for axis, index in ((0, peak[0]), (1, peak[1]),
                                                                          (2, peak[2]))]
        z_first, z_last = (_slice_world(ras_affine, 2, k) for k in (slices[0], slices[-1]))
        notes = (f"top: axial, coronal, sagittal planes through the relevance peak at world "
                 f"({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm",
                 f"below: axial slices z = {z_first:.0f} to {z_last:.0f} mm; {_VIEW_NOTE}")

    def panel_size(plane: str) -> tuple[int, int]:
        (h_axis, v_axis, _), _ = _PLANES[plane]
        return sizes[v_axis], sizes[h_axis]

    row_sizes = [(max(panel_size(p)[0] for p, _ in row),
                  sum(panel_size(p)[1] for p, _ in row) + GAP_PX * (len(row) - 1)) for row in rows]
    width = max(MIN_WIDTH_PX, max(w for _, w in row_sizes) + 2 * GAP_PX)
    height = HEADER_PX + sum(h for h, _ in row_sizes) + GAP_PX * (len(rows) + 1)

    body = (height - HEADER_PX, width)               # the panel area below the header strip
    grey = np.zeros(body, dtype=np.float32)
    signed = np.zeros(body, dtype=np.float32)
    inside = np.zeros(body, dtype=bool)
    panels = []
    top = GAP_PX
    for row, (row_h, row_w) in zip(rows, row_sizes, strict=True):
        left = (width - row_w) // 2
        for plane, index in row:
            (h_axis, v_axis, fixed), sides = _PLANES[plane]
            h, w = panel_size(plane)
            box = (slice(top, top + h), slice(left, left + w))  # in body coordinates
            grey[box] = _panel(vol, h_axis, v_axis, fixed, index, maps)
            signed[box] = _panel(rvol, h_axis, v_axis, fixed, index, maps)
            inside[box] = True
            panels.append(Panel(plane, int(index), _slice_world(ras_affine, fixed, index), HEADER_PX + top,
                                left, h, w, sides))
            left += w + GAP_PX
        top += row_h + GAP_PX

    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[HEADER_PX:] = _colour(grey, signed, inside, lo, hi, vmax)
    rgb[:HEADER_PX] = _header(width, title, subtitle, notes, vmax, clip_percentile)
    for panel in panels:
        _stamp_sides(rgb, panel)
    return Overlay(rgb=rgb, panels=tuple(panels), vmax=vmax)


# ------------------------------------------------------------------------------------------ geometry

def _as_3d(array: np.ndarray) -> np.ndarray:
    out = np.asarray(array)
    if out.ndim == 2:
        out = out[:, :, None]
    if out.ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got shape {out.shape}")
    return out


def _finite(volume: np.ndarray) -> np.ndarray:
    """NaN and infinite voxels (masked-out parts of float images) as 0, copying only when there are any."""
    return volume if np.isfinite(volume).all() else np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)


def _to_ras(data: np.ndarray, rel: np.ndarray, affine: np.ndarray
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


def _slice_world(ras_affine: np.ndarray, axis: int, index: int) -> float:
    """World coordinate (mm) along ``axis`` of a slice's first voxel: the label for that slice."""
    return float(ras_affine[axis, axis] * index + ras_affine[axis, 3])


def _peak(rvol: np.ndarray) -> tuple[int, int, int]:
    """The voxel of highest relevance (largest |R| if none is positive; the centre if all are zero)."""
    top = int(np.argmax(rvol))
    if rvol.flat[top] <= 0:
        top = int(np.argmax(np.abs(rvol)))
        if rvol.flat[top] == 0:
            return tuple(n // 2 for n in rvol.shape)  # type: ignore[return-value]
    return tuple(int(i) for i in np.unravel_index(top, rvol.shape))  # type: ignore[return-value]


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


def _panel(vol: np.ndarray, h_axis: int, v_axis: int, fixed: int, index: int,
           maps: list[np.ndarray]) -> np.ndarray:
    """One slice resampled to square display pixels, world axes pointing right and up."""
    plane = vol[(slice(None),) * fixed + (index,)]   # a view (np.take would copy the volume); (h, v) order
    plane = plane[maps[h_axis]][:, maps[v_axis]]
    return plane.T[::-1].astype(np.float32)


# --------------------------------------------------------------------------------------------- colour

def _sample(values: np.ndarray) -> np.ndarray:
    """An evenly strided subset of the values: percentiles for display need no more."""
    flat = values.reshape(-1)
    return flat[::max(1, flat.size // _STATS_SAMPLES)].astype(np.float64)


def _clip_value(rel: np.ndarray, percentile: float) -> float:
    """Symmetric colour limit: the percentile of |R| over voxels with relevance (1 when there is none)."""
    magnitude = np.abs(_sample(rel))
    magnitude = magnitude[magnitude > 0]
    if magnitude.size == 0:
        magnitude = np.abs(rel[rel != 0].astype(np.float64))
    if magnitude.size == 0:
        return 1.0
    value = float(np.percentile(magnitude, percentile))
    return value if value > 0 else float(magnitude.max())


def _grey_window(data: np.ndarray) -> tuple[float, float]:
    values = _sample(data)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi)


@lru_cache(maxsize=4)
def _colour_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """RGB and opacity per level 0..255 (128 is R = 0): opacity grows with |R|, so zero is transparent."""
    from matplotlib import colormaps

    values = np.clip((np.arange(256) - 128) / 127.0, -1.0, 1.0)
    rgb = colormaps[name]((values + 1.0) / 2.0)[:, :3].astype(np.float32)
    alpha = np.sqrt(np.abs(values)).astype(np.float32)
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


def _colour(grey: np.ndarray, signed: np.ndarray, inside: np.ndarray, lo: float, hi: float,
            vmax: float) -> np.ndarray:
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    g = np.clip((grey - lo) * scale, 0.0, 1.0)
    level = (np.clip(np.rint(signed * (127.0 / vmax)), -128.0, 127.0) + 128.0).astype(np.uint8)
    table, opacity = _colour_table(CMAP_NAME)
    alpha = opacity[level][..., None]
    out = g[..., None] * (1.0 - alpha) + table[level] * alpha
    rgb = (out * 255.0 + 0.5).astype(np.uint8)
    rgb[~inside] = BACKGROUND
    return rgb


# ------------------------------------------------------------------------------------------ text, bar

def _header(width: int, title: str, subtitle: str, notes: tuple[str, ...], vmax: float,
            percentile: float) -> np.ndarray:
    """Title, subtitle, notes and a horizontal colour bar with its ticks: the text on one small Agg figure
    of the picture's width, the bar itself painted with numpy (an Axes would cost more than the rest)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, HEADER_PX / dpi), dpi=dpi, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    margin = 8

    def at(x_px: float, y_px: float) -> tuple[float, float]:
        return x_px / width, 1 - y_px / HEADER_PX

    fig.text(*at(margin, 6), title, color="white", fontsize=11, weight="bold", va="top")
    fig.text(*at(margin, 26), subtitle, color="white", fontsize=9, va="top")
    for n, line in enumerate(notes):
        fig.text(*at(margin, 44 + 12 * n), line, color="#bbbbbb", fontsize=7.5, va="top")
    bar_left, bar_top, bar_h = margin + 16, HEADER_PX - 26, 10
    bar_w = min(300, width - 320)
    ticks = ((bar_left, f"{-vmax:.3g}"), (bar_left + bar_w // 2, "0"), (bar_left + bar_w - 1, f"{vmax:.3g}"))
    for x, label in ticks:
        fig.text(*at(x, bar_top + bar_h + 2), label, color="white", fontsize=7, ha="center", va="top")
    fig.text(*at(bar_left + bar_w + 20, bar_top + bar_h / 2),
             f"relevance; colours clipped at the {percentile:g}th percentile of |R|",
             color="white", fontsize=7, va="center")
    canvas.draw()
    strip = np.asarray(canvas.buffer_rgba())[:HEADER_PX, :width, :3].copy()
    table, _ = _colour_table(CMAP_NAME)
    ramp = table[np.linspace(0, 255, bar_w).round().astype(np.intp)]
    strip[bar_top - 1:bar_top + bar_h + 1, bar_left - 1:bar_left + bar_w + 1] = 255  # white outline
    strip[bar_top:bar_top + bar_h, bar_left:bar_left + bar_w] = (ramp * 255 + 0.5).astype(np.uint8)[None]
    return strip


@lru_cache(maxsize=32)
def _glyph(text: str) -> np.ndarray:
    """Coverage (0..1) of a short bold label, rendered once per process and reused."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.4, 0.4), dpi=100)
    fig.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, text, fontsize=_LABEL_PT, weight="bold", ha="center", va="center", color="white")
    canvas.draw()
    coverage = np.asarray(canvas.buffer_rgba())[..., 3].astype(np.float32) / 255.0
    rows, cols = np.nonzero(coverage > 0)
    glyph = coverage[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()
    glyph.setflags(write=False)
    return glyph


def _stamp_sides(rgb: np.ndarray, panel: Panel) -> None:
    """Write the side letters just inside the panel: left/right at mid-height, top/bottom at mid-width."""
    margin = 2
    for side, letter in zip(("left", "right", "top", "bottom"), panel.sides, strict=True):
        glyph = _glyph(letter)
        gh, gw = glyph.shape
        if gh + 2 * margin > panel.height or gw + 2 * margin > panel.width:
            continue
        mid_r = panel.top + (panel.height - gh) // 2
        mid_c = panel.left + (panel.width - gw) // 2
        r, c = {"left": (mid_r, panel.left + margin),
                "right": (mid_r, panel.left + panel.width - margin - gw),
                "top": (panel.top + margin, mid_c),
                "bottom": (panel.top + panel.height - margin - gh, mid_c)}[side]
        region = rgb[r:r + gh, c:c + gw].astype(np.float32)
        # Yellow letters stay readable on grey, red and blue alike.
        ink = np.array([255.0, 220.0, 0.0], dtype=np.float32)
        cover = glyph[..., None]
        rgb[r:r + gh, c:c + gw] = (region * (1 - cover) + ink * cover + 0.5).astype(np.uint8)
