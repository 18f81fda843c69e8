"""Scan space <-> model space: the model tensor for a scan, and the way back for relevance.

The forward map, in this fixed order (the README's "Input spec" section):

1. reorient to ``spec.orientation`` — an exact permutation and flip of the axes;
2. resample to ``spec.spacing`` (MONAI ``Spacing``'s grid: first model voxel on the first scan voxel, size
   round((n - 1) s / s') + 1, border padding);
3. ``crop_foreground`` — the box of voxels above the threshold in any channel, plus the margin, padded where
   it passes the image;
4. ``resize`` to ``spec.shape`` (MONAI ``Resize`` / torchvision ``Resize``), or centre crop/pad to it;
5. intensity normalisation (or first, on the reoriented scan, with ``normalization_order = "first"``);
6. a single-channel scan repeated into every channel of a multi-channel model (with a warning).

Steps 2-4 act on each axis separately, so each axis is one chain of linear maps (mri_lrp.model.resample):
``model = W_x . W_y . W_z . scan`` with W = W_resize . W_crop . W_spacing. Relevance goes back through the
transpose, ``R_scan = W_x^T . W_y^T . W_z^T . R_model``: every row of W that reads only the scan sums to 1,
so the total is preserved and no scan voxel receives relevance it did not contribute to. A row that reads the
scan only in part (a resize across zero padding) is scaled to sum to 1 first, so its relevance goes wholly to
the voxels it read; a model voxel of pure zero padding keeps its relevance (``outside_relevance``).
Normalisation is an affine map per voxel, so relevance passes it 1:1; repeated channels add up on the way back.

``align = "centre"`` (the meaning of checkpoints written before these keys) is one step instead of 2-4: the
model grid centred on the scan, at the model spacing and shape, with the anti-aliased tent kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nibabel.orientations import aff2axcodes, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from mri_lrp.errors import ScanError
from mri_lrp.model.intensity import normalise
from mri_lrp.model.resample import (
    Area,
    AxisMap,
    Linear,
    Nearest,
    Step,
    Window,
    apply_axes,
    centre_window,
    centred_grid,
    downsampling_half_width,
    spacing_grid,
)
from mri_lrp.model.spec import InputSpec
from mri_lrp.scans.scan import Scan

# A model grid above this many values (all channels) is refused rather than allocated: it means a spacing or
# shape far from anything a classifier takes, and would exhaust memory.
MAX_MODEL_VALUES = 2**28

_AXIS_PAIRS = {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


@dataclass(frozen=True)
class ModelSpace:
    """Where a model input sits relative to its scan: small and picklable, all the way back needs.

    ``model_shape``: shape of the model tensor. ``affine``: model voxel -> world RAS mm; indices (x, y, z) for
    3D, (x, y, slice) for 2D. ``axes``/``flips``: oriented axis j is scan axis ``axes[j]``; scan axis i is
    reversed first when ``flips[i]``. ``maps``: the chain of linear steps along each oriented axis (identity
    along a 2D model's slice axis). ``slice_axis``: for 2D, the oriented axis the slices run along; None for
    3D. ``scan_shape``/``scan_affine``: the spatial scan grid relevance returns to.
    """

    model_shape: tuple[int, ...]
    affine: np.ndarray
    scan_shape: tuple[int, int, int]
    scan_affine: np.ndarray
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    maps: tuple[AxisMap, AxisMap, AxisMap]
    slice_axis: int | None

    @property
    def channels(self) -> int:
        return self.model_shape[0 if self.slice_axis is None else 1]


@dataclass(frozen=True)
class ModelInput:
    """The model tensor for one scan and its ``space`` (what maps relevance back).

    ``tensor``: 3D spec -> (C, X, Y, Z); 2D spec -> (S, C, X, Y), one sample per slice; channels in the
    scan's order. Intensity statistics are taken over the whole model grid (all slices together for 2D).
    ``notes``: remarks for the scan's report; those starting "warning:" mean the input may not be what the
    model was trained on (a single contrast repeated into every channel, say).
    """

    tensor: torch.Tensor
    space: ModelSpace
    notes: tuple[str, ...] = ()


def to_model(scan: Scan, spec: InputSpec, device: torch.device | str = "cpu") -> ModelInput:
    """Preprocess ``scan`` per ``spec`` on ``device``; keep what the inverse needs."""
    data = np.asarray(scan.data)
    spatial = tuple(int(n) for n in data.shape[-3:])
    n_scan = data.shape[0] if data.ndim == 4 else 1
    notes: list[str] = []
    image = scan.kind == "image"
    if n_scan > 1 and n_scan != spec.channels:
        what = "colour image" if image else "case"
        fix = "; save it as grey (as Image.convert('L') gives) if the model was trained on grey images" \
            if image and spec.channels == 1 else ""
        raise ScanError(scan.source, f"the {what} has {n_scan} channels, the model takes {spec.channels}{fix}",
                        stage="preprocess")
    repeat = n_scan == 1 and spec.channels > 1
    deep = image and scan.metadata.get("dtype", "uint8") != "uint8"
    if repeat and deep:  # Image.convert('RGB') clips 16-bit values to 255 and turns float [0, 1] into 0
        notes.append(f"warning: {scan.metadata['dtype']} grey image repeated into the model's {spec.channels} "
                     f"colour channels with its stored values (up to {float(data.max()):g}), not as "
                     "ToTensor(Image.convert('RGB')) would give them (clipped to 8 bits): check what the model "
                     "was trained on")
    elif repeat and (image or spec.colour_channels):
        notes.append(f"grey image repeated into the model's {spec.channels} colour channels (as ToTensor of "
                     "Image.convert('RGB') gives)")
    elif repeat:
        notes.append(f"warning: one image repeated into all {spec.channels} model channels (the model takes "
                     f"{spec.channels} inputs per case; give each channel its own file)")
    if image:
        axes, flips = (0, 1, 2), (False, False, False)
        if spec.spacing is not None:
            notes.append("spacing ignored: an image file has no voxel size; resize or shape set its grid")
    else:
        axes, flips = _orientation(scan, spec)
    oriented_shape = tuple(spatial[i] for i in axes)
    oriented_affine = scan.affine @ inv_ornt_aff(_ornt(axes, flips), spatial)
    oriented_spacing = tuple(float(v) for v in np.linalg.norm(oriented_affine[:3, :3], axis=0))

    slice_axis: int | None = None
    if spec.dims == 2:
        slice_axis, note = (2, "") if image else _slice_axis(scan, spec, axes, oriented_affine)
        if note:
            notes.append(note)
    model_axes = [d for d in range(3) if d != slice_axis]

    volume = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32), device=device)
    volume = _reorient(volume.reshape(n_scan, *spatial), axes, flips)
    early = repeat and spec.normalization in ("meanstd", "imagenet")
    if early:  # per-channel constants need the model's channels
        volume = volume.expand(spec.channels, *volume.shape[1:])
    if spec.normalization_order == "first":
        volume = normalise(volume, spec)

    spacing = None if image else spec.spacing
    if spec.align == "centre":
        maps = _centred_maps(oriented_shape, oriented_spacing, spec, spacing, model_axes)
        _check_size(scan, maps, spec)
        volume = apply_axes(volume, maps, 1, transpose=False)
    else:
        maps = _spacing_maps(oriented_shape, oriented_spacing, spec, spacing, model_axes)
        _check_size(scan, maps, spec)
        rest = [AxisMap(m.n_out) for m in maps]
        if spec.crop_foreground is not None:  # the box is found on the resampled grid
            volume = apply_axes(volume, maps, 1, transpose=False)
            rest = _crop_foreground(volume, spec, model_axes, rest, notes)
        rest = _fit_shape(spec, model_axes, rest)
        _check_size(scan, tuple(rest), spec)
        chain = tuple(AxisMap(m.n_in, (*m.steps, *r.steps)) for m, r in zip(maps, rest, strict=True))
        volume = apply_axes(volume, tuple(rest) if spec.crop_foreground is not None else chain, 1, transpose=False)
        maps = chain

    if spec.normalization_order == "last":
        volume = normalise(volume, spec)
    if repeat and not early:
        volume = volume.expand(spec.channels, *volume.shape[1:])

    starts, steps = zip(*(_position(m) for m in maps), strict=True)
    scale = np.diag([*steps, 1.0])
    scale[:3, 3] = starts
    model_affine = oriented_affine @ scale
    if slice_axis is None:
        tensor = volume
    else:
        in_plane = [d for d in range(3) if d != slice_axis]
        tensor = volume.permute(slice_axis + 1, 0, *(d + 1 for d in in_plane))
        model_affine = model_affine[:, [*in_plane, slice_axis, 3]]
    space = ModelSpace(
        model_shape=tuple(tensor.shape),
        affine=model_affine,
        scan_shape=spatial,  # type: ignore[arg-type]
        scan_affine=np.array(scan.affine, dtype=np.float64),
        axes=axes,
        flips=flips,
        maps=maps,  # type: ignore[arg-type]
        slice_axis=slice_axis,
    )
    return ModelInput(tensor=tensor.contiguous(), space=space, notes=tuple(notes))


def to_scan(relevance: torch.Tensor, ctx: ModelInput | ModelSpace) -> np.ndarray:
    """Model-space relevance (shaped like the model tensor) -> float32 (I, J, K) relevance in the scan's grid,
    summed over channels; the total is preserved to float32 rounding (float64 on the way).

    ``ctx`` may be the ModelInput or just its ``space`` (e.g. once the tensor itself has been dropped).
    """
    return _back(relevance, ctx, keep_channels=False)[0]


def to_scan_channels(relevance: torch.Tensor, ctx: ModelInput | ModelSpace) -> np.ndarray:
    """As ``to_scan``, one map per model channel: float32 (C, I, J, K); each channel's total is preserved."""
    return _back(relevance, ctx, keep_channels=True)


def outside_relevance(relevance: torch.Tensor, ctx: ModelInput | ModelSpace) -> float:
    """The relevance on model voxels that read no scan voxel (zero padding past the scan): the one part of the
    total that has no place in the scan, so ``to_scan``'s sum is the model sum minus this."""
    space = ctx.space if isinstance(ctx, ModelInput) else ctx
    reads = [torch.as_tensor(np.abs(m.matrix()).sum(axis=1) > 0) if not m.is_identity
             else torch.ones(m.n_in, dtype=torch.bool) for m in space.maps]
    inside = reads[0][:, None, None] & reads[1][None, :, None] & reads[2][None, None, :]
    if space.slice_axis is not None:
        in_plane = [d for d in range(3) if d != space.slice_axis]
        inside = inside.permute(space.slice_axis, *in_plane).unsqueeze(1)
    if bool(inside.all()):
        return 0.0
    volume = relevance.detach().to(torch.float64).cpu()
    return float(volume.sum() - torch.where(inside, volume, torch.zeros_like(volume)).sum())


def model_volume(tensor: torch.Tensor, space: ModelSpace) -> np.ndarray:
    """The model tensor as a float32 (X, Y, Z, C) array on ``space.affine``'s grid (2D: slices on Z)."""
    t = tensor.detach().to(torch.float32).cpu()
    t = t.permute(1, 2, 3, 0) if space.slice_axis is None else t.permute(2, 3, 0, 1)
    return np.ascontiguousarray(t.numpy())


def _back(relevance: torch.Tensor, ctx: ModelInput | ModelSpace, keep_channels: bool) -> np.ndarray:
    space = ctx.space if isinstance(ctx, ModelInput) else ctx
    if tuple(relevance.shape) != tuple(space.model_shape):
        raise ValueError(f"relevance has shape {list(relevance.shape)}, "
                         f"the model input {list(space.model_shape)}")
    volume = relevance.detach().to(torch.float64)
    if space.slice_axis is not None:  # (S, C, a, b) -> (C, X, Y, Z)
        in_plane = [d for d in range(3) if d != space.slice_axis]
        volume = volume.permute(1, *(0 if d == space.slice_axis else 2 + in_plane.index(d) for d in range(3)))
    if not keep_channels:
        volume = volume.sum(dim=0, keepdim=True)
    volume = apply_axes(volume, space.maps, 1, transpose=True)
    volume = _unorient(volume, space.axes, space.flips)
    return volume.to(torch.float32).cpu().numpy()


def _spacing_maps(shape: tuple[int, ...], spacing: tuple[float, ...], spec: InputSpec,
                  target: tuple[float, ...] | None, model_axes: list[int]) -> tuple[AxisMap, AxisMap, AxisMap]:
    """Step 2 (MONAI ``Spacing``): linear, or nearest with ``interpolation = "nearest"``; border padding."""
    maps = []
    for d in range(3):
        axis = AxisMap(shape[d])
        if target is not None and d in model_axes:
            step = float(target[model_axes.index(d)]) / spacing[d]
            n_out, start = spacing_grid(shape[d], step)
            # A spacing equal to the scan's up to rounding (an oblique affine's column norms) moves no voxel by
            # more than 1e-3 of a voxel: identity, so background stays exactly 0.
            if not (n_out == shape[d] and abs(step - 1.0) * shape[d] < 1e-3):
                axis = axis.then(_sampler(spec, shape[d], n_out, start, step, floor=False))
        maps.append(axis)
    return maps[0], maps[1], maps[2]


def _centred_maps(shape: tuple[int, ...], spacing: tuple[float, ...], spec: InputSpec,
                  target: tuple[float, ...] | None, model_axes: list[int]) -> tuple[AxisMap, AxisMap, AxisMap]:
    """``align = "centre"``: spacing and shape in one step, the model grid's centre on the scan's."""
    maps = []
    for d in range(3):
        axis = AxisMap(shape[d])
        if d in model_axes:
            k = model_axes.index(d)
            step = float(target[k]) / spacing[d] if target is not None else 1.0
            n_out, start = centred_grid(shape[d], step, int(spec.shape[k]) if spec.shape is not None else None)
            if not (n_out == shape[d] and start == 0.0 and step == 1.0):
                axis = axis.then(_sampler(spec, shape[d], n_out, start, step, floor=False))
        maps.append(axis)
    return maps[0], maps[1], maps[2]


def _sampler(spec: InputSpec, n_in: int, n_out: int, start: float, step: float, floor: bool) -> Step:
    if spec.interpolation == "nearest":
        return Nearest(n_in, n_out, start, step, floor=floor)
    zeros = spec.align == "centre" and spec.padding == "zeros"
    return Linear(n_in, n_out, start, step, downsampling_half_width(step, spec.antialias), zeros_outside=zeros)


def _crop_foreground(volume: torch.Tensor, spec: InputSpec, model_axes: list[int], rest: list[AxisMap],
                     notes: list[str]) -> list[AxisMap]:
    """Step 3: the box of voxels > threshold in any channel, grown by the margin (MONAI ``CropForeground``
    with ``allow_smaller=False``: a box past the image is padded)."""
    crop = spec.crop_foreground
    assert crop is not None
    mask = (volume > crop.threshold).any(dim=0)
    if not bool(mask.any()):
        notes.append(f"warning: no voxel above the crop_foreground threshold {crop.threshold:g}; not cropped")
        return rest
    margins = crop.margin * len(model_axes) if len(crop.margin) == 1 else crop.margin
    out = list(rest)
    for k, d in enumerate(model_axes):
        hit = torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != d))).flatten()
        lo, hi = int(hit[0]) - margins[k], int(hit[-1]) + margins[k] + 1
        if lo != 0 or hi != rest[d].n_out:
            out[d] = rest[d].then(Window(rest[d].n_out, hi - lo, lo, edge=spec.padding == "edge"))
    return out


