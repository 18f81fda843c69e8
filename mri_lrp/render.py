"""Overlay pictures: the scan in grey with signed relevance on top, built with numpy for speed.

Only the slices that are shown are resampled and colour-mapped; the mosaic is composed as one numpy array and
written as a PNG (filtered rows deflated by ISA-L). The header strip's text is drawn with Pillow's FreeType
renderer in matplotlib's DejaVu fonts, measured first so that no label runs off the picture. With a mask, its
outline is drawn on every panel.

Display convention: the volume is turned to the closest RAS axes (``nibabel.orientations``), so the stored
voxel order never mirrors the picture. World axes increase to the right and upwards in every panel, which is
the *neurological* view: the patient's left is on the image's left (labelled "L"). Oblique scans are shown
on their closest world axes without resampling the obliquity away.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

PANEL_PX = 192            # longest field of view of the volume, in output pixels
MOSAIC_SLICES = 12
MOSAIC_COLUMNS = 4
GAP_PX = 4
HEADER_PX = 104
MIN_WIDTH_PX = 640
CMAP_NAME = "bwr"
BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)
CONTOUR = np.array([0, 255, 0], dtype=np.uint8)  # the mask's outline: green, apart from red, blue and grey
_STATS_SAMPLES = 1 << 18  # voxels sampled for the grey window and the clipping percentile
_LABEL_PX = 12  # side letters (9 pt at 100 dpi)
_VIEW_NOTE = "neurological view: patient's left on the image's left"
# An image file (PNG/JPEG/TIFF) has no anatomy: drawn as stored, without side letters.
_IMAGE_NOTE = "image file shown as stored: no anatomical sides"
STAMP_COLOUR = np.array([255, 140, 0], dtype=np.uint8)  # the frame and text of a stamp (demo model)
STAMP_FRAME_PX = 4

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


def write_png(path: str | Path, rgb: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Atomically write an RGB uint8 array as PNG (a reader never sees half a file), with optional tEXt."""
    from mri_lrp.outputs import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(rgb, text))


def png_bytes(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """An 8-bit RGB PNG: every row with the Sub filter (left-neighbour differences), deflated by ISA-L, and
    ``text`` as tEXt chunks (Latin-1). Pillow's encoder at its fastest level took as long as composing the
    whole picture; this takes a few milliseconds."""
    import struct
    import zlib

    from isal import isal_zlib

    pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {pixels.shape}")
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # uint8 arithmetic wraps, as PNG wants

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    notes = b"".join(chunk(b"tEXt", key.encode("latin-1", "replace")[:79] + b"\0"
                           + value.encode("latin-1", "replace")) for key, value in (text or {}).items())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + notes
            + chunk(b"IDAT", isal_zlib.compress(filtered.tobytes(), 1)) + chunk(b"IEND", b""))


