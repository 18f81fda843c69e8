"""Reading a multi-channel case: every channel read as its own image, then put on the first channel's grid.

Co-registered sequences (BraTS, most nnU-Net sets, a 4D stack) already share one grid and are stacked as
they are. A channel on another grid (DICOM series of one study usually differ in resolution and field of
view) is resampled onto the first channel's grid through the two voxel-to-world affines, trilinearly, with
0 where the first grid lies outside it; the scan's warnings say so. Channels that share no point in world
space are refused: they cannot be the same subject in one scanner frame.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mri_lrp.errors import ScanError
from mri_lrp.scans.refs import ScanRef
from mri_lrp.scans.scan import Scan

SAME_GRID_MM = 1e-3   # affines that agree this well (every entry, mm) are one grid: no resampling
_SLAB_VOXELS = 1 << 20  # voxels resampled at a time: bounds the temporary arrays


def read_case(ref: ScanRef, read_one: Callable[[ScanRef], Scan]) -> Scan:
    """The case's channels as one (C, I, J, K) Scan on the first channel's grid, in ``ref.channels`` order."""
    if _one_4d_file(ref):
        return _read_4d(ref, read_one)
    scans = [read_one(part) for part in ref.parts]  # a part's ScanError names that part's own file
    first = scans[0]
    data = np.empty((len(scans), *first.shape), dtype=np.float32)
    notes: list[str] = list(ref.notes)
    for c, (name, scan) in enumerate(zip(ref.channels, scans, strict=True)):
        notes.extend(f"{name}: {w}" for w in scan.warnings)
        if scan.data.size and scan.data.min() == scan.data.max():
            notes.append(f"{name}: every voxel is {float(scan.data.flat[0]):g}: this channel has no contrast")
        if same_grid(scan, first):
            data[c] = scan.data
            continue
        values, inside = resample_linear(scan.data, scan.affine, first.shape, first.affine)
        if inside == 0.0:
            raise ScanError(ref.location, f"channel {name} ({scan.source}) and channel {ref.channels[0]} "
                                          f"({first.source}) share no point in world space: not one subject "
                                          "in one scanner frame")
        data[c] = values
        outside = f"; {100 * (1 - inside):.1f}% of the {ref.channels[0]} grid lies outside {name} and is 0 there" \
            if inside < 1 else ""
        notes.append(f"{name} resampled (trilinear, world space) onto the {ref.channels[0]} grid: its own grid "
                     f"is {'x'.join(map(str, scan.shape))} at {'x'.join(f'{v:.3g}' for v in scan.spacing)} mm"
                     f"{outside}")
    metadata = dict(first.metadata)
    metadata["channels"] = ",".join(ref.channels)
    return Scan(scan_id=ref.scan_id, source=ref.source, kind=first.kind, data=data, affine=first.affine,
                paths=ref.paths, metadata=metadata, warnings=tuple(dict.fromkeys(notes)), channels=ref.channels)


def _one_4d_file(ref: ScanRef) -> bool:
    return all(p.kind == "nifti" and p.volume is not None and p.paths == ref.parts[0].paths for p in ref.parts)


def _read_4d(ref: ScanRef, read_one: Callable[[ScanRef], Scan]) -> Scan:
    """A 4D stack's channels from one read of the file: volume by volume, a compressed file would be
    decompressed again up to each volume (six times the work for four volumes).

    The first volume goes through the reader (header checks, geometry, warnings); the others come from the
    whole array, scaled the same way by nibabel.
    """
    import nibabel as nib

    first = read_one(ref.parts[0])
    try:
        whole = np.asarray(nib.load(ref.parts[0].paths[0], mmap=False).dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - the same file was just read; a failure now is a broken stream
        raise ScanError(ref.location, f"cannot read the 4D image data: {' '.join(str(e).split())}") from None
    whole = whole.reshape(*first.shape, -1)
    data = np.stack([whole[..., p.volume] for p in ref.parts])
    notes = [*ref.notes, *first.warnings]
    bad = ~np.isfinite(data)
    if bad.any():
        notes.append(f"{int(bad.sum())} NaN/Inf voxel(s) replaced with 0")
        data[bad] = 0.0
    notes += [f"{name}: every voxel is {float(d.flat[0]):g}: this channel has no contrast"
              for name, d in zip(ref.channels, data, strict=True) if d.size and d.min() == d.max()]
    metadata = {**first.metadata, "channels": ",".join(ref.channels)}
    return Scan(scan_id=ref.scan_id, source=ref.source, kind="nifti", data=data, affine=first.affine,
                paths=ref.paths, metadata=metadata, warnings=tuple(dict.fromkeys(notes)), channels=ref.channels)


def same_grid(a: Scan, b: Scan) -> bool:
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=SAME_GRID_MM))


def resample_linear(data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int],
                    target_affine: np.ndarray) -> tuple[np.ndarray, float]:
    """``data`` sampled trilinearly at the world positions of a target grid's voxels (0 outside it).

    Returns the float32 (I, J, K) values and the fraction of target voxels whose centre lies within the
    source's voxel grid (its centres' hull, half a voxel added on every side). The source gets a border of
    zeros, so a sample between the last voxel and the outside blends towards 0 as trilinear interpolation
    with zero padding does; torch's ``grid_sample`` does the arithmetic, a slab of target voxels at a time.
    """
    import torch
    import torch.nn.functional as F

    src = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    padded = F.pad(src[None, None], (1, 1, 1, 1, 1, 1))  # (1, 1, I + 2, J + 2, K + 2)
    n_src = np.asarray(src.shape, dtype=np.float64)
    to_src = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    out = np.empty(shape, dtype=np.float32)
    inside_count = 0
    rows = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    j = torch.arange(shape[1], dtype=torch.float64)[None, :, None]
    k = torch.arange(shape[2], dtype=torch.float64)[None, None, :]
    for start in range(0, shape[0], rows):
        i = torch.arange(start, min(shape[0], start + rows), dtype=torch.float64)[:, None, None]
        inside = torch.ones((len(i), shape[1], shape[2]), dtype=torch.bool)
        normalised = []
        for d in range(3):  # source voxel position along axis d of every target voxel in the slab
            m = to_src[d]
            coord = m[0] * i + m[1] * j + m[2] * k + m[3]
            inside &= (coord >= -0.5) & (coord <= n_src[d] - 0.5)
            normalised.append(2.0 * (coord + 1.0) / (n_src[d] + 1.0) - 1.0)  # over the padded size
        inside_count += int(inside.sum())
        # grid_sample wants (x, y, z) = (last, middle, first) axis
        grid = torch.stack(normalised[::-1], dim=-1).to(torch.float32)[None]
        sampled = F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start:start + len(i)] = sampled[0, 0].numpy()
    total = int(np.prod(shape))
    return out, inside_count / total if total else 0.0
