"""DICOM series with known geometry, built from pydicom's real MR_small.dcm slice, for tests and benchmarks.

Every slice k holds the real 64x64 MR image (tiled or cropped to the requested size) plus 7*k, so slice order
is visible in the data, and an optional bright marker voxel whose world position the test knows. The expected
affine and volume are computed here from the geometry parameters alone, independently of the reader.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MARKER_VALUE = 30000
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "SECRET-ID-4711"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass(frozen=True)
class Geometry:
    """Slice geometry in DICOM patient space (LPS mm).

    ``row_dir`` is the direction of increasing column index (first IOP triplet), ``col_dir`` that of
    increasing row index; ``pixel_spacing`` is DICOM's (between rows, between columns); ``slice_step`` is the
    vector from one slice's first voxel to the next one's; ``origin`` is slice 0's first voxel.
    """

    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    pixel_spacing: tuple[float, float] = (0.6, 0.5)
    slice_step: tuple[float, float, float] = (0.0, 0.0, 2.0)
    origin: tuple[float, float, float] = (-20.0, -15.0, 10.0)

    def lps(self, i: float, j: float, k: float) -> np.ndarray:
        """LPS position of voxel (i = column, j = row, k = slice)."""
        return (np.asarray(self.origin) + i * self.pixel_spacing[1] * np.asarray(self.row_dir)
                + j * self.pixel_spacing[0] * np.asarray(self.col_dir) + k * np.asarray(self.slice_step))

    def world(self, i: float, j: float, k: float) -> np.ndarray:
        """RAS position of voxel (i, j, k): LPS with x and y negated."""
        return self.lps(i, j, k) * np.array([-1.0, -1.0, 1.0])

    def ras_affine(self) -> np.ndarray:
        """The voxel -> RAS affine, column by column from the images of the unit voxel steps."""
        affine = np.eye(4)
        o = self.world(0, 0, 0)
        affine[:3, 0] = self.world(1, 0, 0) - o
        affine[:3, 1] = self.world(0, 1, 0) - o
        affine[:3, 2] = self.world(0, 0, 1) - o
        affine[:3, 3] = o
        return affine


def _unit(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    return tuple(float(x) for x in a / np.linalg.norm(a))  # type: ignore[return-value]


AXIAL = Geometry()
SAGITTAL = Geometry(row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0), slice_step=(-3.0, 0.0, 0.0),
                    origin=(40.0, -30.0, 50.0))
CORONAL = Geometry(row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0), slice_step=(0.0, 2.5, 0.0))


def oblique() -> Geometry:
    """Axes rotated about all three axes; the slice step is along the true normal."""
    row = np.array(_unit((0.9, 0.3, -0.2)))
    col = np.cross(np.array(_unit((0.1, 0.2, 0.97))), row)
    col = np.array(_unit(col))
    normal = np.cross(row, col)
    return Geometry(row_dir=tuple(row), col_dir=tuple(col), pixel_spacing=(0.7, 0.9),  # type: ignore[arg-type]
                    slice_step=tuple(normal * 1.8), origin=(12.5, -7.25, 33.0))  # type: ignore[arg-type]


OBLIQUE = oblique()


@dataclass
class GeneratedSeries:
    """What was written, and what a correct reader must return for it."""

    folder: Path
    paths: list[Path]                 # in file-writing order
    geometry: Geometry
    volume: np.ndarray                # expected (I, J, K) float32 values after rescale
    series_uid: str
    marker: tuple[int, int, int] | None = None
    extra: dict = field(default_factory=dict)


def template() -> Dataset:
    """pydicom's real MR_small.dcm, with made-up patient identifiers to check that none leak out."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def base_slice(rows: int = 64, cols: int = 64) -> np.ndarray:
    """MR_small's pixels (int16), tiled or cropped to rows x cols."""
    px = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.int16)
    reps = (-(-rows // px.shape[0]), -(-cols // px.shape[1]))
    return np.tile(px, reps)[:rows, :cols].copy()


def slice_pixels(k: int, rows: int, cols: int, marker: tuple[int, int, int] | None) -> np.ndarray:
    """Stored values of slice k: the real image + 7*k, with the marker voxel (i, j, k) set very bright."""
    px = base_slice(rows, cols) + np.int16(7 * k)
    if marker is not None and marker[2] == k:
        px[marker[1], marker[0]] = MARKER_VALUE  # row j, column i
    return px


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_series(folder: Path | str, geometry: Geometry = AXIAL, n_slices: int = 6, *, rows: int = 64,
                 cols: int = 64, series_number: int = 1, series_uid: str | None = None,
                 description: str = "T1 AX", image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
                 echo_number: int | None = None, echo_time: float = 12.0, file_order: str = "sorted",
                 name_prefix: str = "IM", suffix: str = "", rescale: tuple[float, float] | None = None,
                 skip: Sequence[int] = (), duplicate: int | None = None, duplicate_differs: bool = False,
                 marker: tuple[int, int, int] | None = None, positions: Sequence[Sequence[float]] | None = None,
                 acquisition: int | None = None, seed: int = 0) -> GeneratedSeries:
    """Write one series as single-frame files with meaningless names and return what a reader should get.

    ``file_order`` is "sorted", "reversed" or "shuffled" (names and InstanceNumbers follow the writing
    order, so neither tells the slice order). ``skip`` leaves slices out (a gap); ``duplicate`` writes slice
    k twice (with different pixels if ``duplicate_differs``); ``positions`` overrides the slice positions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or _uid("series", folder, series_number, echo_number, acquisition, seed)
    ds0 = template()
    slope, intercept = rescale or (1.0, 0.0)
    ks = [k for k in range(n_slices) if k not in set(skip)]
    entries = [(k, False) for k in ks]
    if duplicate is not None:
        entries.append((duplicate, True))
    if file_order == "reversed":
        entries.reverse()
    elif file_order == "shuffled":
        random.Random(seed).shuffle(entries)
    paths = []
    for n, (k, is_copy) in enumerate(entries):
        ds = copy.deepcopy(ds0)
        px = slice_pixels(k, rows, cols, marker)
        if is_copy and duplicate_differs:
            px = px + np.int16(1)
        sop_uid = _uid("sop", series_uid, n, k, is_copy)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.InstanceNumber = n + 1
        ds.EchoTime = echo_time
        if echo_number is not None:
            ds.EchoNumbers = echo_number
        if acquisition is not None:
            ds.AcquisitionNumber = acquisition
        pos = geometry.lps(0, 0, k) if positions is None else np.asarray(positions[k], dtype=np.float64)
        ds.ImagePositionPatient = [round(float(v), 6) for v in pos]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*geometry.row_dir, *geometry.col_dir)]
        ds.PixelSpacing = list(geometry.pixel_spacing)
        ds.SliceThickness = float(np.linalg.norm(geometry.slice_step))
        ds.SliceLocation = round(float(pos[2]), 6)
        ds.Rows, ds.Columns = rows, cols
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
        ds.PixelData = px.astype("<i2").tobytes()
        path = folder / f"{name_prefix}{n:05d}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    volume = np.stack([slice_pixels(k, rows, cols, marker).T for k in ks], axis=-1).astype(np.float32)
    volume = volume * np.float32(slope) + np.float32(intercept)
    return GeneratedSeries(folder, paths, geometry, volume, series_uid, marker)


def write_enhanced(path: Path | str, geometry: Geometry = AXIAL, n_slices: int = 5, *,
                   echo_times: Sequence[float] = (12.0,), rows: int = 64, cols: int = 64,
                   rescale: tuple[float, float] = (1.0, 0.0), marker: tuple[int, int, int] | None = None,
                   seed: int = 0) -> list[GeneratedSeries]:
    """One Enhanced MR multi-frame file (per-frame functional groups), frames stored in shuffled order.

    Each echo time is one stack; echo e's slice k holds the slice_pixels image + 1000*e. Returns one
    GeneratedSeries per echo (all with the same single path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = template()
    series_uid = _uid("enhanced", path, seed)
    sop_uid = _uid("enhanced-sop", path, seed)
    ds.SOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 5
    ds.SeriesDescription = "enhanced multi-echo"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "EchoTime", "EchoNumbers", "SliceLocation"):
        if keyword in ds:
            delattr(ds, keyword)
    frames = [(e, k) for e in range(len(echo_times)) for k in range(n_slices)]
    random.Random(seed).shuffle(frames)

    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [round(float(v), 8) for v in (*geometry.row_dir, *geometry.col_dir)]
    measures = Dataset()
    measures.PixelSpacing = list(geometry.pixel_spacing)
    measures.SliceThickness = float(np.linalg.norm(geometry.slice_step))
    scaling = Dataset()
    scaling.RescaleSlope, scaling.RescaleIntercept, scaling.RescaleType = rescale[0], rescale[1], "US"
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([scaling])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    pixels = []
    for e, k in frames:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [round(float(v), 6) for v in geometry.lps(0, 0, k)]
        echo = Dataset()
        echo.EffectiveEchoTime = float(echo_times[e])
        frame_type = Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        item.PlanePositionSequence = DicomSequence([pos])
        item.MREchoSequence = DicomSequence([echo])
        item.MRImageFrameTypeSequence = DicomSequence([frame_type])
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
        pixels.append(slice_pixels(k, rows, cols, marker) + np.int16(1000 * e))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = np.stack(pixels).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)

    out = []
    for e in range(len(echo_times)):
        vol = np.stack([(slice_pixels(k, rows, cols, marker) + np.int16(1000 * e)).T for k in range(n_slices)],
                       axis=-1).astype(np.float32)
        out.append(GeneratedSeries(path.parent, [path], geometry, vol * np.float32(rescale[0])
                                   + np.float32(rescale[1]), series_uid, marker,
                                   extra={"echo_time": echo_times[e]}))
    return out


def tilted(geometry: Geometry, degrees: float) -> Geometry:
    """The same slices, each shifted along the column direction: a gantry-tilted (sheared) stack."""
    step = np.asarray(geometry.slice_step)
    shift = np.tan(np.radians(degrees)) * np.linalg.norm(step) * np.asarray(geometry.col_dir)
    return replace(geometry, slice_step=tuple(step + shift))  # type: ignore[arg-type]


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_screenshot(path: Path | str, series: GeneratedSeries, rows: int = 24, cols: int = 32) -> Path:
    """A secondary-capture screenshot (no geometry, ImageType DERIVED\\SECONDARY) filed under ``series``' UID,
    as some viewers save a measurement back into the series they were showing."""
    ds = template()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "SliceLocation"):
        if keyword in ds:
            delattr(ds, keyword)
    sop_uid = _uid("screenshot", series.series_uid)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = np.arange(rows * cols, dtype="<i2").tobytes()
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


def siemens_csa_image_header() -> bytes | None:
    """The CSA image header (0029,1010) of a real Siemens MOSAIC diffusion file that ships in nibabel's tests,
    or None where that data is not installed."""
    import gzip

    import nibabel

    path = Path(nibabel.__file__).parent / "nicom" / "tests" / "data" / "siemens_dwi_1000.dcm.gz"
    if not path.is_file():
        return None
    with gzip.open(path) as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
    return bytes(ds.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value)


def mark_mosaic(series: GeneratedSeries, how: str, count: int = 36) -> None:
    """Make each file of ``series`` a Siemens MOSAIC as scanners and anonymisers leave them: ``how`` is
    "image_type" (ImageType ends in MOSAIC), "mr_header" ((0019,100A) NumberOfImagesInMosaic only) or "csa"
    (only the CSA image header says so)."""
    csa = siemens_csa_image_header() if how == "csa" else None
    for path in series.paths:
        ds = pydicom.dcmread(path)
        if how == "image_type":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "MOSAIC"]
        elif how == "mr_header":
            ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0A, "US", count)
        else:
            ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", csa)
        ds.save_as(path, enforce_file_format=True)
