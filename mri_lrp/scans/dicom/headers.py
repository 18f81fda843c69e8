"""DICOM headers: what one file says about its images (geometry, echo, repeats, MOSAIC), read without pixels."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}


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


def as_float(value: object) -> float | None:
    """A header value as a finite float; None when it is missing, not a number or not finite."""
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
    out = tuple(as_float(v) for v in items)
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def as_text(value: object) -> str:
    """A header value as text, the items of a multi-value joined by backslashes as DICOM writes them."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _first_item(sources: Sequence[Dataset | None], sequence: str) -> Dataset | None:
    """First item of a functional-group sequence, looked up per frame first, then in the shared groups."""
    for item in sources:
        if item is not None and sequence in item and len(item[sequence].value) > 0:
            return item[sequence].value[0]
    return None


def dataset_slices(ds: Dataset, path_index: int) -> list[SliceInfo]:
    """The 2D images one DICOM dataset holds, with the geometry each needs; raises ValueError if unusable."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError("no Rows/Columns: the header holds no image or is cut short (truncated file?)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise ValueError(f"image size {rows}x{cols} is empty")
    image_type = tuple(str(t) for t in (ds.get("ImageType") or ()))
    instance = int(as_float(ds.get("InstanceNumber")) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n_frames = int(as_float(ds.get("NumberOfFrames")) or 1)
    if not per_frame:
        if n_frames > 1:
            raise ValueError(f"multi-frame image ({n_frames} frames) without per-frame geometry")
        return [SliceInfo(
            path_index=path_index, frame=None, rows=rows, cols=cols,
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            thickness=as_float(ds.get("SpacingBetweenSlices")) or as_float(ds.get("SliceThickness")),
            echo=(as_text(ds.get("EchoNumbers")), as_text(ds.get("EchoTime"))),
            repeat=f"{as_text(ds.get('AcquisitionNumber'))}/{as_text(ds.get('TemporalPositionIdentifier'))}",
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
            thickness=(as_float(measures.get("SpacingBetweenSlices")) or as_float(measures.get("SliceThickness"))
                       if measures else None),
            echo=("", as_text(echo.get("EffectiveEchoTime")) if echo else ""),
            repeat=(f"{as_text(content.get('TemporalPositionIndex'))}/{as_text(content.get('StackID'))}"
                    if content else ""),
            image_type=tuple(str(t) for t in (frame_type.get("FrameType") or ())) if frame_type else image_type,
            instance=f,
            slope=(as_float(scaling.get("RescaleSlope")) or 1.0) if scaling else 1.0,
            intercept=(as_float(scaling.get("RescaleIntercept")) or 0.0) if scaling else 0.0))
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
    modality = as_text(ds.get("Modality")).upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"DICOM {modality} object, not an image"
    if "Rows" not in ds:
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        if "Image Storage" in name:
            raise ValueError(f"{name} header ends before the image attributes (truncated file?)")
        return f"DICOM file without an image ({name})"
    series_number = as_float(ds.get("SeriesNumber"))
    # Without a series UID (stripped by some anonymisers), files of one folder, study and series number and
    # description are taken as one series; splitting then separates stacks that do not belong together.
    fallback = ":".join(["no-series-uid", os.path.dirname(os.path.abspath(path)),
                         str(ds.get("StudyInstanceUID", "")), str(series_number), as_text(ds.get("SeriesDescription"))])
    return DicomHeader(
        series_uid=str(ds.get("SeriesInstanceUID") or fallback),
        series_number=int(series_number) if series_number is not None else None,
        description=as_text(ds.get("SeriesDescription")),
        slices=tuple(dataset_slices(ds, 0)),
        modality=modality, protocol=as_text(ds.get("ProtocolName")), study_uid=str(ds.get("StudyInstanceUID") or ""))
