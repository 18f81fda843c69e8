"""Text in the pictures: the header strip (title, notes, stamp, colour bar), labels fitted to their room in
matplotlib's DejaVu fonts (drawn by Pillow's FreeType renderer), and the side letters on each panel."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mri_lrp.render.colour import CMAP_NAME, STAMP_COLOUR, colour_table
from mri_lrp.render.view import Panel

HEADER_PX = 104
_LABEL_PX = 12  # side letters (9 pt at 100 dpi)


def header_strip(width: int, title: str, subtitle: str, notes: tuple[str, ...], vmax: float,
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
        label, font = fit_label(label, px, bold, width - 2 * margin if room is None else room)
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
    table, _ = colour_table(CMAP_NAME)
    ramp = table[np.linspace(0, 255, bar_w).round().astype(np.intp)]
    out[bar_top - 1:bar_top + bar_h + 1, bar_left - 1:bar_left + bar_w + 1] = 255  # white outline
    out[bar_top:bar_top + bar_h, bar_left:bar_left + bar_w] = (ramp * 255 + 0.5).astype(np.uint8)[None]
    return out


_MIN_FONT_PX = 8


def fit_label(label: str, px: int, bold: bool, room: float) -> tuple[str, Any]:
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


def stamp_sides(rgb: np.ndarray, panel: Panel) -> None:
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
