"""One axis of the way from a scan grid to a model grid, as an exact linear map and its transpose.

Every spatial step of the preprocessing (resampling to a spacing, cropping to the foreground, resizing, centre
crop/pad) acts on each axis separately, so an axis is a chain of small steps, each an (n_out x n_in) matrix.
Their product maps scan values to model values; its transpose maps model-space relevance back. A row that
reads one voxel or averages several sums to 1 and sends relevance only to the voxels it read; a row of zero
padding is 0 and the relevance it holds (none, for any rule that multiplies by the input) has nowhere to go.

The steps reproduce, voxel for voxel, what the common libraries do:

* ``Linear``: samples at ``start + m * step`` (in input voxels) with a tent kernel of half-width
  ``half_width``: 1 is plain linear interpolation (MONAI ``Spacing``/``Resize``, ``F.interpolate``);
  ``step`` when downsampling is torch's anti-aliased kernel (``antialias=True``, what torchvision uses).
  Taps past the edge are dropped and the row renormalised, which is border padding.
* ``Nearest``: the voxel at ``floor`` (torch ``nearest``, computed in float32 as torch does) or the nearest
  one, halves rounded up (what MONAI ``Spacing(mode="nearest")`` gives on exact ties), of ``start + m * step``.
* ``Area``: torch's adaptive average pooling (``mode="area"``): output m averages inputs
  floor(m n_in / n_out) .. ceil((m + 1) n_in / n_out) - 1.
* ``Window``: output m reads input ``lo + m`` — a crop where inside, zeros or the edge voxel where outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass(frozen=True)
class Linear:
    n_in: int
    n_out: int
    start: float
    step: float
    half_width: float = 1.0
    zeros_outside: bool = False   # positions wholly past the input (beyond half a voxel) read zeros

    def matrix(self) -> np.ndarray:
        pos = self.start + self.step * np.arange(self.n_out, dtype=np.float64)
        taps = np.arange(self.n_in, dtype=np.float64)
        w = 1.0 - np.abs(taps[None, :] - pos[:, None]) / self.half_width
        # A position on a voxel up to float rounding (an oblique affine's spacing) reads that voxel alone, so
        # background next to tissue stays exactly 0 (what "non-zero" statistics and foreground boxes rely on).
        w[w < 1e-9] = 0.0
        row_sum = w.sum(axis=1, keepdims=True)
        empty = row_sum[:, 0] == 0
        if empty.any():  # further from the input than the kernel reaches: the nearest edge voxel
            w[empty, np.clip(np.rint(pos[empty]), 0, self.n_in - 1).astype(np.intp)] = 1.0
            row_sum = w.sum(axis=1, keepdims=True)
        w /= row_sum
        if self.zeros_outside:
            w[(pos < -0.5) | (pos > self.n_in - 0.5)] = 0.0
        return w


@dataclass(frozen=True)
class Nearest:
    n_in: int
    n_out: int
    start: float
    step: float
    floor: bool = True

    def matrix(self) -> np.ndarray:
        if self.floor:  # torch: min(floorf(m * scale), n_in - 1) in float32
            pos = np.float32(self.start) + np.arange(self.n_out, dtype=np.float32) * np.float32(self.step)
            idx = np.floor(pos)
        else:
            idx = np.floor(self.start + self.step * np.arange(self.n_out, dtype=np.float64) + 0.5)
        w = np.zeros((self.n_out, self.n_in))
        w[np.arange(self.n_out), np.clip(idx, 0, self.n_in - 1).astype(np.intp)] = 1.0
        return w


@dataclass(frozen=True)
class Area:
    n_in: int
    n_out: int

    def matrix(self) -> np.ndarray:
        w = np.zeros((self.n_out, self.n_in))
        for m in range(self.n_out):
            lo = (m * self.n_in) // self.n_out
            hi = -((-(m + 1) * self.n_in) // self.n_out)
            w[m, lo:hi] = 1.0 / (hi - lo)
        return w


@dataclass(frozen=True)
class Window:
    n_in: int
    n_out: int
    lo: int
    edge: bool = False            # outside the input: the edge voxel (True) or zero (False)

    def matrix(self) -> np.ndarray:
        src = self.lo + np.arange(self.n_out)
        w = np.zeros((self.n_out, self.n_in))
        inside = (src >= 0) & (src < self.n_in)
        w[np.arange(self.n_out)[inside], src[inside]] = 1.0
        if self.edge:
            outside = ~inside
            w[np.arange(self.n_out)[outside], np.clip(src[outside], 0, self.n_in - 1)] = 1.0
        return w


Step = Linear | Nearest | Area | Window


@dataclass(frozen=True)
class AxisMap:
    """The chain of steps along one axis (first applied first); no steps is the identity."""

    n_in: int
    steps: tuple[Step, ...] = ()

    @property
    def n_out(self) -> int:
        return self.steps[-1].n_out if self.steps else self.n_in

    @property
    def is_identity(self) -> bool:
        return not self.steps

    def then(self, step: Step) -> AxisMap:
        if step.n_in != self.n_out:
            raise ValueError(f"step {step} does not follow a grid of {self.n_out}")
        return AxisMap(self.n_in, (*self.steps, step))

    def matrix(self) -> np.ndarray:
        """The (n_out, n_in) float64 product of the steps; built once per process for each distinct map (scans
        of one geometry share it: reading and writing each ask for it per scan). Callers must not modify it."""
        return _axis_matrix(self)

    def back_matrix(self) -> np.ndarray:
        """The (n_in, n_out) way back for relevance: the transpose of the matrix with each row that reads the
        input scaled to sum to 1. Rows already summing to 1 are the plain transpose; a row that reads the input
        only in part (a resize across the edge of zero padding) sends all its relevance to the voxels it read
        (the padding's zeros contributed nothing); a row of pure padding reads nothing and sends nothing."""
        return _back_matrix(self)


@lru_cache(maxsize=64)
def _back_matrix(axis_map: AxisMap) -> np.ndarray:
    w = axis_map.matrix()
    s = w.sum(axis=1)
    partial = (s > 0) & (np.abs(s - 1.0) > 1e-12)
    if partial.any():
        w = w.copy()
        w[partial] /= s[partial, None]
    return np.ascontiguousarray(w.T)


@lru_cache(maxsize=64)
def _axis_matrix(axis_map: AxisMap) -> np.ndarray:
    w = np.eye(axis_map.n_in)
    for step in axis_map.steps:
        w = step.matrix() @ w
    return w


def apply_axes(volume: torch.Tensor, maps: tuple[AxisMap, ...], first_axis: int, transpose: bool) -> torch.Tensor:
    """Apply one map per axis (axes ``first_axis``, ``first_axis + 1``, ...) or, for relevance, its way back,
    in the volume's dtype, skipping identity axes."""
    for k, axis_map in enumerate(maps):
        if axis_map.is_identity:
            continue
        w = torch.as_tensor(axis_map.back_matrix() if transpose else axis_map.matrix(),
                            device=volume.device).to(volume.dtype)
        d = first_axis + k
        volume = torch.movedim(torch.tensordot(w, volume, dims=([1], [d])), 0, d)
    return volume


def spacing_grid(n_in: int, step: float) -> tuple[int, float]:
    """MONAI ``Spacing``'s grid along one axis: size round((n - 1) step_in / step_out) + 1 (numpy rounding),
    first output voxel on the first input voxel. Returns (size, start)."""
    return int(np.round((n_in - 1) / step + 1.0)), 0.0


def centred_grid(n_in: int, step: float, n_out: int | None) -> tuple[int, float]:
    """The grid centred on the input's centre (checkpoints written before ``align``): n_out or n_in / step."""
    n = n_out if n_out is not None else max(1, int(round(n_in / step)))
    return n, (n_in - 1) / 2.0 - (n - 1) / 2.0 * step


def centre_window(n_in: int, n_out: int) -> int:
    """MONAI ``ResizeWithPadOrCrop``'s first input index: pad symmetric (floor before), then crop at the centre
    (start = n // 2 - n_out // 2)."""
    pad_before = max(n_out - n_in, 0) // 2
    padded = max(n_in, n_out)
    return padded // 2 - n_out // 2 - pad_before


def downsampling_half_width(step: float, antialias: bool) -> float:
    return max(1.0, step) if antialias else 1.0