def compose_overlay(scan_data: np.ndarray, relevance: np.ndarray, affine: np.ndarray, *, title: str,
                    subtitle: str = "", clip_percentile: float = 99.5, stamp: str = "",
                    mask: np.ndarray | None = None, image: bool = False) -> Overlay:
    """Build the overlay picture in memory: header strip, then the panels on a dark grey backdrop.

    3D: a top row of axial, coronal and sagittal planes through the relevance peak, then a mosaic of axial
    slices spread over the part of the volume that holds the relevance. A single slice (K == 1): one panel.
    With ``mask`` (on the scan's grid), the mask's outline is drawn on each panel. An ``image`` file (stand-in
    geometry) gets no side letters: it has no anatomy to name.
    """
    data, rel = _as_3d(scan_data), _as_3d(relevance)
    if data.shape != rel.shape:
        raise ValueError(f"scan shape {data.shape} and relevance shape {rel.shape} differ")
    if not 0 < clip_percentile <= 100:
        raise ValueError(f"clip_percentile must be in (0, 100], got {clip_percentile}")
    if mask is not None and _as_3d(mask).shape != data.shape:
        raise ValueError(f"mask shape {np.shape(mask)} and scan shape {data.shape} differ")
    data, rel = _finite(data), _finite(rel)
    vol, rvol, zooms, ras_affine = _to_ras(data, rel, affine)
    mvol = None if mask is None else _to_ras(_as_3d(mask), _as_3d(mask), affine)[0]
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
        notes = ("a single slice", _IMAGE_NOTE if image else _VIEW_NOTE)
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
    if mvol is not None:
        notes = (*notes[:-1], notes[-1] + "; green line: the mask's outline")

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
    outline = np.zeros(body, dtype=bool)
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
            if mvol is not None:
                outline[box] = _edge(_panel(mvol, h_axis, v_axis, fixed, index, maps) > 0.5)
            panels.append(Panel(plane, int(index), _slice_world(ras_affine, fixed, index), HEADER_PX + top,
                                left, h, w, ("", "", "", "") if image else sides))
            left += w + GAP_PX
        top += row_h + GAP_PX

    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[HEADER_PX:] = _colour(grey, signed, inside, lo, hi, vmax)
    rgb[HEADER_PX:][outline] = CONTOUR
    rgb[:HEADER_PX] = _header(width, title, subtitle, notes, vmax, clip_percentile, stamp)
    return _finish(rgb, panels, vmax, stamp)


def _finish(rgb: np.ndarray, panels: list[Panel], vmax: float, stamp: str) -> Overlay:
    """Side letters on every panel and, for a stamped overlay (the demo model), a frame that cannot be missed."""
    for panel in panels:
        _stamp_sides(rgb, panel)
    if stamp:
        rgb[:STAMP_FRAME_PX], rgb[-STAMP_FRAME_PX:] = STAMP_COLOUR, STAMP_COLOUR
        rgb[:, :STAMP_FRAME_PX], rgb[:, -STAMP_FRAME_PX:] = STAMP_COLOUR, STAMP_COLOUR
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


