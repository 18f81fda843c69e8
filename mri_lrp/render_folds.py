"""The fold ensemble's row under the overlay: each fold's map and the spread, small, on the overlay's scale.

Every panel is the same axial slice (through the mean map's peak, as the overlay's top row) with the same
colour limit as the mean map above, so a fold that looks elsewhere, or is weaker, shows at a glance. The
spread panel is the voxel-wise standard deviation across folds (never negative: red only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mri_lrp.render import (
    _PLANES,
    BACKGROUND,
    GAP_PX,
    _as_3d,
    _colour,
    _finite,
    _fit,
    _grey_window,
    _panel,
    _peak,
    _to_ras,
    write_png,
)

SMALL_PX = 112      # the longest field of view of a fold panel, in pixels
LABEL_PX = 16       # the strip of labels above the panels


def fold_strip(scan_data: np.ndarray, mean: np.ndarray, folds: np.ndarray, spread: np.ndarray,
               affine: np.ndarray, vmax: float, width: int, labels: list[str]) -> np.ndarray:
    """(H, width, 3) uint8: one labelled axial panel per fold, then the spread, wrapped to the picture's width."""
    from PIL import Image, ImageDraw

    data = _finite(_as_3d(scan_data))
    vol, rmean, zooms, _ = _to_ras(data, _finite(_as_3d(mean)), affine)
    volumes = [_to_ras(data, _finite(_as_3d(m)), affine)[1] for m in (*folds, spread)]
    px_mm = max(n * z for n, z in zip(vol.shape, zooms, strict=True)) / SMALL_PX
    sizes = [max(1, round(n * z / px_mm)) for n, z in zip(vol.shape, zooms, strict=True)]
    maps = [np.minimum((np.arange(s) + 0.5) * n / s, n - 1).astype(np.intp) for s, n in zip(sizes, vol.shape,
                                                                                           strict=True)]
    (h_axis, v_axis, fixed), _ = _PLANES["axial"]
    index = _peak(rmean)[2] if vol.shape[2] > 1 else 0
    h, w = sizes[v_axis], sizes[h_axis]
    lo, hi = _grey_window(data)
    grey = _panel(vol, h_axis, v_axis, fixed, index, maps)
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
        signed = _panel(rvol, h_axis, v_axis, fixed, index, maps)
        strip[top:top + h, left:left + w] = _colour(grey, signed, np.ones(grey.shape, dtype=bool), lo, hi, vmax)
        shown, font = _fit(label, 10, False, w)
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
