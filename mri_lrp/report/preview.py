"""A light copy of a scan and its relevance for the report's slice viewer, as a script a page loads from disk.

A page opened from disk (file://) may not fetch other local files, but it may run `<script src>` tags; so the
preview is a small JavaScript file that assigns two gzipped NIfTI volumes, base64-encoded, to a global. Both are
block-averaged to at most PREVIEW_VOXELS voxels and quantised to one byte per voxel (the scan to 0..255 between
its 1st and 99.5th percentiles, the relevance symmetrically to -127..127 with the scale in `scl_slope`), so a
preview is a few hundred kB whatever the scan's size. The full-resolution map is relevance.nii.gz.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np

from mri_lrp.outputs import atomic_write_text

PREVIEW_NAME = "preview.js"
PREVIEW_VOXELS = 2**19   # about 80^3: fine enough to find a hot spot, light enough for 2,000 scans
PREVIEW_GLOBAL = "MRI_LRP_PREVIEW"


def block_factor(shape: tuple[int, ...], budget: int = PREVIEW_VOXELS) -> int:
    """The smallest whole-number block edge that brings the volume under ``budget`` voxels."""
    voxels = math.prod(shape)
    factor = max(1, math.ceil((voxels / budget) ** (1 / 3)))
    while math.prod(math.ceil(n / factor) for n in shape) > budget:
        factor += 1
    return factor


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor^3 blocks (edge blocks padded by repeating the border); a single slice keeps depth 1."""
    if factor == 1:
        return np.asarray(data, dtype=np.float32)
    f = [factor if n > 1 else 1 for n in data.shape]
    pad = [(0, (-n) % k) for n, k in zip(data.shape, f, strict=True)]
    out = np.asarray(data, dtype=np.float32)
    if any(after for _, after in pad):
        out = np.pad(out, pad, mode="edge")
    for axis, k in enumerate(f):  # strided sums, one axis at a time: a fraction of a 6-axis mean's cost
        if k > 1:
            picks = [out[(slice(None),) * axis + (slice(start, None, k),)] for start in range(k)]
            out = np.add.reduce(picks, dtype=np.float32) if k > 2 else picks[0] + picks[1]
    return out * np.float32(1.0 / math.prod(f))


def block_affine(affine: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """The affine of the block grid: each new voxel sits at the centre of the block it averages."""
    f = np.array([factor if n > 1 else 1 for n in shape], dtype=np.float64)
    scale = np.diag([*f, 1.0])
    scale[:3, 3] = (f - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ scale


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, slope: float = 1.0) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    if slope != 1.0:
        img.header.set_slope_inter(slope, 0.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    buf = io.BytesIO()
    holder = nib.FileHolder(fileobj=buf)
    img.to_file_map({"image": holder, "header": holder})
    from isal import igzip  # standard gzip, ~10x faster than zlib at the same size on these bytes

    return igzip.compress(buf.getvalue(), compresslevel=3, mtime=0)


def preview_volumes(scan: np.ndarray, relevance: np.ndarray, affine: np.ndarray,
                    world: bool = True) -> dict[str, object]:
    """The preview's content: both volumes as base64 gzipped NIfTI, the relevance's display range; ``world``
    false for an image file, whose stand-in affine names no anatomical sides."""
    factor = block_factor(scan.shape)
    small_affine = block_affine(affine, factor, scan.shape)
    anat = block_mean(scan, factor)
    finite = anat[np.isfinite(anat)]
    lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    anat8 = np.clip(np.nan_to_num((anat - lo) * scale), 0, 255).round().astype(np.uint8)
    rel = np.nan_to_num(block_mean(relevance, factor))
    peak = float(np.abs(rel).max()) if rel.size else 0.0
    slope = peak / 127.0 if peak > 0 else 1.0
    rel8 = np.clip(np.round(rel / slope), -127, 127).astype(np.int8)
    magnitude = np.abs(rel[rel != 0])
    # Colours saturate at the 99.5th percentile of |R|, as on the overlay: one hot voxel must not wash out the rest.
    display = float(np.percentile(magnitude, 99.5)) if magnitude.size else peak
    hottest = np.unravel_index(int(np.argmax(rel if (rel > 0).any() else np.abs(rel))), rel.shape)
    focus = small_affine @ np.array([*hottest, 1.0])
    return {
        "scan": base64.b64encode(_nifti_bytes(anat8, small_affine)).decode("ascii"),
        "relevance": base64.b64encode(_nifti_bytes(rel8, small_affine, slope)).decode("ascii"),
        "peak": peak,
        "display": display or peak,
        "focus_mm": [round(float(v), 2) for v in focus[:3]],
        "block": factor,
        "shape": list(anat8.shape),
        "world": world,
    }


def write_preview(path: Path, scan: np.ndarray, relevance: np.ndarray, affine: np.ndarray,
                  world: bool = True) -> None:
    """Write the preview script for one scan (atomically, like every output)."""
    body = json.dumps(preview_volumes(scan, relevance, affine, world), separators=(",", ":"))
    atomic_write_text(path, f"window.{PREVIEW_GLOBAL} = {body};\n")


def read_preview(path: Path) -> dict[str, object]:
    """The preview's content back from its script (for tests and tools)."""
    text = path.read_text(encoding="ascii")
    start = text.index("=") + 1
    return json.loads(text[start:].strip().rstrip(";"))
