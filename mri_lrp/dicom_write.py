"""Write a volume as a multi-file MR DICOM series: one classic MR Image Storage file per slice.

Used to make the DICOM sample scans and test fixtures. Geometry follows the standard: ImageOrientationPatient
holds the LPS directions of the column index (row direction) and of the row index; PixelSpacing is (row
spacing, column spacing); ImagePositionPatient is the LPS centre of each slice's first voxel. Readers that
project the positions on the slice normal therefore rebuild exactly the affine given here.

Nothing identifying goes in: the patient is "Anonymous^Phantom", dates are fixed, and every UID comes from
``pydicom.uid.generate_uid`` with a deterministic entropy source, so the same call writes the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)
_INT16_MAX = 32767


def write_dicom_series(volume: np.ndarray, affine: np.ndarray, folder: str | os.PathLike[str], *,
                       uid_seed: str, series_description: str = "T1 3D phantom", series_number: int = 1,
                       patient_id: str = "PHANTOM", file_prefix: str = "IM") -> list[Path]:
    """Write ``volume`` (I, J, K) with voxel -> world RAS ``affine`` as K files ``<prefix>0001``, ...

    Stored values are int16; RescaleSlope maps them back to the volume's (non-negative or signed) real values
    with at most half a step of rounding error. ``uid_seed`` makes the study/series/frame/instance UIDs
    reproducible: the same seed gives the same UIDs, a different one different UIDs.
    """
    data = np.asarray(volume, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"volume must be 3D (I, J, K), not shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise ValueError("affine has a zero-length axis")
    lps = _LPS @ affine[:3, :3]
    row_dir = lps[:, 0] / spacing[0]      # stepping the column index moves along the first axis (i)
    col_dir = lps[:, 1] / spacing[1]      # stepping the row index moves along the second axis (j)
    peak = float(np.max(np.abs(data))) or 1.0
    slope = float(f"{peak / _INT16_MAX:.10g}")  # the value written in RescaleSlope, so rounding is exact
    stored = np.clip(np.round(data / slope), -_INT16_MAX - 1, _INT16_MAX).astype(np.int16)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(entropy_srcs=[uid_seed, "study"])
    series_uid = generate_uid(entropy_srcs=[uid_seed, "series"])
    frame_uid = generate_uid(entropy_srcs=[uid_seed, "frame"])
    paths = []
    for k in range(data.shape[2]):
        position = _LPS @ (affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3])
        ds = _slice_dataset(stored[:, :, k].T, row_dir, col_dir, position, spacing, slope)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "instance", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = series_description
        ds.ProtocolName = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.PatientID = patient_id
        path = folder / f"{file_prefix}{k + 1:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(pixels: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, position: np.ndarray,
                   spacing: np.ndarray, slope: float) -> Dataset:
    """The tags every slice shares plus its own geometry and pixels (rows = second axis, columns = first)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Modality = "MR"
    ds.Manufacturer = "mri-lrp phantom"
    ds.ManufacturerModelName = "synthetic"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientName = "Anonymous^Phantom"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.FlipAngle = "9"
    ds.MagneticFieldStrength = "3"
    ds.ImagingFrequency = "123.2"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.SliceThickness = f"{spacing[2]:.6g}"
    ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
    ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.SliceLocation = f"{float(np.dot(np.cross(row_dir, col_dir), position)):.6f}"
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds
