"""One DICOM stack read into a Scan: pixels decoded, slices sorted on the normal, spacing checked, the RAS affine."""

from __future__ import annotations

import math
import operator
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mri_lrp.errors import ScanError
from mri_lrp.scans.dicom.headers import SliceInfo, as_float, as_text, dataset_slices
from mri_lrp.scans.dicom.series import same_orientation
from mri_lrp.scans.refs import MAX_VOXELS, ScanRef
from mri_lrp.scans.scan import Scan

DUPLICATE_TOL_MM = 0.01           # two slices closer than this along the normal are at the same position
SPACING_RTOL, SPACING_ATOL = 0.05, 0.1   # slice increment tolerance (as dicom2nifti)
TILT_TOL_DEG = 0.05               # slice steps further than this from the normal: gantry tilt
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
JPEG_EXTRA_HINT = "pip install 'mri-lrp[jpeg]'"


# Non-identifying header fields copied into Scan.metadata (never names, IDs, dates or institutions).
_METADATA_TAGS = {
    "SeriesDescription": "series_description",
    "Modality": "modality",
    "MagneticFieldStrength": "magnetic_field_strength",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model",
    "SeriesNumber": "series_number",
    "ProtocolName": "protocol_name",
    "ScanningSequence": "scanning_sequence",
    "SequenceVariant": "sequence_variant",
    "MRAcquisitionType": "mr_acquisition_type",
    "RepetitionTime": "repetition_time",
    "InversionTime": "inversion_time",
    "FlipAngle": "flip_angle",
    "SliceThickness": "slice_thickness",
    "ImageType": "image_type",
}


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_decodable(ds: Dataset, name: str, location: str) -> None:
    """Fail early, with the fix, when the transfer syntax needs a decoder that is not installed."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not UID(syntax).is_compressed:
        return
    uid = UID(syntax)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ScanError(location, f"{name}: transfer syntax {uid.name} is not supported") from None
    if not decoder.is_available:
        raise ScanError(location, f"{name}: {uid.name} pixel data needs an optional decoder: {JPEG_EXTRA_HINT}")


def _decode(ds: Dataset, name: str, location: str) -> np.ndarray:
    """All frames of a dataset as (frames, rows, cols), stored values (no rescale yet)."""
    frames = int(as_float(ds.get("NumberOfFrames")) or 1)
    if int(ds.Rows) * int(ds.Columns) * frames > MAX_VOXELS:
        raise ScanError(location, f"{name}: {ds.Rows}x{ds.Columns}x{frames} voxels is beyond the {MAX_VOXELS} "
                                  "voxel limit; refusing a header that claims this much")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt or truncated pixel data
        raise ScanError(location, f"{name}: pixel data cannot be decoded: {_one_line(e)}") from None
    samples = int(as_float(ds.get("SamplesPerPixel")) or 1)
    if samples != 1:
        raise ScanError(location, f"{name}: colour images ({samples} samples per pixel) are not supported")
    return arr[None] if arr.ndim == 2 else arr


def _odd_one_out(slices: list[SliceInfo], ref: ScanRef, what: str, key: Callable[[SliceInfo], Any],
                 same: Callable[[Any, Any], bool], show: Callable[[Any], str]) -> None:
    """Refuse a stack whose slices disagree on ``key``, naming the files that differ from the majority."""
    groups: list[list[SliceInfo]] = []
    for s in slices:
        group = next((g for g in groups if same(key(g[0]), key(s))), None)
        if group is None:
            groups.append([s])
        else:
            group.append(s)
    if len(groups) < 2:
        return
    usual = max(groups, key=len)
    odd = [s for g in groups if g is not usual for s in g]
    names = sorted({os.path.basename(ref.paths[s.path_index]) for s in odd})
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    values = ", ".join(dict.fromkeys(show(key(s)) for s in odd))
    raise ScanError(ref.location, f"{listed}: {what} {values} differs from the other {len(usual)} image(s) of "
                                  f"the stack ({show(key(usual[0]))})")


def _slice_normal(orientation: tuple[float, ...], location: str) -> np.ndarray:
    """Unit normal of the slices (row direction × column direction); refuses a malformed orientation."""
    orient = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = orient[:3], orient[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-2 or abs(np.linalg.norm(col_dir) - 1) > 1e-2 \
            or abs(row_dir @ col_dir) > 1e-2:
        raise ScanError(location, f"ImageOrientationPatient {orient.round(4).tolist()} is not two unit, "
                                  "orthogonal directions")
    return np.cross(row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir))


def _stray_slices(steps: np.ndarray, base: float) -> list[int]:
    """Slices that split one regular step (or a run of them) in two: an image of another acquisition that
    landed between the slices of this one, not a gap."""
    def tol(x: float) -> float:
        return SPACING_ATOL + SPACING_RTOL * x

    stray = []
    for n in range(1, len(steps)):
        a, b = float(steps[n - 1]), float(steps[n])
        m = round((a + b) / base)
        if a < base - tol(base) and b < base - tol(base) and m >= 1 and abs(a + b - m * base) <= tol(base * m):
            stray.append(n)
    return stray


def _slice_step(positions: np.ndarray, normal: np.ndarray, thickness: float | None,
                location: str, names: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """The voxel step along k, after checking spacing, stray and missing slices, and gantry tilt.

    The regular spacing is the median step, so one stray slice half-way between 3 mm slices is named as that
    one file, not read as a 1.5 mm grid with every other slice missing.
    """
    k = len(positions)
    if k == 1:
        if thickness is None or thickness <= 0:
            return normal * 1.0, ["single slice without SliceThickness: 1 mm assumed along the normal"]
        return normal * thickness, []
    d = positions @ normal
    steps = np.diff(d)
    base = float(np.median(steps))
    stray = _stray_slices(steps, base)
    if stray:
        where = [f"{names[n] if names else f'slice {n + 1}'} at {d[n] - d[0]:.2f} mm" for n in stray[:3]]
        raise ScanError(location, f"{len(stray)} slice(s) off the regular {base:.2f} mm spacing: "
                                  f"{', '.join(where)}{' ...' if len(stray) > 3 else ''} (from the first slice) "
                                  "lie between the others (a file of another acquisition?)")
    missing, irregular, first_gap = 0, [], None
    for n, s in enumerate(steps):
        if abs(s - base) <= SPACING_ATOL + SPACING_RTOL * base:
            continue
        m = round(s / base)
        if m >= 2 and abs(s - m * base) <= SPACING_ATOL + SPACING_RTOL * base * m:
            missing += m - 1
            first_gap = first_gap or (n, float(s))
        else:
            irregular.append(float(s))
    if missing:
        n, s = first_gap  # type: ignore[misc]
        raise ScanError(location, f"{missing} missing slice(s): a {s:.2f} mm gap after slice {n + 1} of {k} where "
                                  f"slices are {base:.2f} mm apart; the volume's geometry would be wrong")
    if irregular:
        counts = Counter(f"{v:.2f}" for v in steps)
        listed = ", ".join(f"{n} of {v} mm" for v, n in counts.most_common(4))
        raise ScanError(location, f"irregular slice spacing: steps of {min(steps):.3f} to {max(steps):.3f} mm "
                                  f"({listed}{', ...' if len(counts) > 4 else ''})")
    step = (positions[-1] - positions[0]) / (k - 1)
    offsets = positions - (positions[0] + np.arange(k)[:, None] * step)
    worst = float(np.linalg.norm(offsets, axis=1).max())
    if worst > SPACING_ATOL + SPACING_RTOL * float(np.linalg.norm(step)):
        raise ScanError(location, f"slice positions do not lie on one line (up to {worst:.2f} mm off)")
    cos_tilt = min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step)))
    tilt = math.degrees(math.acos(cos_tilt))
    if tilt > TILT_TOL_DEG:
        return step, [f"gantry tilt of {tilt:.2f} degrees: the voxel grid is sheared and the affine keeps the "
                      "shear (tools that assume orthogonal axes may misplace it)"]
    return normal * float(step @ normal), []


def dicom_affine(row_dir: np.ndarray, col_dir: np.ndarray, pixel_spacing: Sequence[float],
                 first_position: np.ndarray, slice_step: np.ndarray) -> np.ndarray:
    """Voxel (i = column, j = row, k = slice) → world RAS mm, from DICOM LPS geometry."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_dir, dtype=np.float64) * float(pixel_spacing[1])
    lps[:3, 1] = np.asarray(col_dir, dtype=np.float64) * float(pixel_spacing[0])
    lps[:3, 2] = slice_step
    lps[:3, 3] = first_position
    return LPS_TO_RAS @ lps


