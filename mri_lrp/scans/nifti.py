"""NIfTI via nibabel: header checks before any allocation, one volume at a time, scaling applied."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace

import nibabel as nib
import numpy as np

from mri_lrp.errors import ScanError
from mri_lrp.scans.refs import MAX_VOLUMES, MAX_VOXELS, ScanRef
from mri_lrp.scans.scan import Scan

FORM_TOL_MM = 1e-3  # sform and qform differing by more than this (any affine entry) disagree


def _load(path: str, location: str) -> nib.Nifti1Image:
    try:
        img = nib.load(path, mmap=False)  # no file maps kept open in a Scan that crosses processes
    except Exception as e:  # nibabel and the OS raise many types for files that are not NIfTI
        reason = " ".join(str(e).replace(path, os.path.basename(path)).split()) or type(e).__name__
        raise ScanError(location, f"not a readable NIfTI file: {reason}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(location, f"{type(img).__name__} is not a NIfTI image")
    return img


def spatial_shape(shape: tuple[int, ...], location: str) -> tuple[tuple[int, int, int], int]:
    """(I, J, K) and the number of volumes, from a header's shape; refuses 5D+ and absurd sizes."""
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:  # (X, Y, Z, 1, 1) is still one volume
        dims.pop()
    if len(dims) > 4:
        raise ScanError(location, f"{len(dims)}D NIfTI (shape {tuple(shape)}) is not supported: "
                                  "only 3D volumes and 4D series of volumes")
    if len(dims) < 2 or any(int(n) < 1 for n in dims):
        raise ScanError(location, f"NIfTI shape {tuple(shape)} holds no image")
    spatial = (*[int(n) for n in dims[:3]], *([1] * (3 - len(dims[:3]))))
    volumes = int(dims[3]) if len(dims) == 4 else 1
    if math.prod(spatial) > MAX_VOXELS or volumes > MAX_VOLUMES:
        raise ScanError(location, f"header claims shape {tuple(shape)}, beyond the {MAX_VOXELS}-voxel / "
                                  f"{MAX_VOLUMES}-volume limit; refused before reading")
    return spatial, volumes  # type: ignore[return-value]


def probe_nifti(path: str) -> tuple[int | None, bool]:
    """From one header read: the number of volumes (None when the header is unusable; the read will say
    why), and whether the file declares itself a label map (intent 'label': a mask or atlas, not a scan)."""
    try:
        img = _load(path, path)
    except ScanError:
        return None, False
    is_label = img.header.get_intent()[0] == "label"
    try:
        return spatial_shape(img.shape, path)[1], is_label
    except ScanError:
        return None, is_label


def _form_warnings(img: nib.Nifti1Image) -> list[str]:
    header = img.header
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if scode and qcode:
        diff = float(np.abs(np.asarray(sform) - np.asarray(qform)).max())
        if diff > FORM_TOL_MM:
            return [f"sform and qform disagree (by up to {diff:.3g} mm); using the sform, as nibabel does"]
    if not scode and not qcode:
        return ["neither sform nor qform is set: orientation is unknown, only voxel sizes are used"]
    return []


def read_nifti(ref: ScanRef) -> Scan:
    """Read one NIfTI volume (for 4D, volume ``ref.volume``) as float32 with its scaling applied.

    nibabel's warnings about odd headers become the scan's warnings instead of lines on stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan = _read(ref)
    notes = [" ".join(str(w.message).split()) for w in caught]
    return replace(scan, warnings=scan.warnings + tuple(n for n in dict.fromkeys(notes) if n not in scan.warnings))


def _read(ref: ScanRef) -> Scan:
    loc, path = ref.location, ref.paths[0]
    img = _load(path, loc)
    spatial, volumes = spatial_shape(img.shape, loc)
    header = img.header
    dtype = header.get_data_dtype()
    if dtype.fields is not None:  # RGB / RGBA voxels: colour, not one intensity per voxel
        raise ScanError(loc, f"voxels of type {'/'.join(dtype.names or ())} (colour) are not supported: "
                             "a scan needs one intensity per voxel")
    if not path.lower().endswith(".gz"):
        needed = int(header["vox_offset"]) + math.prod(img.shape) * header.get_data_dtype().itemsize
        size = os.path.getsize(path)
        if size < needed:
            raise ScanError(loc, f"file is {size} bytes but its header needs {needed}: truncated or corrupt")
    notes = _form_warnings(img)
    ndim = len(img.shape)
    try:
        if volumes > 1 or ref.volume is not None:
            v = 0 if ref.volume is None else ref.volume
            if not 0 <= v < volumes:
                raise ScanError(loc, f"volume {v} requested but the file has {volumes} (numbered from 0)")
            index = (slice(None),) * 3 + (v,) + (0,) * (ndim - 4) if ndim >= 4 else (slice(None),) * ndim
            data = np.asarray(img.dataobj[index], dtype=np.float32)
        elif ndim == 3:
            data = img.get_fdata(dtype=np.float32)
        else:
            index = (slice(None),) * min(ndim, 3) + (0,) * max(ndim - 3, 0)
            data = np.asarray(img.dataobj[index], dtype=np.float32)
    except ScanError:
        raise
    except Exception as e:  # truncated gzip streams, bad dtypes, unreadable files
        raise ScanError(loc, f"cannot read the image data: {' '.join(str(e).split()) or type(e).__name__}") \
            from None
    data = data.reshape(spatial)
    bad = ~np.isfinite(data)
    if bad.any():
        notes.append(f"{int(bad.sum())} NaN/Inf voxel(s) replaced with 0")
        data[bad] = 0.0
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(loc, "the header's affine is singular or not finite, so voxels have no position")
    metadata = {"format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
                "qform_code": str(int(header["qform_code"])), "sform_code": str(int(header["sform_code"])),
                "dtype": dtype.name}  # stored voxel type: label maps are stored as integers
    if volumes > 1:
        metadata["volume"] = str(ref.volume if ref.volume is not None else 0)
        metadata["volumes"] = str(volumes)
    return Scan(scan_id=ref.scan_id, source=ref.source, kind="nifti", data=data, affine=affine,
                paths=ref.paths, metadata=metadata, warnings=tuple(notes))
