"""Scan space <-> model space: the model tensor for a scan, and the way back for relevance.

The forward map is reorient -> resample -> normalise -> repeat into channels. Every step is linear in the
voxel values except normalisation, which is an affine map per voxel, so relevance passes it 1:1. The way back
undoes each step for relevance:

* channels: the scan volume is copied into every channel, so a voxel's relevance is the sum over channels;
* resampling: the model grid is the scan grid after reorientation, scaled and centred (same direction
  cosines, so an oblique scan stays oblique and nothing is rotated by interpolation). Resampling is therefore
  separable: one (n_out x n_in) weight matrix per axis, ``model = Wx . Wy . Wz . scan``. Relevance goes back
  through the exact transpose, ``R_scan = Wx^T . Wy^T . Wz^T . R_model``. Each row of each matrix sums to 1,
  so the total relevance is preserved and no scan voxel receives relevance it did not contribute to;
* reorientation: an exact permutation and flip of the axes, undone exactly.

Weights: a tent (linear) kernel whose half-width is max(1, step), step being the model spacing in scan voxels.
Upsampling is then plain linear interpolation; downsampling widens the tent to the model spacing (the
anti-aliased linear filter that ``F.interpolate(..., antialias=True)`` uses in 2D), so every scan voxel under
a model voxel contributes and relevance spreads over all of them instead of landing on a sparse lattice.
Kernel taps outside the scan are dropped and the row renormalised; a model voxel wholly outside the scan takes
the nearest edge voxel (border padding), so padding repeats the edge and its relevance returns to the edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nibabel.orientations import aff2axcodes, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from mri_lrp.errors import ScanError
from mri_lrp.model.spec import InputSpec
from mri_lrp.scans.scan import Scan

# A model grid above this many values (all channels) is refused rather than allocated: it means a spacing or
# shape far from anything a classifier takes, and would exhaust memory.
MAX_MODEL_VALUES = 2**28

_AXIS_PAIRS = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


@dataclass(frozen=True)
class AxisResample:
    """One axis of the model grid: model index m samples scan position ``start + m * step`` (in voxels)."""

    n_in: int
    n_out: int
    start: float
    step: float

    @property
    def is_identity(self) -> bool:
        return self.n_in == self.n_out and self.start == 0.0 and self.step == 1.0

    def weights(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The (n_out, n_in) interpolation matrix; every row is non-negative and sums to 1."""
        pos = self.start + self.step * torch.arange(self.n_out, device=device, dtype=torch.float64)
        half_width = max(1.0, self.step)
        taps = torch.arange(self.n_in, device=device, dtype=torch.float64)
        w = (1.0 - (taps[None, :] - pos[:, None]).abs() / half_width).clamp_min(0.0)
        row_sum = w.sum(dim=1, keepdim=True)
        outside = row_sum[:, 0] == 0
        if bool(outside.any()):
            nearest = pos[outside].round().clamp(0, self.n_in - 1).long()
            w[outside] = torch.nn.functional.one_hot(nearest, self.n_in).to(torch.float64)
            row_sum = w.sum(dim=1, keepdim=True)
        return (w / row_sum).to(dtype)


@dataclass(frozen=True)
class ModelSpace:
    """Where a model input sits relative to its scan: small and picklable, all the way back needs.

    ``model_shape``: shape of the model tensor. ``affine``: model voxel -> world RAS mm; indices (x, y, z) for
    3D, (x, y, slice) for 2D. ``axes``/``flips``: oriented axis j is scan axis ``axes[j]``; scan axis i is
    reversed first when ``flips[i]``. ``resample``: one map per oriented axis (identity along a 2D model's
    slice axis). ``slice_axis``: for 2D, the oriented axis the slices run along; None for 3D.
    ``scan_shape``/``scan_affine``: the scan grid relevance returns to (to write it without the scan).
    """

    model_shape: tuple[int, ...]
    affine: np.ndarray
    scan_shape: tuple[int, int, int]
    scan_affine: np.ndarray
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    resample: tuple[AxisResample, AxisResample, AxisResample]
    slice_axis: int | None


@dataclass(frozen=True)
class ModelInput:
    """The model tensor for one scan and its ``space`` (what maps relevance back).

    ``tensor``: 3D spec -> (C, X, Y, Z); 2D spec -> (S, C, X, Y), one sample per slice. The scan volume is
    repeated into each of the C channels (a single-contrast scan feeding a C-channel model). Intensity
    statistics are taken over the whole model grid (all slices together for 2D), so slices are scaled alike.
    ``notes``: non-fatal remarks for the scan's report (e.g. a single slice lying across the slice axis).
    """

    tensor: torch.Tensor
    space: ModelSpace
    notes: tuple[str, ...] = ()


