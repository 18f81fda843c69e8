"""DICOM: file headers → series split into stackable volumes, and one stack → a Scan with its RAS affine.

pydicom parses and decodes; the geometry (sorting on the slice normal, spacing checks, the LPS→RAS affine) is
a few small numpy functions here, because no installed library both splits mixed series the way scanners
export them and reports *why* a stack cannot be a volume. nibabel's `nicom` wrappers compute the same affine
(the tests use them as an independent check) but leave grouping, checks and enhanced-frame selection to us.
"""

from __future__ import annotations

import math
import operator
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mri_lrp.errors import ScanError
from mri_lrp.scans.refs import MAX_VOXELS, ScanRef
from mri_lrp.scans.scan import Scan

ORIENTATION_TOL = 1e-3            # largest difference between direction cosines within one stack
DUPLICATE_TOL_MM = 0.01           # two slices closer than this along the normal are at the same position
SPACING_RTOL, SPACING_ATOL = 0.05, 0.1   # slice increment tolerance (as dicom2nifti)
TILT_TOL_DEG = 0.05               # slice steps further than this from the normal: gantry tilt
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
_LOCALIZER_TEXT = re.compile(r"locali[sz]er|scout|survey|3[- _]?plane[ _]?loc", re.IGNORECASE)
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


@dataclass(frozen=True)
class SliceInfo:
    """One 2D image of a stack: a classic single-frame file, or one frame of an enhanced multi-frame file."""

    path_index: int
    frame: int | None                          # None: classic file; else 0-based frame number
    rows: int
    cols: int
    orientation: tuple[float, ...] | None      # ImageOrientationPatient: row direction, then column direction
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # PixelSpacing: (between rows, between columns)
    thickness: float | None
    echo: tuple[str, str]                      # (echo number, echo time) as written
    repeat: str                                # acquisition number / temporal position
    image_type: tuple[str, ...]
    instance: int
    slope: float = 1.0                         # enhanced frames only (classic files use the modality LUT)
    intercept: float = 0.0
    mosaic: str = ""                           # a Siemens MOSAIC (slices tiled in one image): what says so


@dataclass(frozen=True)
class DicomHeader:
    """What discovery keeps of one DICOM image file."""

    series_uid: str
    series_number: int | None
    description: str
    slices: tuple[SliceInfo, ...]
    modality: str = ""
    protocol: str = ""
    study_uid: str = ""


@dataclass(frozen=True)
class Stack:
    """Part of one series that can become one volume: its members are (file key, frame or None)."""

    label: str                                 # '' for an unsplit series, else e.g. 'e2' or 'p1'
    members: tuple[tuple[int, int | None], ...]
    localizer: bool


# --- small helpers -------------------------------------------------------------------------------------------

def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        items = list(value)  # type: ignore[call-overload]
    except TypeError:
        return None
    if len(items) != n:
        return None
    out = tuple(_float(v) for v in items)
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _first_item(sources: Sequence[Dataset | None], sequence: str) -> Dataset | None:
    """First item of a functional-group sequence, looked up per frame first, then in the shared groups."""
    for item in sources:
        if item is not None and sequence in item and len(item[sequence].value) > 0:
            return item[sequence].value[0]
    return None


def _is_localizer(image_type: tuple[str, ...], description: str) -> bool:
    return any("LOCALIZER" in t.upper() for t in image_type) or bool(_LOCALIZER_TEXT.search(description))


# --- headers -------------------------------------------------------------------------------------------------

