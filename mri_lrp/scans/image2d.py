"""PNG / JPEG / TIFF slices (grey or colour) as 2D scans, valued as torchvision's ``ToTensor`` gives them.

``ToTensor`` turns a PIL image into (C, H, W) with rows top to bottom and 8-bit values divided by 255; 16-bit
and float images keep their values. Here the same numbers land in a Scan's (C, I, J, 1) data, i = row,
j = column, so the model tensor is exactly ``ToTensor(image)`` before resizing and normalisation. A colour
image whose three channels are equal is read as grey (repeating it into a 3-channel model gives the same
tensor); alpha is dropped, as ``Image.convert("RGB")`` does.

An image carries no world geometry. The affine is a stand-in — 1 mm pixels, columns along +x (right), rows
along -y, so overlays and viewers in neurological view show the picture as it looks in the file — and the
scan's warnings say so: millimetres, volumes and atlas regions of such a scan are not anatomy.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from mri_lrp.errors import ScanError
from mri_lrp.scans.refs import MAX_VOXELS, ScanRef, Skipped
from mri_lrp.scans.scan import Scan

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NO_GEOMETRY = ("an image file carries no world geometry: 1 mm pixels are assumed, so sizes in mm or ml and "
               "atlas regions are not anatomy")
_STORED = {"I;16": "uint16", "I": "int32", "F": "float32"}
_GREY_MODES = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def read_image(ref: ScanRef) -> Scan:
    """The Scan of one 2D image file; ScanError for a file PIL cannot decode or a frame too large."""
    from PIL import Image

    path = ref.paths[0]
    notes = [NO_GEOMETRY]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_VOXELS:
                    raise ScanError(ref.location, f"image of {image.width}x{image.height} pixels is too large")
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    notes.append(f"only the first of the file's {frames} pages is read")
                pixels, names, note = _pixels(image)
                dtype = _STORED.get(image.mode[:4], "uint8")  # what the label-map check looks at
                file_format = image.format or ""
    except ScanError:
        raise
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ScanError(ref.location, f"cannot decode the image: {e}") from None
    if note:
        notes.append(note)
    height = pixels.shape[-2]
    affine = np.array([[0.0, 1.0, 0.0, 0.0],
                       [-1.0, 0.0, 0.0, float(height - 1)],
                       [0.0, 0.0, 1.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    return Scan(scan_id=ref.scan_id, source=ref.source, kind="image", data=pixels[..., None], affine=affine,
                paths=ref.paths, metadata={"format": file_format, "dtype": dtype}, warnings=tuple(notes),
                channels=names)


def _pixels(image) -> tuple[np.ndarray, tuple[str, ...], str]:
    """float32 (H, W) for grey, (3, H, W) for colour, as ToTensor values; channel names; a note or ''."""
    mode = image.mode
    note = ""
    if mode in _GREY_MODES:
        raw = np.asarray(image)
        if mode == "1" or raw.dtype != np.uint8:
            return raw.astype(np.float32), (), ""
        return raw.astype(np.float32) / 255.0, (), ""
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"), dtype=np.float32) / 255.0, (), "alpha channel dropped"
    if "A" in mode or mode == "P" and "transparency" in image.info:
        note = "alpha channel dropped"
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    if np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2]):
        grey = "colour image with three equal channels read as grey"
        return rgb[0], (), f"{note}; {grey}" if note else grey
    return rgb, ("red", "green", "blue"), note


def image_ref(rel: str, abs_path: str, location: str) -> ScanRef | Skipped:
    """Discovery's entry for an image file: a ScanRef, or Skipped for a picture an earlier run wrote (an
    overlay in a scan folder of its output) or a file named as a mask or segmentation."""
    from mri_lrp.scans.ids import file_scan_id
    from mri_lrp.scans.labels import label_file_reason

    folder = os.path.dirname(abs_path)
    try:
        siblings = set(os.listdir(folder))
    except OSError:
        siblings = set()
    if siblings & {"result.json", "regions.csv"}:
        return Skipped(location, "picture in a scan folder written by an earlier explain run, not a scan")
    stem = rel[: -len(next(s for s in IMAGE_SUFFIXES if rel.lower().endswith(s)))]
    reason = label_file_reason(stem)
    if reason:
        return Skipped(location, reason)
    return ScanRef(kind="image", source=rel, scan_id=file_scan_id(stem), paths=(abs_path,), location=location)