def _metadata(ds: Dataset, first: SliceInfo) -> dict[str, str]:
    out = {}
    for tag, key in _METADATA_TAGS.items():
        value = as_text(ds.get(tag))
        if value:
            out[key] = value
    if first.echo[1]:
        out["echo_time"] = first.echo[1]
    if first.echo[0]:
        out["echo_number"] = first.echo[0]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        out["transfer_syntax"] = UID(meta.TransferSyntaxUID).name
    return out


def read_dicom(ref: ScanRef) -> Scan:
    """Read one DICOM stack (the files, or frames, of ``ref``) into a Scan; ScanError for anything wrong."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scan_parts = _read_stack(ref)
    data, affine, metadata, notes = scan_parts
    notes += [_one_line(w.message) for w in caught if _one_line(w.message) not in notes]
    return Scan(scan_id=ref.scan_id, source=ref.source, kind="dicom", data=data, affine=affine,
                paths=ref.paths, metadata=metadata, warnings=tuple(notes))


def _read_stack(ref: ScanRef) -> tuple[np.ndarray, np.ndarray, dict[str, str], list[str]]:
    loc = ref.location
    datasets: list[Dataset] = []
    for path in ref.paths:
        name = os.path.basename(path)
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as e:  # pydicom and the OS raise many types for unreadable files
            raise ScanError(loc, f"{name}: not a readable DICOM file: {_one_line(e)}") from None
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # no file meta: use the parsed encoding
            implicit, little = ds.original_encoding
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        _check_decodable(ds, name, loc)
        datasets.append(ds)

    per_file: dict[int, list[SliceInfo]] = {}

    def slices_of(i: int) -> list[SliceInfo]:
        if i not in per_file:
            try:
                per_file[i] = dataset_slices(datasets[i], i)
            except ValueError as e:
                raise ScanError(loc, f"{os.path.basename(ref.paths[i])}: {e}") from None
        return per_file[i]

    if ref.frames:
        try:
            slices = [slices_of(i)[f] for i, f in ref.frames]
        except IndexError:
            raise ScanError(loc, "the file has fewer frames than discovery saw (changed on disk?)") from None
    else:
        slices = [s for i in range(len(datasets)) for s in slices_of(i)]

    if slices[0].mosaic:
        raise ScanError(loc, f"Siemens MOSAIC images ({slices[0].mosaic}: many slices tiled in one image) are "
                             "not supported: convert the series to NIfTI first (e.g. with dcm2niix)")
    for s in slices:
        name = os.path.basename(ref.paths[s.path_index])
        if s.orientation is None or s.position is None:
            raise ScanError(loc, f"{name}: no ImageOrientationPatient/ImagePositionPatient, so the image "
                                 "cannot be placed in space")
        if s.pixel_spacing is None:
            raise ScanError(loc, f"{name}: no PixelSpacing")
        if not all(math.isfinite(v) and v > 0 for v in s.pixel_spacing):
            raise ScanError(loc, f"{name}: PixelSpacing {list(s.pixel_spacing)} is not two positive sizes")
    # The odd one out is named against what most files agree on, never against the first file by name.
    _odd_one_out(slices, ref, "image size", lambda s: (s.rows, s.cols), operator.eq, lambda v: f"{v[0]}x{v[1]}")
    _odd_one_out(slices, ref, "slice orientation", lambda s: s.orientation, same_orientation,
                 lambda v: str([round(c, 4) for c in v]))
    _odd_one_out(slices, ref, "pixel spacing", lambda s: s.pixel_spacing,
                 lambda a, b: bool(np.allclose(a, b, rtol=1e-3)), lambda v: f"{v[0]:g}x{v[1]:g} mm")
    first = slices[0]
    if first.rows * first.cols * len(slices) > MAX_VOXELS:
        raise ScanError(loc, f"{first.rows}x{first.cols}x{len(slices)} voxels is beyond the {MAX_VOXELS} "
                             "voxel limit; refusing a header that claims this much")

    normal = _slice_normal(first.orientation, loc)  # type: ignore[arg-type]
    notes: list[str] = []

    def along_normal(s: SliceInfo) -> tuple[float, int, int, int]:
        return float(np.dot(s.position, normal)), s.instance, s.path_index, s.frame or 0  # type: ignore[arg-type]

    slices.sort(key=along_normal)

    decoded: dict[int, np.ndarray] = {}

    def pixels(s: SliceInfo) -> np.ndarray:
        ds = datasets[s.path_index]
        if s.path_index not in decoded:
            decoded[s.path_index] = _decode(ds, os.path.basename(ref.paths[s.path_index]), loc)
        frames = decoded[s.path_index]
        if s.frame is None:
            return np.asarray(apply_modality_lut(frames[0], ds), dtype=np.float32)
        return (frames[s.frame].astype(np.float32) * np.float32(s.slope)) + np.float32(s.intercept)

    kept: list[SliceInfo] = []
    dropped = 0
    for s in slices:
        if kept and abs(float(np.dot(np.subtract(s.position, kept[-1].position), normal))) < DUPLICATE_TOL_MM:
            prev = kept[-1]
            names = f"{os.path.basename(ref.paths[prev.path_index])}, {os.path.basename(ref.paths[s.path_index])}"
            if not np.allclose(prev.position, s.position, atol=DUPLICATE_TOL_MM) \
                    or not np.array_equal(pixels(prev), pixels(s)):
                raise ScanError(loc, f"two different images at the same slice position ({names}); the stack "
                                     "mixes acquisitions")
            dropped += 1
            continue
        kept.append(s)
    if dropped:
        notes.append(f"{dropped} duplicate slice(s) with identical pixels ignored")

    positions = np.asarray([s.position for s in kept], dtype=np.float64)
    step, step_notes = _slice_step(positions, normal, first.thickness, loc,
                                   [os.path.basename(ref.paths[s.path_index]) for s in kept])
    notes += step_notes
    orient = np.asarray(first.orientation, dtype=np.float64)
    row_dir = orient[:3] / np.linalg.norm(orient[:3])
    col_dir = orient[3:] / np.linalg.norm(orient[3:])
    affine = dicom_affine(row_dir, col_dir, first.pixel_spacing, positions[0], step)  # type: ignore[arg-type]

    stacked = np.empty((len(kept), first.rows, first.cols), dtype=np.float32)
    for n, s in enumerate(kept):
        stacked[n] = pixels(s)
    # (slice, row, column) -> (i = column, j = row, k): a Fortran-ordered view, as nibabel returns NIfTI data;
    # forcing C order here would cost a full strided copy (a fifth of the read time of a 200-slice series).
    data = stacked.transpose(2, 1, 0)

    metadata = _metadata(datasets[kept[0].path_index], kept[0])
    modality = metadata.get("modality", "")
    if modality and modality != "MR":
        notes.append(f"modality is {modality}, not MR")
    return data, affine, metadata, notes