def to_model(scan: Scan, spec: InputSpec, device: torch.device | str = "cpu") -> ModelInput:
    """Reorient, resample and normalise ``scan`` per ``spec`` on ``device``; keep what the inverse needs."""
    axes, flips = _orientation(scan, spec)
    oriented_shape = tuple(scan.shape[i] for i in axes)
    oriented_affine = scan.affine @ inv_ornt_aff(_ornt(axes, flips), scan.shape)
    oriented_spacing = tuple(float(v) for v in np.linalg.norm(oriented_affine[:3, :3], axis=0))

    notes: list[str] = []
    slice_axis: int | None = None
    if spec.dims == 2:
        slice_axis, note = _slice_axis(scan, spec, axes, oriented_affine)
        if note:
            notes.append(note)
    resample = _resample_maps(oriented_shape, oriented_spacing, spec, slice_axis)
    out_shape = tuple(r.n_out for r in resample)
    if int(np.prod(out_shape)) * spec.channels > MAX_MODEL_VALUES:
        raise ScanError(scan.source, f"model grid {list(out_shape)} x {spec.channels} channels is too large "
                        f"(spacing {spec.spacing}, shape {spec.shape})", stage="preprocess")

    volume = torch.as_tensor(np.ascontiguousarray(scan.data, dtype=np.float32), device=device)
    volume = _reorient(volume, axes, flips)
    volume = _apply_axes(volume, resample, transpose=False)
    volume = normalise(volume, spec)

    scale = np.diag([r.step for r in resample] + [1.0])
    scale[:3, 3] = [r.start for r in resample]
    model_affine = oriented_affine @ scale
    if slice_axis is None:
        tensor = volume.unsqueeze(0).expand(spec.channels, *out_shape)
    else:
        in_plane = [d for d in range(3) if d != slice_axis]
        volume = volume.permute(slice_axis, *in_plane)
        tensor = volume.unsqueeze(1).expand(volume.shape[0], spec.channels, *volume.shape[1:])
        model_affine = model_affine[:, [*in_plane, slice_axis, 3]]
    space = ModelSpace(
        model_shape=tuple(tensor.shape),
        affine=model_affine,
        scan_shape=scan.shape,
        scan_affine=np.array(scan.affine, dtype=np.float64),
        axes=axes,
        flips=flips,
        resample=resample,
        slice_axis=slice_axis,
    )
    return ModelInput(tensor=tensor.contiguous(), space=space, notes=tuple(notes))


def to_scan(relevance: torch.Tensor, ctx: ModelInput | ModelSpace) -> np.ndarray:
    """Model-space relevance (shaped like the model tensor) -> float32 (I, J, K) relevance in the scan's grid.

    Sums the channels, sends the result through the transposed resampling matrices (in float64, on the
    relevance's device) and undoes the reorientation; the total is preserved to float32 rounding.
    ``ctx`` may be the ModelInput or just its ``space`` (e.g. once the tensor itself has been dropped).
    """
    space = ctx.space if isinstance(ctx, ModelInput) else ctx
    if tuple(relevance.shape) != tuple(space.model_shape):
        raise ValueError(f"relevance has shape {list(relevance.shape)}, "
                         f"the model input {list(space.model_shape)}")
    volume = relevance.detach().to(torch.float64)
    if space.slice_axis is None:
        volume = volume.sum(dim=0)
    else:
        volume = volume.sum(dim=1)
        in_plane = [d for d in range(3) if d != space.slice_axis]
        volume = volume.permute(*np.argsort([space.slice_axis, *in_plane]).tolist())
    volume = _apply_axes(volume, space.resample, transpose=True)
    volume = _unorient(volume, space.axes, space.flips)
    return volume.to(torch.float32).cpu().numpy()


