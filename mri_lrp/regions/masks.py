"""Tumour masks: finding a scan's mask under a masks folder, reading it onto the scan's grid, and the
``inside_mask`` / ``outside_mask`` partition it makes."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.regions.partition import Partition, resample_nearest
from mri_lrp.scans.scan import Scan

INSIDE_MASK = "inside_mask"
OUTSIDE_MASK = "outside_mask"
MASK_REGION_NAMES = (INSIDE_MASK, OUTSIDE_MASK)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_MASK_NAME_SUFFIXES = ("", "_mask", "-mask", "_seg", "-seg", "_label", "_labels")


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in (*_NIFTI_SUFFIXES, ".dcm"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_mask(masks_dir: str | Path, scan: Scan) -> Path | None:
    """The mask for ``scan`` under ``masks_dir``, or None.

    Looked for, in order: the scan's own relative path; a file or series folder named after the scan_id; one
    named after the source's file stem or series folder (also when the scan was given as the root itself). A
    name may end in ``_mask``, ``_seg`` or ``_label``.
    Two equally good candidates are an error rather than a guess.
    """
    root = Path(masks_dir)
    if not root.is_dir():
        raise SettingsError(f"{root}: masks folder not found")
    source = Path(scan.source)
    if source.parts and not source.is_absolute():
        same_path = root / source
        if same_path.is_file() or same_path.is_dir():
            return same_path
    candidates = _mask_candidates(str(root.resolve()), root.stat().st_mtime_ns)
    keys = [scan.scan_id, _stem(source.name)]
    if scan.paths:  # the scan's own file (NIfTI) or folder (DICOM), also when it was given as the root itself
        first = Path(scan.paths[0])
        keys.append(first.parent.name if scan.kind == "dicom" else _stem(first.name))
    for key in dict.fromkeys(keys):
        if not key or key == ".":
            continue
        wanted = {key + suffix for suffix in _MASK_NAME_SUFFIXES}
        hits = [path for name, path in candidates if name in wanted]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = ", ".join(str(h.relative_to(root.resolve())) for h in sorted(hits))
            raise ScanError(scan.source, f"several masks match '{key}' under {root}: {listed}", "regions")
    return None


@lru_cache(maxsize=8)
def _mask_candidates(root: str, mtime_ns: int) -> tuple[tuple[str, Path], ...]:
    """NIfTI files and leaf folders of other files (a DICOM series) under ``root``, keyed by stem or name.

    Listed once per folder (and modification time) rather than once per scan: a run over thousands of scans
    asks for the same listing each time.
    """
    found = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES):
            found.append((_stem(path.name), path))
        elif path.is_dir():
            children = list(path.iterdir())
            if children and not any(c.is_dir() or c.name.lower().endswith(_NIFTI_SUFFIXES) for c in children):
                found.append((path.name, path))
    return tuple(found)


def load_mask(path: str | Path, scan: Scan) -> np.ndarray:
    """A binary mask (any non-zero label) on the scan's grid, resampled nearest neighbour via the affines.

    NIfTI files are read here; a DICOM series folder goes through the package's scan readers.
    """
    path = Path(path)
    if path.is_dir():
        data, affine = _read_dicom_mask(path)
    else:
        data, affine = _read_nifti_mask(path)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        if not scan.is_2d:  # one slice of a 3D scan would score as a mask that misses the lesion
            raise ScanError(str(path), f"mask is 2D (shape {data.shape}) but the scan is 3D "
                                       f"(shape {scan.shape})", "regions")
        data = data[:, :, None]
    if data.ndim != 3:
        raise ScanError(str(path), f"mask must be 3D, got shape {data.shape}", "regions")
    binary = np.asarray(data != 0) & np.isfinite(data)
    try:
        on_scan = resample_nearest(binary, affine, scan.shape, scan.affine, fill=False).astype(bool)
    except ValueError as exc:
        raise ScanError(str(path), f"mask {exc}", "regions") from exc
    if binary.any() and not on_scan.any() and not _overlaps(binary, affine, scan):
        # a mask in another world space would score 0 without a word
        raise ScanError(str(path), f"none of the mask's {int(binary.sum())} voxels lies inside the scan: "
                                   "is it in the scan's world space?", "regions")
    return on_scan


def _overlaps(binary: np.ndarray, affine: np.ndarray, scan: Scan) -> bool:
    """Whether any mask voxel centre lies within the scan's voxel grid (a mask finer than the scan can have
    every voxel between the scan's voxel centres and vanish under nearest-neighbour resampling)."""
    ijk = np.argwhere(binary)[:: max(1, int(binary.sum()) // 100_000)].astype(np.float64)
    to_scan = np.linalg.inv(scan.affine) @ affine
    coords = ijk @ to_scan[:3, :3].T + to_scan[:3, 3]
    upper = np.asarray(scan.shape, dtype=np.float64) - 0.5
    return bool(np.any(np.all((coords >= -0.5) & (coords <= upper), axis=1)))


def _read_nifti_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for files it cannot read
        raise ScanError(str(path), f"mask is not a readable NIfTI file ({exc})", "regions") from exc


def _read_dicom_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask stored as a DICOM series folder, read by the same readers as the scans."""
    from mri_lrp.scans import discover, read_scan

    refs, _ = discover([str(path)], volume=None)
    if len(refs) != 1:
        raise ScanError(str(path), f"mask folder holds {len(refs)} readable series, expected one", "regions")
    mask_scan = read_scan(refs[0])
    return mask_scan.data, mask_scan.affine


def mask_partition(mask: np.ndarray) -> Partition:
    """Two regions: ``inside_mask`` (id 1) and ``outside_mask`` (id 0)."""
    return Partition(index=np.asarray(mask, dtype=bool).astype(np.int32), ids=(0, 1),
                     names=(OUTSIDE_MASK, INSIDE_MASK), kind="mask")