def dataset_slices(ds: Dataset, path_index: int) -> list[SliceInfo]:
    """The 2D images one DICOM dataset holds, with the geometry each needs; raises ValueError if unusable."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("no Rows/Columns: the header holds no image or is cut short (truncated file?)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise ValueError(f"image size {rows}x{cols} is empty")
    image_type = tuple(str(t) for t in (ds.get("ImageType") or ()))
    instance = int(_float(ds.get("InstanceNumber")) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = int(_float(ds.get("NumberOfFrames")) or 1)
    if not per_frame:
        if n_frames > 1:
            raise ValueError(f"multi-frame image ({n_frames} frames) without per-frame geometry")
        return [SliceInfo(
            path_index=path_index, frame=None, rows=rows, cols=cols,
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            thickness=_float(ds.get("SpacingBetweenSlices")) or _float(ds.get("SliceThickness")),
            echo=(_text(ds.get("EchoNumbers")), _text(ds.get("EchoTime"))),
            repeat=f"{_text(ds.get('AcquisitionNumber'))}/{_text(ds.get('TemporalPositionIdentifier'))}",
            image_type=image_type, instance=instance, mosaic=mosaic_evidence(ds, image_type))]
    if len(per_frame) != n_frames:
        raise ValueError(f"NumberOfFrames is {n_frames} but there are {len(per_frame)} per-frame groups")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    out = []
    for f, item in enumerate(per_frame):
        sources = (item, shared)
        orient = _first_item(sources, "PlaneOrientationSequence")
        pos = _first_item(sources, "PlanePositionSequence")
        measures = _first_item(sources, "PixelMeasuresSequence")
        echo = _first_item(sources, "MREchoSequence")
        frame_type = _first_item(sources, "MRImageFrameTypeSequence")
        content = _first_item(sources, "FrameContentSequence")
        scaling = _first_item(sources, "PixelValueTransformationSequence")
        out.append(SliceInfo(
            path_index=path_index, frame=f, rows=rows, cols=cols,
            orientation=_floats(orient.get("ImageOrientationPatient"), 6) if orient else None,
            position=_floats(pos.get("ImagePositionPatient"), 3) if pos else None,  # type: ignore[arg-type]
            pixel_spacing=_floats(measures.get("PixelSpacing"), 2) if measures else None,  # type: ignore[arg-type]
            thickness=(_float(measures.get("SpacingBetweenSlices")) or _float(measures.get("SliceThickness"))
                       if measures else None),
            echo=("", _text(echo.get("EffectiveEchoTime")) if echo else ""),
            repeat=(f"{_text(content.get('TemporalPositionIndex'))}/{_text(content.get('StackID'))}"
                    if content else ""),
            image_type=tuple(str(t) for t in (frame_type.get("FrameType") or ())) if frame_type else image_type,
            instance=f,
            slope=(_float(scaling.get("RescaleSlope")) or 1.0) if scaling else 1.0,
            intercept=(_float(scaling.get("RescaleIntercept")) or 0.0) if scaling else 0.0))
    return out


def mosaic_evidence(ds: Dataset, image_type: tuple[str, ...]) -> str:
    """What marks a file as a Siemens MOSAIC (many slices tiled in one image), or "" for an ordinary image.

    ImageType says MOSAIC on most; anonymisers and conversions that rewrite ImageType keep Siemens' private
    NumberOfImagesInMosaic, in the MR header (0019,100A) or in the CSA image header (0029,1010).
    """
    if any("MOSAIC" in t.upper() for t in image_type):
        return "ImageType MOSAIC"
    try:
        value = ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0A].value
        count = int.from_bytes(value[:2], "little") if isinstance(value, bytes) else int(value)
    except (KeyError, TypeError, ValueError):
        count = 0
    if count > 1:
        return f"(0019,100A) NumberOfImagesInMosaic {count}"
    if not any(tag.group == 0x0029 for tag in ds.keys()):  # no Siemens CSA headers at all
        return ""
    with warnings.catch_warnings():  # nibabel.nicom warns on import that its DICOM readers are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader
    try:
        csa = csareader.get_csa_header(ds, "image")
        count = int(csareader.get_n_mosaic(csa) or 0) if csareader.is_mosaic(csa) else 0
    except Exception:  # noqa: BLE001 - a damaged or foreign private header says nothing either way
        count = 0
    return f"CSA header NumberOfImagesInMosaic {count}" if count > 1 else ""


def read_header(path: str, force: bool) -> DicomHeader | str:
    """Parse a file's header (no pixels). Returns the header, or a reason to skip a non-image object.

    Raises for a file that cannot be parsed at all.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
    if not sop_class and "SeriesInstanceUID" not in ds:
        raise ValueError("no DICOM header found (no SOP class or series UID)")
    if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return "DICOMDIR index file (the images it lists are read directly)"
    modality = _text(ds.get("Modality")).upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"DICOM {modality} object, not an image"
    if "Rows" not in ds:
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        if "Image Storage" in name:
            raise ValueError(f"{name} header ends before the image attributes (truncated file?)")
        return f"DICOM file without an image ({name})"
    series_number = _float(ds.get("SeriesNumber"))
    # Without a series UID (stripped by some anonymisers), files of one folder, study and series number and
    # description are taken as one series; splitting then separates stacks that do not belong together.
    fallback = ":".join(["no-series-uid", os.path.dirname(os.path.abspath(path)),
                         str(ds.get("StudyInstanceUID", "")), str(series_number), _text(ds.get("SeriesDescription"))])
    return DicomHeader(
        series_uid=str(ds.get("SeriesInstanceUID") or fallback),
        series_number=int(series_number) if series_number is not None else None,
        description=_text(ds.get("SeriesDescription")),
        slices=tuple(dataset_slices(ds, 0)),
        modality=modality, protocol=_text(ds.get("ProtocolName")), study_uid=str(ds.get("StudyInstanceUID") or ""))


# --- splitting one series into stacks ------------------------------------------------------------------------

def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= ORIENTATION_TOL


def _extent(orientation: tuple[float, ...] | None, members: list[tuple[int, SliceInfo]]) -> tuple[float, float]:
    """Range of the slice positions along the slice normal (empty when positions are unknown)."""
    if orientation is None or any(s.position is None for _, s in members):
        return (math.inf, -math.inf)
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    d = [float(np.asarray(s.position) @ normal) for _, s in members]
    return (min(d), max(d))


