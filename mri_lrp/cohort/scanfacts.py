"""What explain leaves behind for the cohort analysis: each scan's relevance on the model grid and its
acquisition metadata, both in the scan's bookkeeping folder (``OUT/scans/<scan_id>/``) so that resume and
merge carry them like every other per-scan file.

``model_relevance.nii.gz``: the explained map (the predicted class's with ``--target all``) on the model's
input grid, channels summed, with the model grid's affine. It is stored as int16 with a NIfTI scale factor
(``scl_slope`` = max |R| / 32767, no intercept, so zero stays exactly zero): half the bytes of float32, opens
in any viewer over ``model_input.nii.gz``, and values below max |R| / 65534 read back as zero. A 2D model's
slices are stacked on the third axis. Every scan of a run shares this grid's voxel layout, so the maps of a
whole cohort compare voxel by voxel without registration.

``metadata.json``: non-identifying facts to group scans by: the DICOM header's Manufacturer,
ManufacturerModelName, MagneticFieldStrength and SeriesDescription; the same keys from a BIDS JSON sidecar;
the subject's row of the BIDS dataset's ``participants.tsv``; and the keys a user table can join on.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mri_lrp.cohort.probes import shortcut_probes
from mri_lrp.model.transform import ModelSpace
from mri_lrp.outputs import atomic_write_bytes, atomic_write_json
from mri_lrp.pipeline.layout import parse_bids_name
from mri_lrp.scans.ids import strip_nifti_suffix
from mri_lrp.scans.scan import Scan

MODEL_GRID_NAME = "model_relevance.nii.gz"
METADATA_NAME = "metadata.json"
#: Header keys kept from DICOM (Scan.metadata's names) and BIDS sidecars, under one column name each.
ACQUISITION_KEYS = {
    "manufacturer": ("manufacturer", "Manufacturer"),
    "manufacturer_model": ("manufacturer_model", "ManufacturerModelName"),
    "magnetic_field_strength": ("magnetic_field_strength", "MagneticFieldStrength"),
    "series_description": ("series_description", "SeriesDescription"),
}
#: How far up from a BIDS file participants.tsv is looked for (sub-*/ses-*/anat/file: three folders).
_BIDS_LEVELS = 4


def model_grid_map(relevance: np.ndarray, space: ModelSpace) -> np.ndarray:
    """One target's model-space relevance ((C, X, Y, Z), or (S, C, a, b) for slices) as float32 (X, Y, Z),
    channels summed; a 2D model's slices on the last axis, as ``space.affine`` indexes them."""
    summed = np.asarray(relevance, dtype=np.float64).sum(axis=0 if space.slice_axis is None else 1)
    if space.slice_axis is not None:
        summed = np.moveaxis(summed, 0, -1)
    return summed.astype(np.float32)


def padding_positive(grid_map: np.ndarray, space: ModelSpace) -> float:
    """Positive relevance on model voxels that read no scan voxel (zero padding past the scan's edge)."""
    reads = [np.abs(m.matrix()).sum(axis=1) > 0 if not m.is_identity else np.ones(m.n_in, dtype=bool)
             for m in space.maps]
    inside = reads[0][:, None, None] & reads[1][None, :, None] & reads[2][None, None, :]
    if space.slice_axis is not None:
        inside = np.moveaxis(inside, space.slice_axis, -1)
    if inside.all():
        return 0.0
    return float(np.clip(grid_map[~inside], 0.0, None).sum(dtype=np.float64))


def save_model_grid(path: str | Path, grid_map: np.ndarray, affine: np.ndarray, class_name: str) -> None:
    """Write the model-grid map as scaled int16 NIfTI (see the module docstring), atomically."""
    import nibabel as nib
    from isal import igzip

    peak = float(np.abs(grid_map).max()) if grid_map.size else 0.0
    slope = peak / 32767.0 if peak > 0 else 1.0
    quantised = np.rint(np.asarray(grid_map, dtype=np.float64) / slope).astype(np.int16)
    img = nib.Nifti1Image(quantised, np.asarray(affine, dtype=np.float64))
    img.header.set_slope_inter(slope, 0.0)
    img.header.set_xyzt_units("mm")
    img.header.set_intent("estimate", name="LRP relevance")
    img.header["descrip"] = f"LRP relevance, model grid, {class_name}".encode("ascii", "replace")[:80]
    atomic_write_bytes(path, igzip.compress(img.to_bytes(), compresslevel=1))