def _edge(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with a 4-neighbour outside it (the panel's border counts as outside)."""
    padded = np.pad(region, 1, constant_values=False)
    core = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~core


# --------------------------------------------------------------------------------------------- colour

def _sample(values: np.ndarray) -> np.ndarray:
    """An evenly strided subset of the values: percentiles for display need no more."""
    flat = values.reshape(-1, order="A")  # a view in C or Fortran order (nibabel's), never a copy of the volume
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


@lru_cache(maxsize=4)
def _blend_table(name: str) -> np.ndarray:
    """Final RGB for every (grey level, relevance level) pair, 256 x 256 x 3 bytes: the blend is done once per
    process and a panel pixel is then one lookup."""
    table, opacity = _colour_table(name)
    grey = (np.arange(256, dtype=np.float32) / 255.0)[:, None, None]
    out = grey * (1.0 - opacity[None, :, None]) + table[None] * opacity[None, :, None]
    blend = (out * 255.0 + 0.5).astype(np.uint8).reshape(256 * 256, 3)
    blend.setflags(write=False)
    return blend


def _colour(grey: np.ndarray, signed: np.ndarray, inside: np.ndarray, lo: float, hi: float,
            vmax: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    g = (np.clip((grey - lo) * scale, 0.0, 255.0) + 0.5).astype(np.uint16)
    level = (np.clip(np.rint(signed * (127.0 / vmax)), -128.0, 127.0) + 128.0).astype(np.uint16)
    rgb = np.take(_blend_table(CMAP_NAME), (g << 8) | level, axis=0)
    rgb[~inside] = BACKGROUND
    return rgb


# ------------------------------------------------------------------------------------------ text, bar

def _header(width: int, title: str, subtitle: str, notes: tuple[str, ...], vmax: float,
            percentile: float, stamp: str = "") -> np.ndarray:
    """Title, subtitle, notes, an optional stamp line and a horizontal colour bar with its ticks on a black
    strip of the picture's width. Every label is measured before it is placed: it is kept inside the strip,
    made smaller if too wide, and shortened with an ellipsis only past the smallest size."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, HEADER_PX), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    margin = 8

    def text(x: float, y: int, label: str, px: int, fill: tuple[int, ...], *, bold: bool = False,
             anchor: str = "l", room: float | None = None) -> None:
        label, font = _fit(label, px, bold, width - 2 * margin if room is None else room)
        w = draw.textlength(label, font=font)
        x = {"l": x, "c": x - w / 2}[anchor]
        draw.text((min(max(x, 2.0), width - 2.0 - w), y), label, font=font, fill=fill)  # never past an edge

    white = (255, 255, 255)
    text(margin, 5, title, 15, white, bold=True)
    text(margin, 25, subtitle, 12, white)
    for n, line in enumerate(notes):
        text(margin, 43 + 12 * n, line, 10, (187, 187, 187))
    if stamp:
        text(margin, 43 + 12 * len(notes), stamp, 11, tuple(int(c) for c in STAMP_COLOUR), bold=True)
    bar_left, bar_top, bar_h = margin + 24, HEADER_PX - 26, 10
    bar_w = min(300, width - 320)
    for x, label in ((bar_left, f"{-vmax:.3g}"), (bar_left + bar_w // 2, "0"), (bar_left + bar_w - 1, f"{vmax:.3g}")):
        text(x, bar_top + bar_h + 2, label, 10, white, anchor="c")
    caption_left = bar_left + bar_w + 20
    text(caption_left, bar_top - 1, f"relevance; colours clipped at the {percentile:g}th percentile of |R|", 10,
         white, room=width - caption_left - margin)
    out = np.asarray(strip, dtype=np.uint8).copy()
    table, _ = _colour_table(CMAP_NAME)
    ramp = table[np.linspace(0, 255, bar_w).round().astype(np.intp)]
    out[bar_top - 1:bar_top + bar_h + 1, bar_left - 1:bar_left + bar_w + 1] = 255  # white outline
    out[bar_top:bar_top + bar_h, bar_left:bar_left + bar_w] = (ramp * 255 + 0.5).astype(np.uint8)[None]
    return out


_MIN_FONT_PX = 8


def _fit(label: str, px: int, bold: bool, room: float) -> tuple[str, Any]:
    """The label and a font for it no wider than ``room``: smaller first, then shortened with an ellipsis."""
    for size in range(px, _MIN_FONT_PX - 1, -1):
        font = _font(size, bold)
        if font.getlength(label) <= room:
            return label, font
    font = _font(_MIN_FONT_PX, bold)
    while len(label) > 1 and font.getlength(label + "…") > room:
        label = label[:-1]
    return label + "…", font


@lru_cache(maxsize=32)
def _font(px: int, bold: bool) -> Any:
    """matplotlib's DejaVu Sans (always installed with it) at ``px`` pixels as a Pillow font, loaded once."""
    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), px)


@lru_cache(maxsize=32)
def _glyph(text: str) -> np.ndarray:
    """Coverage (0..1) of a short bold label, rendered once per process and reused."""
    from PIL import Image, ImageDraw

    font = _font(_LABEL_PX, True)
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255)
    coverage = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(coverage > 0)
    glyph = coverage[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()
    glyph.setflags(write=False)
    return glyph


def _stamp_sides(rgb: np.ndarray, panel: Panel) -> None:
    """Write the side letters just inside the panel: left/right at mid-height, top/bottom at mid-width."""
    margin = 2
    for side, letter in zip(("left", "right", "top", "bottom"), panel.sides, strict=True):
        if not letter:
            continue
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


# ------------------------------------------------------------------------------------ channels side by side

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
    total = _finite(_as_3d(relevance))
    _, tvol, zooms, ras_affine = _to_ras(total, total, affine)
    columns = [_to_ras(_finite(d), _finite(r), affine)[:2] for d, r in zip(data, rels, strict=True)]
    mvol = None if mask is None else _to_ras(_as_3d(mask), _as_3d(mask), affine)[0]
    vmax = _clip_value(rels, clip_percentile)
    shape = tvol.shape
    px_mm = max(n * z for n, z in zip(shape, zooms, strict=True)) / PANEL_PX
    sizes = [max(1, round(n * z / px_mm)) for n, z in zip(shape, zooms, strict=True)]
    maps = [np.minimum((np.arange(s) + 0.5) * n / s, n - 1).astype(np.intp) for s, n in zip(sizes, shape, strict=True)]
    if data.shape[3] == 1:
        flat = [a for a in range(3) if shape[a] == 1]
        planes = [({0: "sagittal", 1: "coronal"}.get(flat[-1], "axial") if len(flat) == 1 else "axial", 0)]
        where = "a single slice"
    else:
        peak = _peak(tvol)
        planes = [("axial", peak[2]), ("coronal", peak[1]), ("sagittal", peak[0])]
        world = [_slice_world(ras_affine, axis, peak[axis]) for axis in range(3)]
        where = (f"rows: axial, coronal, sagittal through the peak of the summed relevance at world "
                 f"({world[0]:.0f}, {world[1]:.0f}, {world[2]:.0f}) mm")
    notes = (f"columns: {', '.join(channels)}, each with its own relevance on one colour scale; "
             f"{_IMAGE_NOTE if image else _VIEW_NOTE}",
             where + ("; green line: the mask's outline" if mvol is not None else ""))
    heights = [sizes[_PLANES[p][0][1]] for p, _ in planes]
    col_w = max(sizes[_PLANES[p][0][0]] for p, _ in planes)
    width = max(MIN_WIDTH_PX, len(channels) * (col_w + GAP_PX) + GAP_PX)
    height = HEADER_PX + CHANNEL_LABEL_PX + sum(heights) + GAP_PX * (len(planes) + 1)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    panels = []
    lefts = [(width - len(channels) * (col_w + GAP_PX) + GAP_PX) // 2 + c * (col_w + GAP_PX)
             for c in range(len(channels))]
    for (vol, rvol), left in zip(columns, lefts, strict=True):
        lo, hi = _grey_window(vol)
        top = HEADER_PX + CHANNEL_LABEL_PX + GAP_PX
        for (plane, index), h in zip(planes, heights, strict=True):
            (h_axis, v_axis, fixed), sides = _PLANES[plane]
            w = sizes[h_axis]
            x = left + (col_w - w) // 2
            grey = _panel(vol, h_axis, v_axis, fixed, index, maps)
            signed = _panel(rvol, h_axis, v_axis, fixed, index, maps)
            box = rgb[top:top + h, x:x + w]
            box[:] = _colour(grey, signed, np.ones(grey.shape, dtype=bool), lo, hi, vmax)
            if mvol is not None:
                box[_edge(_panel(mvol, h_axis, v_axis, fixed, index, maps) > 0.5)] = CONTOUR
            panels.append(Panel(plane, int(index), _slice_world(ras_affine, fixed, index), top, x, h, w,
                                ("", "", "", "") if image else sides))
            top += h + GAP_PX
    rgb[:HEADER_PX] = _header(width, title, subtitle, notes, vmax, clip_percentile, stamp)
    rgb[HEADER_PX:HEADER_PX + CHANNEL_LABEL_PX] = _channel_labels(width, channels, lefts, col_w)
    return _finish(rgb, panels, vmax, stamp)


def _channel_labels(width: int, channels: tuple[str, ...], lefts: list[int], col_w: int) -> np.ndarray:
    """The strip of channel names, each centred over its column."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, CHANNEL_LABEL_PX), tuple(int(c) for c in BACKGROUND))
    draw = ImageDraw.Draw(strip)
    for name, left in zip(channels, lefts, strict=True):
        label, font = _fit(name, 12, True, col_w - 4)
        draw.text((left + (col_w - draw.textlength(label, font=font)) / 2, 2), label, font=font,
                  fill=(255, 255, 255))
    return np.asarray(strip, dtype=np.uint8)