def _typical_step(orientation: tuple[float, ...] | None, members: list[tuple[int, SliceInfo]]) -> float:
    """Median distance between neighbouring slices along the normal (0 for fewer than two, or no positions)."""
    if len(members) < 2 or orientation is None or any(s.position is None for _, s in members):
        return 0.0
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    d = np.sort([float(np.asarray(s.position) @ normal) for _, s in members])
    return float(np.median(np.diff(d)))


def _rejoin_odd_sizes(groups: list) -> list:
    """Put back together stacks that differ only in image size and lie among each other's slices.

    Such a stack is one volume with a wrong file in it, not two scans: split, it would become a one-slice
    "scan" explained as 2D and a volume with a gap. Joined, reading it names the odd file.
    A file just past either end of the other stack, within one and a half of its slice steps, is such a
    wrong file too (the first or last file of the volume).
    """
    out: list = []
    for exact, orient, members in groups:
        lo, hi = _extent(orient, members)
        for g_exact, g_orient, g_members in out:
            g_lo, g_hi = _extent(g_orient, g_members)
            reach = 1.5 * max(_typical_step(orient, members), _typical_step(g_orient, g_members)) + 1e-3
            if (g_exact[2:] == exact[2:] and _same_orientation(g_orient, orient)
                    and max(lo, g_lo) <= min(hi, g_hi) + reach):
                g_members.extend(members)
                break
        else:
            out.append((exact, orient, members))
    return out


def split_series(headers: Sequence[tuple[int, DicomHeader]]) -> list[Stack]:
    """Split one series wherever a single stack would mix orientation, size, image type, echo or repeats.

    ``headers`` pairs a caller's file key with the file's header. Repeated acquisitions (AcquisitionNumber,
    temporal position) split the stack only when they revisit the same positions, because some scanners
    number every slice of one volume as its own acquisition.
    """
    groups: list[tuple[tuple, tuple[float, ...] | None, list[tuple[int, SliceInfo]]]] = []
    for key, header in headers:
        for s in header.slices:
            exact = (s.rows, s.cols, s.image_type, s.echo)
            for g_exact, g_orient, members in groups:
                if g_exact == exact and _same_orientation(g_orient, s.orientation):
                    members.append((key, s))
                    break
            else:
                groups.append((exact, s.orientation, [(key, s)]))
    groups = _rejoin_odd_sizes(groups)

    parts: list[tuple[tuple, tuple[float, ...] | None, str, list[tuple[int, SliceInfo]]]] = []
    for exact, orient, members in groups:
        repeats = sorted({s.repeat for _, s in members})
        positions = {tuple(round(v, 2) for v in s.position) for _, s in members if s.position is not None}
        sizes = [sum(1 for _, s in members if s.repeat == r) for r in repeats]
        if len(repeats) > 1 and len(positions) < len(members) and min(sizes) > 1:
            for r in repeats:
                parts.append((exact, orient, r, [m for m in members if m[1].repeat == r]))
        else:
            parts.append((exact, orient, "", members))
    parts.sort(key=lambda p: (p[0][3], p[2], str(p[1]), p[0][0], p[0][1], p[0][2]))

    description = headers[0][1].description if headers else ""
    echo_varies = len({p[0][3] for p in parts}) > 1
    repeat_varies = len({p[2] for p in parts}) > 1
    other_varies = len({(p[0][:3], str(p[1])) for p in parts}) > 1
    labels = []
    for n, (exact, _orient, repeat, _members) in enumerate(parts, start=1):
        label = []
        if len(parts) > 1:
            echo_number, echo_time = exact[3]
            if echo_varies:
                te = _float(echo_time)
                label.append("e" + (echo_number or (f"{te:g}" if te is not None else str(n))))
            if repeat_varies:
                label.append("a" + (repeat.strip("/") or str(n)))
            if other_varies or not label:
                label.append(f"p{n}")
        labels.append("_".join(label))
    if len(set(labels)) < len(labels):
        labels = [f"{label}_p{n}" for n, label in enumerate(labels, start=1)]
    stacks = [Stack(label=label, localizer=_is_localizer(exact[2], description),
                    members=tuple((key, s.frame) for key, s in members))
              for label, (exact, _orient, _repeat, members) in zip(labels, parts, strict=True)]
    return stacks


# --- reading one stack ---------------------------------------------------------------------------------------

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
    frames = int(_float(ds.get("NumberOfFrames")) or 1)
    if int(ds.Rows) * int(ds.Columns) * frames > MAX_VOXELS:
        raise ScanError(location, f"{name}: {ds.Rows}x{ds.Columns}x{frames} voxels is beyond the {MAX_VOXELS} "
                                  "voxel limit; refusing a header that claims this much")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for corrupt or truncated pixel data
        raise ScanError(location, f"{name}: pixel data cannot be decoded: {_one_line(e)}") from None
    samples = int(_float(ds.get("SamplesPerPixel")) or 1)
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
        value = _text(ds.get(tag))
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
    _odd_one_out(slices, ref, "slice orientation", lambda s: s.orientation, _same_orientation,
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