def _fit_shape(spec: InputSpec, model_axes: list[int], rest: list[AxisMap]) -> list[AxisMap]:
    """Step 4: resize to ``spec.shape`` (torch ``interpolate`` semantics, ``align_corners=False``) or centre
    crop/pad to it (MONAI ``ResizeWithPadOrCrop``)."""
    if spec.shape is None:
        return rest
    out = list(rest)
    for k, d in enumerate(model_axes):
        n_in, n_out = rest[d].n_out, int(spec.shape[k])
        if n_in == n_out:
            continue
        if not spec.resize:
            step: Step = Window(n_in, n_out, centre_window(n_in, n_out), edge=spec.padding == "edge")
        elif spec.interpolation == "area":
            step = Area(n_in, n_out)
        elif spec.interpolation == "nearest":
            step = Nearest(n_in, n_out, 0.0, n_in / n_out, floor=True)
        else:
            scale = n_in / n_out
            step = Linear(n_in, n_out, 0.5 * scale - 0.5, scale, downsampling_half_width(scale, spec.antialias))
        out[d] = rest[d].then(step)
    return out


def _position(axis: AxisMap) -> tuple[float, float]:
    """(start, step): model voxel m sits at oriented scan position start + m * step (for the model affine)."""
    start, step = 0.0, 1.0
    for s in axis.steps:
        if isinstance(s, Window):
            a, b = float(s.lo), 1.0
        elif isinstance(s, Area):
            b = s.n_in / s.n_out
            a = 0.5 * b - 0.5
        else:
            a, b = s.start, s.step
        start, step = start + a * step, b * step
    return start, step