def load_model_grid(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A model-grid map and its affine, as float32 (X, Y, Z) and (4, 4)."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)


def scan_metadata(scan_id: str, source: str, paths: tuple[str, ...], facts: dict[str, str],
                  channels: tuple[str, ...] = ()) -> dict[str, str]:
    """The scan's join keys and acquisition metadata (never a patient name, ID or date).

    ``facts`` is the reader's non-identifying header data (``Scan.metadata``). Keys: ``scan_id``, ``source``,
    ``case_id`` (the file name without its extension, a DICOM series' folder name, or a multi-channel case's
    own id) and, for BIDS-named inputs, ``participant_id`` (``sub-<label>``) and ``session``.
    """
    posix = PurePosixPath(source.replace(os.sep, "/"))
    case = scan_id.rsplit("__", 1)[-1] if channels else strip_nifti_suffix(posix.name or scan_id)
    out: dict[str, str] = {"scan_id": scan_id, "source": source, "case_id": case}
    bids = parse_bids_name(source)
    if bids is not None:
        out["participant_id"] = f"sub-{bids.subject}"
        if bids.session:
            out["session"] = f"ses-{bids.session}"
    sidecar = _bids_sidecar(paths[0]) if paths else {}
    for column, (dicom_key, bids_key) in ACQUISITION_KEYS.items():
        value = facts.get(dicom_key) or sidecar.get(bids_key)
        if value not in (None, ""):
            out[column] = _text(value)
    if bids is not None and paths:
        out.update(_participant_row(Path(paths[0]), out["participant_id"]))
    return out


def write_cohort_files(folder: Path, scan: Scan, relevance: np.ndarray, space: ModelSpace, scan_map: np.ndarray,
                       class_name: str) -> tuple[list[str], dict[str, float | str]]:
    """Write a scan's model-grid map and metadata into its folder; return the file names (for the done
    marker) and the summary's shortcut probes. ``relevance`` is one target's model-space map (taken from
    ``Explained.relevance``, a fold ensemble's mean), ``scan_map`` the same map on the scan's grid."""
    grid = model_grid_map(relevance, space)
    save_model_grid(folder / MODEL_GRID_NAME, grid, space.affine, class_name)
    atomic_write_json(folder / METADATA_NAME,
                      scan_metadata(scan.scan_id, scan.source, scan.paths, scan.metadata, scan.channels))
    probes = shortcut_probes(scan.volume, scan_map, scan.spacing, padding_positive(grid, space))
    return [MODEL_GRID_NAME, METADATA_NAME], probes


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "\\".join(_text(v) for v in value)
    return str(value)


def _bids_sidecar(path: str) -> dict[str, Any]:
    """The JSON sidecar beside a NIfTI file (same name, .json), or {} when there is none or it is unreadable."""
    file = Path(path)
    if not file.name.lower().endswith((".nii", ".nii.gz")):
        return {}
    sidecar = file.with_name(strip_nifti_suffix(file.name) + ".json")
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _participant_row(file: Path, participant: str) -> dict[str, str]:
    """The subject's row of the nearest participants.tsv above the file, without its participant_id."""
    folder = file.parent
    for _ in range(_BIDS_LEVELS):
        table = folder / "participants.tsv"
        if table.is_file():
            try:
                with table.open(newline="", encoding="utf-8") as handle:
                    for row in csv.DictReader(handle, delimiter="\t"):
                        if (row.get("participant_id") or "").strip() == participant:
                            return {k.strip(): (v or "").strip() for k, v in row.items()
                                    if k and k.strip() != "participant_id"}
            except (OSError, UnicodeDecodeError, csv.Error):
                return {}
            return {}
        if folder.parent == folder:
            break
        folder = folder.parent
    return {}