def normalise(volume: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Intensity normalisation over the whole model grid; a constant image gives zeros, never NaN.

    zscore: mean and standard deviation of the non-zero voxels; those voxels are standardised and zero
    (background) voxels stay 0, the usual convention for skull-stripped brain MRI. All voxels are used
    when none is non-zero. percentile: clip to the ``spec.clip`` percentiles, then scale to [0, 1].
    minmax: scale to [0, 1]. none: unchanged.
    """
    kind = spec.normalization
    if kind == "none":
        return volume
    if kind == "zscore":
        mask = volume != 0
        values = volume[mask] if bool(mask.any()) else volume.reshape(-1)
        std, mean = torch.std_mean(values.to(torch.float64), correction=0)
        std_f, mean_f = float(std), float(mean)
        scaled = (volume - mean_f) / std_f if _spread(std_f, mean_f) else torch.zeros_like(volume)
        return torch.where(mask, scaled, torch.zeros_like(volume)) if bool(mask.any()) else scaled
    if kind == "percentile":
        lo, hi = _percentiles(volume, spec.clip)
        volume = volume.clamp(lo, hi)
    else:
        lo, hi = float(volume.min()), float(volume.max())
    return (volume - lo) / (hi - lo) if _spread(hi - lo, max(abs(lo), abs(hi))) else torch.zeros_like(volume)


def _spread(width: float, level: float) -> bool:
    """Whether a spread is real contrast, not float32 rounding of a constant (e.g. after resampling)."""
    return width > 1e-6 * max(abs(level), 1e-30)


def _percentiles(volume: torch.Tensor, clip: tuple[float, float]) -> tuple[float, float]:
    """Percentiles with linear interpolation between order statistics (numpy's default), any tensor size."""
    values = volume.reshape(-1).sort().values.to(torch.float64)
    n = values.numel()
    out = []
    for q in clip:
        pos = min(max(q, 0.0), 100.0) / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        out.append(float(values[lo] + (values[hi] - values[lo]) * (pos - lo)))
    return out[0], out[1]


def _orientation(scan: Scan, spec: InputSpec) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Axis permutation and flips taking the stored grid to ``spec.orientation`` (RAS for 2D when None).

    Also refuses an affine that cannot place voxels in the world (non-finite or singular).
    """
    affine = np.asarray(scan.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ScanError(scan.source, "voxel-to-world affine is missing or not finite", stage="preprocess")
    start = io_orientation(affine)
    if np.isnan(start).any() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(scan.source, "voxel-to-world affine has no usable orientation: "
                        f"{affine[:3, :3].tolist()}", stage="preprocess")
    codes = spec.orientation or ("RAS" if spec.dims == 2 else None)
    if codes is None:
        return (0, 1, 2), (False, False, False)
    change = ornt_transform(start, axcodes2ornt(tuple(codes.upper())))
    targets = [int(t) for t in change[:, 0]]
    axes = tuple(int(i) for i in np.argsort(targets))
    flips = tuple(bool(f < 0) for f in change[:, 1])
    return axes, flips  # type: ignore[return-value]


def _ornt(axes: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """The nibabel orientation array (per scan axis: target axis, flip) for our axes/flips pair."""
    target = np.argsort(axes)
    return np.array([[target[i], -1.0 if flips[i] else 1.0] for i in range(3)])


def _slice_axis(scan: Scan, spec: InputSpec, axes: tuple[int, int, int],
                oriented_affine: np.ndarray) -> tuple[int, str]:
    """The oriented axis a 2D model's slices run along; a single-slice scan is cut through its own plane."""
    codes = aff2axcodes(oriented_affine)
    wanted = spec.slice_axis.upper()
    along_spec = next(d for d in range(3) if codes[d] in _AXIS_PAIRS[wanted])
    if not scan.is_2d:
        return along_spec, ""
    through = axes.index(2)
    if through == along_spec:
        return through, ""
    return through, f"single-slice scan is cut across {codes[through]}, not the model's slice axis {wanted}"


def _resample_maps(shape: tuple[int, ...], spacing: tuple[float, ...], spec: InputSpec,
                   slice_axis: int | None) -> tuple[AxisResample, AxisResample, AxisResample]:
    """Per oriented axis: model grid size and where its voxels sit in the scan grid (centres aligned)."""
    model_axes = [d for d in range(3) if d != slice_axis]
    maps = []
    for d in range(3):
        n_in = shape[d]
        if d == slice_axis:
            maps.append(AxisResample(n_in, n_in, 0.0, 1.0))
            continue
        k = model_axes.index(d)
        target_spacing = float(spec.spacing[k]) if spec.spacing is not None else spacing[d]
        step = target_spacing / spacing[d]
        if spec.shape is not None:
            n_out = int(spec.shape[k])
        else:
            n_out = max(1, int(round(n_in / step)))
        start = (n_in - 1) / 2.0 - (n_out - 1) / 2.0 * step
        maps.append(AxisResample(n_in, n_out, float(start), float(step)))
    return maps[0], maps[1], maps[2]


def _apply_axes(volume: torch.Tensor, maps: tuple[AxisResample, ...], transpose: bool) -> torch.Tensor:
    """Apply one weight matrix per axis (or its transpose), skipping identity axes."""
    for d, axis_map in enumerate(maps):
        if axis_map.is_identity:
            continue
        w = axis_map.weights(volume.device, volume.dtype)
        if transpose:
            w = w.T
        volume = torch.movedim(torch.tensordot(w, volume, dims=([1], [d])), 0, d)
    return volume


def _reorient(volume: torch.Tensor, axes: tuple[int, ...], flips: tuple[bool, ...]) -> torch.Tensor:
    flipped = [i for i in range(3) if flips[i]]
    if flipped:
        volume = volume.flip(flipped)
    return volume.permute(*axes)


def _unorient(volume: torch.Tensor, axes: tuple[int, ...], flips: tuple[bool, ...]) -> torch.Tensor:
    volume = volume.permute(*np.argsort(axes).tolist())
    flipped = [i for i in range(3) if flips[i]]
    return volume.flip(flipped) if flipped else volume
