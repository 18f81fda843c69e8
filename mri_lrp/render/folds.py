"""The fold ensemble's row under the overlay: each fold's map and the spread, small, on the overlay's scale.

Every panel is the same axial slice (through the mean map's peak, as the overlay's top row) with the same
colour limit as the mean map above, so a fold that looks elsewhere, or is weaker, shows at a glance. The
spread panel is the voxel-wise standard deviation across folds (never negative: red only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mri_lrp.render.colour import BACKGROUND, colourise, grey_window
from mri_lrp.render.overlay import GAP_PX
from mri_lrp.render.png import write_png
from mri_lrp.render.text import fit_label
from mri_lrp.render.view import PLANES, as_3d, display_grid, finite, panel_pixels, peak_voxel, to_ras

SMALL_PX = 112      # the longest field of view of a fold panel, in pixels
LABEL_PX = 16       # the strip of labels above the panels


def fold_strip(scan_data: np.ndarray, mean: np.ndarray, folds: np.ndarray, spread: np.ndarray,
               affine: np.ndarray, vmax: float, width: int, labels: list[str]) -> np.ndarray:
    """(H, width, 3) uint8: one labelled axial panel per fold, then the spread, wrapped to the picture's width."""
    from PIL import Image, ImageDraw

    data = finite(as_3d(scan_data))
    vol, rmean, zooms, _ = to_ras(data, finite(as_3d(mean)), affine)
    volumes = [to_ras(data, finite(as_3d(m)), affine)[1] for m in (*folds, spread)]
    sizes, maps = display_grid(vol.shape, zooms, SMALL_PX)
    (h_axis, v_axis, fixed), _ = PLANES["axial"]
    index = peak_voxel(rmean)[2] if vol.shape[2] > 1 else 0
    h, w = sizes[v_axis], sizes[h_axis]
    lo, hi = grey_window(data)
    grey = panel_pixels(vol, h_axis, v_axis, fixed, index, maps)
    per_row = max(1, (width - GAP_PX) // (w + GAP_PX))
    rows = -(-len(volumes) // per_row)
    strip = np.empty((rows * (LABEL_PX + h + GAP_PX) + GAP_PX, width, 3), dtype=np.uint8)
    strip[:] = BACKGROUND
    text = Image.new("RGB", (width, strip.shape[0]), (0, 0, 0))
    draw = ImageDraw.Draw(text)
    for n, (rvol, label) in enumerate(zip(volumes, labels, strict=True)):
        row, col = divmod(n, per_row)
        top = GAP_PX + row * (LABEL_PX + h + GAP_PX) + LABEL_PX
        left = GAP_PX + col * (w + GAP_PX)
        signed = panel_pixels(rvol, h_axis, v_axis, fixed, index, maps)
        strip[top:top + h, left:left + w] = colourise(grey, signed, np.ones(grey.shape, dtype=bool), lo, hi, vmax)
        shown, font = fit_label(label, 10, False, w)
        draw.text((left, top - LABEL_PX + 2), shown, font=font, fill=(255, 255, 255))
    drawn = np.asarray(text, dtype=np.uint8)
    ink = drawn.max(axis=2) > 0
    strip[ink] = drawn[ink]
    return strip


def add_fold_strip(path: Path, scan_data: np.ndarray, mean: np.ndarray, folds: np.ndarray, spread: np.ndarray,
                   affine: np.ndarray, vmax: float, labels: list[str]) -> None:
    """Append the fold row under the overlay already written at ``path`` (rewritten atomically)."""
    from PIL import Image

    with Image.open(path) as image:
        base = np.asarray(image.convert("RGB"), dtype=np.uint8)
        info = {k: v for k, v in image.info.items() if isinstance(v, str)}
    strip = fold_strip(scan_data, mean, folds, spread, affine, vmax, base.shape[1], labels)
    write_png(path, np.concatenate([base, strip]), info or None)
