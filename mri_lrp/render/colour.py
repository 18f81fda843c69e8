"""Colour: the grey window of a scan, the relevance colour limit, and the blend of the two into RGB pixels."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CMAP_NAME = "bwr"
BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)
CONTOUR = np.array([0, 255, 0], dtype=np.uint8)  # the mask's outline: green, apart from red, blue and grey
_STATS_SAMPLES = 1 << 18  # voxels sampled for the grey window and the clipping percentile
STAMP_COLOUR = np.array([255, 140, 0], dtype=np.uint8)  # the frame and text of a stamp (demo model)


def _sample(values: np.ndarray) -> np.ndarray:
    """An evenly strided subset of the values: percentiles for display need no more."""
    flat = values.reshape(-1, order="A")  # a view in C or Fortran order (nibabel's), never a copy of the volume
    return flat[::max(1, flat.size // _STATS_SAMPLES)].astype(np.float64)


def clip_value(rel: np.ndarray, percentile: float) -> float:
    """Symmetric colour limit: the percentile of |R| over voxels with relevance (1 when there is none)."""
    magnitude = np.abs(_sample(rel))
    magnitude = magnitude[magnitude > 0]
    if magnitude.size == 0:
        magnitude = np.abs(rel[rel != 0].astype(np.float64))
    if magnitude.size == 0:
        return 1.0
    value = float(np.percentile(magnitude, percentile))
    return value if value > 0 else float(magnitude.max())


def grey_window(data: np.ndarray) -> tuple[float, float]:
    values = _sample(data)
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(lo), float(hi)


@lru_cache(maxsize=4)
def colour_table(name: str) -> tuple[np.ndarray, np.ndarray]:
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
    table, opacity = colour_table(name)
    grey = (np.arange(256, dtype=np.float32) / 255.0)[:, None, None]
    out = grey * (1.0 - opacity[None, :, None]) + table[None] * opacity[None, :, None]
    blend = (out * 255.0 + 0.5).astype(np.uint8).reshape(256 * 256, 3)
    blend.setflags(write=False)
    return blend


def colourise(grey: np.ndarray, signed: np.ndarray, inside: np.ndarray, lo: float, hi: float,
              vmax: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    g = (np.clip((grey - lo) * scale, 0.0, 255.0) + 0.5).astype(np.uint16)
    level = (np.clip(np.rint(signed * (127.0 / vmax)), -128.0, 127.0) + 128.0).astype(np.uint16)
    rgb = np.take(_blend_table(CMAP_NAME), (g << 8) | level, axis=0)
    rgb[~inside] = BACKGROUND
    return rgb