def _check_size(scan: Scan, maps: tuple[AxisMap, ...], spec: InputSpec) -> None:
    out_shape = [m.n_out for m in maps]
    if int(np.prod(out_shape)) * spec.channels > MAX_MODEL_VALUES or min(out_shape) < 1:
        raise ScanError(scan.source, f"model grid {out_shape} x {spec.channels} channels is too large or empty "
                        f"(spacing {spec.spacing}, shape {spec.shape})", stage="preprocess")


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
    if scan.data.shape[-1] != 1:
        return along_spec, ""
    through = axes.index(2)
    if through == along_spec:
        return through, ""
    return through, f"single-slice scan is cut across {codes[through]}, not the model's slice axis {wanted}"


def _reorient(volume: torch.Tensor, axes: tuple[int, ...], flips: tuple[bool, ...]) -> torch.Tensor:
    """(C, I, J, K) in stored order -> (C, oriented axes)."""
    flipped = [i + 1 for i in range(3) if flips[i]]
    if flipped:
        volume = volume.flip(flipped)
    return volume.permute(0, *(a + 1 for a in axes))


def _unorient(volume: torch.Tensor, axes: tuple[int, ...], flips: tuple[bool, ...]) -> torch.Tensor:
    volume = volume.permute(0, *(int(a) + 1 for a in np.argsort(axes)))
    flipped = [i + 1 for i in range(3) if flips[i]]
    return volume.flip(flipped) if flipped else volume
