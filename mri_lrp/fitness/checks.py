"""Model-free checks of one input: where the scan lands on the model grid, and whether its values can be MR.

These need no reference: they compare the input with the model's own grid and with what any MR magnitude
image looks like. Thresholds (documented in the README's "Input fitness" section):

- ``input_coverage``: the share of the model grid's voxels whose centre lies inside the scan. Below
  ``COVERAGE_DOUBTFUL`` the model sees mostly padding (a crop, a slab, a thumbnail); below ``COVERAGE_OUT`` the
  scan is ``out``.
- ``scan_inside``: the share of the scan's voxels that land inside the model grid. Below ``INSIDE_DOUBTFUL``
  the model sees only part of the scan.
- The resampling factor: how many model voxels one scan voxel becomes along its coarsest axis. Above
  ``UPSAMPLE_DOUBTFUL`` the scan is far coarser than the model's grid; above ``UPSAMPLE_OUT`` it is ``out``.
- A scan narrower, along any model axis, than the model's first layers read (the receptive field up to their
  first stride, in model voxels) fails outright: the classifier would answer from padding. The width is the
  scan's physical extent on the model grid, so a thin slab resampled onto a finer grid counts the model voxels
  it fills; a scan with too few voxels of its own that the grid blows up is the resampling factor's to flag.
- A constant volume, an empty head (almost no voxel above background) and a value range that cannot be MR
  (a share of voxels at or below ``AIR_HU``/2, as CT air at -1000 HU) are ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mri_lrp.model.transform import ModelSpace

COVERAGE_DOUBTFUL, COVERAGE_OUT = 0.5, 0.25
INSIDE_DOUBTFUL = 0.5
UPSAMPLE_DOUBTFUL, UPSAMPLE_OUT = 4.0, 8.0
HEAD_SHARE_OUT = 0.02        # share of the model grid above background below which the head is "empty"
AIR_HU = -1000.0             # CT air; an MR magnitude image has no value near it
CT_AIR_SHARE = 0.05          # share of voxels at or below AIR_HU / 2 that marks a CT-like range
RAW_SAMPLE = 1_000_000       # raw statistics read at most about this many voxels (a regular subsample)
MASK_SAMPLE = 100_000        # the head mask's background percentiles, from about this many model voxels


@dataclass(frozen=True)
class Geometry:
    """Where the scan lands on the model grid (spatial model axes only: a 2D model's slices are its own)."""

    input_coverage: float                 # share of model voxels that hold scan data
    scan_inside: float                    # share of scan voxels inside the model grid
    covered: tuple[int, ...]              # model voxels holding scan data, per spatial model axis
    spanned: tuple[float, ...]            # the scan's extent inside the grid in model voxels, same axes
    model_shape: tuple[int, ...]          # the spatial model grid
    upsampling: float                     # model voxels per scan voxel along the coarsest scan axis
    spacing: tuple[float, float, float]   # the scan's voxel size in mm, coarsest first


def geometry(space: ModelSpace) -> Geometry:
    """Coverage shares from the model grid's affine and the scan's (exact for every preprocessing chain: the
    model axes are a permutation of the scan's, each a start and a step in scan voxels)."""
    to_scan = np.linalg.inv(np.asarray(space.scan_affine, dtype=np.float64)) @ np.asarray(space.affine)
    if space.slice_axis is None:
        model_shape = tuple(int(n) for n in space.model_shape[1:4])
    else:
        model_shape = tuple(int(n) for n in space.model_shape[2:4])
    covered, spanned, inside_share, factors = [], [], [], []
    for j, n_out in enumerate(model_shape):
        i = int(np.argmax(np.abs(to_scan[:3, j])))
        step = float(to_scan[i, j])
        n_in = int(space.scan_shape[i])
        pos = to_scan[i, 3] + step * np.arange(n_out)
        covered.append(int(((pos >= -0.5) & (pos <= n_in - 0.5)).sum()))
        lo, hi = float(pos.min()) - abs(step) / 2, float(pos.max()) + abs(step) / 2
        inside = max(0.0, min(hi, n_in - 0.5) - max(lo, -0.5))  # in scan voxels
        spanned.append(inside / abs(step) if step else 0.0)
        inside_share.append(inside / n_in)
        factors.append(1.0 / abs(step) if step else float("inf"))
    n_model = float(np.prod(model_shape))
    return Geometry(input_coverage=float(np.prod(covered)) / n_model if n_model else 0.0,
                    scan_inside=float(np.prod(inside_share)), covered=tuple(covered),
                    spanned=tuple(spanned), model_shape=model_shape, upsampling=float(max(factors)),
                    spacing=tuple(sorted((float(v) for v in np.linalg.norm(  # type: ignore[arg-type]
                        np.asarray(space.scan_affine)[:3, :3], axis=0)), reverse=True)))


def input_need(model: nn.Module) -> int:
    """Voxels per axis the model's first layers read to make one value of their first coarser grid: the
    receptive field of the convolutions and poolings up to and including the first that strides (the first
    conv's kernel, then its pooling). A scan narrower than that gives the network nothing but padding."""
    field, jump = 1, 1
    for m in model.modules():
        if not isinstance(m, _GRID_LAYERS):
            continue
        kernel, stride, dilation = (_widest(getattr(m, name, 1)) for name in ("kernel_size", "stride", "dilation"))
        field += (kernel - 1) * dilation * jump
        jump *= stride
        if stride > 1:
            break
    return field


def _widest(value: int | tuple[int, ...] | None) -> int:
    if value is None:
        return 1
    return max(value) if isinstance(value, tuple) else int(value)


_GRID_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)


