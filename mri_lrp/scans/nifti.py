"""Volumes via nibabel (NIfTI-1/2, Analyze/NIfTI `.hdr/.img` pairs, FreeSurfer `.mgz`/`.mgh`): header checks
before any allocation, one volume at a time, scaling applied.

nibabel repairs some headers while loading (a zero pixdim becomes 1, a negative one loses its sign) and says so
only on its logger, which prints bare lines on stderr. Those repairs are caught here and become the scan's
warnings with the file named; a negative pixdim is kept as a flip of that axis in the affine when the affine
comes from the pixdims (qform or no orientation at all), since dropping the sign would mirror the scan.

Compressed files (`.nii.gz`, `.mgz`) are inflated by ISA-L, registered with nibabel's opener map for reading:
the same bytes as zlib gives, in about half the time (a 128³ float32 scan: ~30 instead of ~55 ms).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace

import nibabel as nib
import numpy as np
from isal import igzip
from nibabel.openers import ImageOpener

from mri_lrp.errors import ScanError
from mri_lrp.scans.refs import MAX_VOLUMES, MAX_VOXELS, ScanRef
from mri_lrp.scans.scan import Scan

FORM_TOL_MM = 1e-3  # sform and qform differing by more than this (any affine entry) disagree
# Deflate never compresses better than about 1032:1, so a .gz file this many times smaller than the data its
# header claims cannot hold that data (a 368-byte file claiming 32,767 volumes is refused as one failure).
MAX_DEFLATE_RATIO = 1032
_VOLUME_TYPES = (nib.analyze.AnalyzeImage, nib.freesurfer.mghformat.MGHImage)  # NIfTI-1/2 images and pairs too
_NIBABEL_GZ = ImageOpener.compress_ext_map[".gz"]


# ISA-L reads ahead in large blocks, so a truncated file fails even on its header; such a file is loaded again
# through zlib, whose error then names what is wrong with the data (the stream ends early), not the file type.
_ZLIB_ONLY: ContextVar[bool] = ContextVar("zlib_only", default=False)


def _nib_load(path: str, notes: list[str]) -> nib.spatialimages.SpatialImage:
    """nib.load without file maps kept open (a Scan crosses processes); a compressed file that fails through
    ISA-L is tried once more through zlib."""
    try:
        with _nibabel_log(notes):
            return nib.load(path, mmap=False)
    except Exception:
        if not path.lower().endswith((".gz", ".mgz")):
            raise
    notes.clear()
    token = _ZLIB_ONLY.set(True)
    try:
        with _nibabel_log(notes):
            return nib.load(path, mmap=False)
    finally:
        _ZLIB_ONLY.reset(token)


def _gzip_open(filename: str, mode: str = "rb", *args: object, **kwargs: object) -> object:
    """nibabel's gzip opener, reading through ISA-L; writing is left to nibabel's own."""
    if mode.startswith("r") and not _ZLIB_ONLY.get():
        return igzip.open(filename, "rb")
    return _NIBABEL_GZ[0](filename, mode, *args, **kwargs)


for _ext in (".gz", ".mgz"):  # the extension point nibabel gives image classes for their compressed forms
    ImageOpener.compress_ext_map[_ext] = (_gzip_open, _NIBABEL_GZ[1])


@contextmanager
def _nibabel_log(notes: list[str]) -> Iterator[None]:
    """Collect what nibabel logs while loading (its header repairs) instead of letting it print to stderr."""
    logger = logging.getLogger("nibabel.global")

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(" ".join(record.getMessage().split()))

    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [_Keep()], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved


def _load(path: str, location: str, repairs: list[str] | None = None) -> nib.spatialimages.SpatialImage:
    notes: list[str] = []
    try:
        img = _nib_load(path, notes)
    except Exception as e:  # nibabel and the OS raise many types for files that are not NIfTI
        reason = " ".join(str(e).replace(path, os.path.basename(path)).split()) or type(e).__name__
        raise ScanError(location, f"not a readable NIfTI file: {reason}") from None
    if not isinstance(img, _VOLUME_TYPES):
        raise ScanError(location, f"{type(img).__name__} is not a NIfTI, Analyze or MGH volume")
    if repairs is not None:
        repairs.extend(notes)
    return img


def _data_file(img: nib.spatialimages.SpatialImage, path: str) -> str:
    """The file that holds the voxels: the .img of a .hdr/.img pair, else the file itself."""
    holder = img.file_map.get("image")
    return holder.filename if holder is not None and holder.filename else path


def _size_problem(img: nib.spatialimages.SpatialImage, path: str) -> str | None:
    """Why the file cannot hold the data its header claims (None when it can, or cannot be told cheaply)."""
    data_path = _data_file(img, path)
    try:
        size = os.path.getsize(data_path)
    except OSError as e:
        return f"cannot read {os.path.basename(data_path)}: {e.strerror}"
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    needed = offset + math.prod(img.shape) * img.header.get_data_dtype().itemsize
    name = os.path.basename(data_path)
    if data_path.lower().endswith((".gz", ".mgz")):
        if size * MAX_DEFLATE_RATIO + 1024 < needed:
            return (f"{name} is {size} bytes compressed, but its header claims shape {tuple(img.shape)} "
                    f"({needed} bytes), more than any compressed file of that size can hold: corrupt header")
        return None
    if size < needed:
        return f"{name} is {size} bytes but its header needs {needed}: truncated or corrupt"
    return None


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
    get_intent = getattr(img.header, "get_intent", None)
    is_label = get_intent is not None and get_intent()[0] == "label"
    try:
        volumes = spatial_shape(img.shape, path)[1]
    except ScanError:
        return None, is_label
    return (None if _size_problem(img, path) else volumes), is_label


def _form_warnings(img: nib.spatialimages.SpatialImage) -> list[str]:
    header = img.header
    if isinstance(img, nib.freesurfer.mghformat.MGHImage):
        return []  # MGH always carries its full voxel-to-scanner transform
    if not isinstance(img, nib.Nifti1Pair):
        return ["Analyze 7.5 header: no orientation is stored, nibabel's default (x flipped, LAS) is assumed"]
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


def _pixdim_fixes(img: nib.spatialimages.SpatialImage, path: str, repairs: list[str],
                  affine: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """nibabel's header repairs as warnings naming the file; a negative pixdim flips its axis in an affine
    built from the pixdims (with an sform, the sform alone says where voxels are)."""
    name = os.path.basename(path)
    notes = [f"{name}: nibabel repaired the header: {r}" for r in dict.fromkeys(repairs)]
    if not repairs or not isinstance(img, nib.analyze.AnalyzeImage):
        return affine, notes
    try:
        with open(path, "rb") as f:
            raw = img.header_class.from_fileobj(_opener(f, path), check=False)
    except Exception:  # noqa: BLE001 - the header was just read by nibabel; give up on the sign only
        return affine, notes
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    from_pixdims = not (isinstance(img, nib.Nifti1Pair) and int(img.header["sform_code"]) > 0)
    zero = [i + 1 for i in range(3) if pixdim[i] == 0]
    if zero:
        notes.append(f"{name}: pixdim[{','.join(map(str, zero))}] is 0, so the voxel size there is unknown"
                     + ("; 1 mm assumed" if from_pixdims else "; the sform gives the geometry"))
    negative = [i for i in range(3) if pixdim[i] < 0]
    if negative and from_pixdims:
        affine = affine.copy()
        affine[:3, negative] *= -1
        notes.append(f"{name}: negative pixdim[{','.join(str(i + 1) for i in negative)}] taken as a flip of "
                     "that voxel axis in the affine (nibabel drops the sign)")
    elif negative:
        notes.append(f"{name}: negative pixdim[{','.join(str(i + 1) for i in negative)}] ignored: the sform "
                     "gives the geometry")
    return affine, notes


def _opener(f: object, path: str) -> object:
    import gzip

    return gzip.GzipFile(fileobj=f) if path.lower().endswith(".gz") else f  # type: ignore[arg-type]


def _format_name(img: nib.spatialimages.SpatialImage) -> str:
    if isinstance(img, nib.freesurfer.mghformat.MGHImage):
        return "mgh"
    if isinstance(img, nib.Nifti2Pair):
        return "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti2-pair"
    if isinstance(img, nib.Nifti1Pair):
        return "nifti1" if isinstance(img, nib.Nifti1Image) else "nifti1-pair"
    return "analyze"


def _read(ref: ScanRef) -> Scan:
    loc, path = ref.location, ref.paths[0]
    repairs: list[str] = []
    img = _load(path, loc, repairs)
    spatial, volumes = spatial_shape(img.shape, loc)
    header = img.header
    dtype = header.get_data_dtype()
    if dtype.fields is not None:  # RGB / RGBA voxels: colour, not one intensity per voxel
        raise ScanError(loc, f"voxels of type {'/'.join(dtype.names or ())} (colour) are not supported: "
                             "a scan needs one intensity per voxel")
    problem = _size_problem(img, path)
    if problem:
        raise ScanError(loc, problem)
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
    affine, fixes = _pixdim_fixes(img, path, repairs, np.asarray(img.affine, dtype=np.float64))
    notes += fixes
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanError(loc, "the header's affine is singular or not finite, so voxels have no position")
    codes = {k: str(int(header[k])) for k in ("qform_code", "sform_code")} if isinstance(img, nib.Nifti1Pair) \
        else {}
    metadata = {"format": _format_name(img), **codes,
                "dtype": dtype.name}  # stored voxel type: label maps are stored as integers
    if volumes > 1:
        metadata["volume"] = str(ref.volume if ref.volume is not None else 0)
        metadata["volumes"] = str(volumes)
    return Scan(scan_id=ref.scan_id, source=ref.source, kind="nifti", data=data, affine=affine,
                paths=ref.paths, metadata=metadata, warnings=tuple(notes))