def too_small(geo: Geometry, need: int) -> str:
    """The reason a scan is too small to classify at all, or "" (a hard per-scan failure).

    Whole model voxels spanned, not scan voxels: a thin slab upsampled onto a fine grid is as wide as it is in
    millimetres (the rounding tolerance keeps an exact fit, 8 slices of 3 mm on a 2 mm grid, at 12)."""
    if min((int(w + 1e-6) for w in geo.spanned), default=need) >= need:
        return ""
    return (f"the scan fills {'x'.join(f'{w:.1f}' for w in geo.spanned)} voxels of the model's "
            f"{'x'.join(map(str, geo.model_shape))} grid ({_share(geo.input_coverage)} of it), fewer than the "
            f"{need} voxels per axis its first layers read: not an input this model can classify")


def geometry_reasons(geo: Geometry) -> tuple[list[str], list[str]]:
    """(reasons that make the scan out, reasons that make it doubtful), in words."""
    out, doubtful = [], []
    cover = f"covers {_share(geo.input_coverage)} of the model's field of view"
    if geo.input_coverage < COVERAGE_OUT:
        out.append(cover)
    elif geo.input_coverage < COVERAGE_DOUBTFUL:
        doubtful.append(cover)
    if geo.scan_inside < INSIDE_DOUBTFUL:
        doubtful.append(f"only {geo.scan_inside:.0%} of the scan lies inside the model's field of view")
    if geo.upsampling > UPSAMPLE_DOUBTFUL:
        words = (f"the scan is {geo.upsampling:.1f}x coarser than the model's grid along one axis "
                 "(a thumbnail or thick slices)")
        (out if geo.upsampling > UPSAMPLE_OUT else doubtful).append(words)
    return out, doubtful


def raw_stats(data: np.ndarray) -> dict[str, float]:
    """Value statistics of the stored scan (before any normalisation hides them), on a regular subsample."""
    a = np.asarray(data)
    stride = max(1, int(np.ceil((a.size / RAW_SAMPLE) ** (1 / 3))))
    sample = a[..., ::stride, ::stride, ::stride]
    if not np.isfinite(sample).all():
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return {"min": 0.0, "max": 0.0, "air_share": 0.0}
    return {"min": float(sample.min()), "max": float(sample.max()), "air_share": float((sample <= AIR_HU / 2).mean())}


def value_reasons(raw: dict[str, float]) -> list[str]:
    """Reasons the stored values cannot be an MR image the model reads (each makes the scan out)."""
    if not raw:
        return []
    lo, hi = raw["min"], raw["max"]
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return [f"the volume is constant (every voxel {hi:g}): there is nothing to classify"]
    if raw["air_share"] > CT_AIR_SHARE:
        return [f"{raw['air_share']:.0%} of the voxels are at or below {AIR_HU / 2:g} (down to {lo:g}): a CT-like "
                f"value range with air at {AIR_HU:g}, not an MR image"]
    return []


def head_mask(x: torch.Tensor) -> torch.Tensor:
    """Voxels of the model input above background: (X, Y, Z) bool from a (C, X, Y, Z) tensor.

    Background is the low end of the channel-mean histogram; a voxel is head when it is above 20% of the
    way from the 2nd to the 98th percentile (robust to noise in the air and to bright outliers)."""
    v = x.detach().float().mean(dim=0)
    flat = v.numpy().ravel()
    lo, hi = (float(q) for q in np.percentile(flat[:: max(1, flat.size // MASK_SAMPLE)], [2, 98]))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return torch.zeros_like(v, dtype=torch.bool)
    return v > lo + 0.2 * (hi - lo)


def head_reasons(head_share: float) -> list[str]:
    """A reason when almost no voxel of the model input stands above background (an empty or blank head)."""
    if head_share < HEAD_SHARE_OUT:
        return [f"an empty head: {head_share:.1%} of the model's field of view stands above background"]
    return []


def _share(value: float) -> str:
    """A share in words that does not round a sliver to 0%."""
    return f"{value:.0%}" if value >= 0.01 else f"{value:.2%}" if value >= 0.0001 else f"{value:.1e}"
