"""A registered atlas as regions: its label image, its label table (TSV, CSV, FreeSurfer LUT or ITK-SNAP) and
its labels resampled onto each scan grid."""

from __future__ import annotations

import csv
import io
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mri_lrp.errors import SettingsError
from mri_lrp.regions.partition import Partition, resample_nearest
from mri_lrp.scans.scan import Scan

BACKGROUND = "background"
_GEOMETRIES_KEPT = 8  # atlas label images kept per atlas, one per scan grid seen


@dataclass(frozen=True)
class Atlas:
    """A label image in world space with its names; ``names`` covers every label present in ``labels``."""

    labels: np.ndarray          # int32, (I, J, K), 0 = background
    affine: np.ndarray          # (4, 4) voxel -> world RAS mm
    names: dict[int, str]       # label id -> region name, including 0 -> "background"
    source: str
    partitions: dict = field(default_factory=dict, compare=False, repr=False)  # scan geometry -> Partition


def load_atlas(labels_path: str | Path, table_path: str | Path) -> Atlas:
    """Read a registered atlas: a NIfTI label image and its table (TSV, CSV or FreeSurfer LUT)."""
    import nibabel as nib

    labels_path = Path(labels_path)
    table = read_label_table(table_path)
    try:
        img = nib.load(str(labels_path))
        raw = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except FileNotFoundError as exc:
        raise SettingsError(f"{labels_path}: atlas label image not found") from exc
    except Exception as exc:  # nibabel raises many types for files it cannot read
        raise SettingsError(f"{labels_path}: not a readable NIfTI label image ({exc})") from exc
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 2:
        raw = raw[:, :, None]
    if raw.ndim != 3:
        raise SettingsError(f"{labels_path}: atlas must be a 3D label image, got shape {raw.shape}")
    if not np.isfinite(raw).all() or not np.array_equal(raw, np.round(raw)):
        raise SettingsError(f"{labels_path}: atlas values must be whole numbers (a label image)")
    if raw.size and raw.min() < 0:
        raise SettingsError(f"{labels_path}: atlas labels must not be negative")
    labels = raw.astype(np.int32)
    present = sorted({0, *np.unique(labels).tolist()})
    names = {int(i): (BACKGROUND if i == 0 else table.get(int(i), f"label_{i}")) for i in present}
    if len(set(names.values())) != len(names):
        raise SettingsError(f"{table_path}: a region name is used twice (or clashes with '{BACKGROUND}')")
    return Atlas(labels=labels, affine=affine, names=names, source=str(labels_path))


_ID_HEADERS = ("id", "index", "idx", "label_id", "labelid", "value", "label", "number", "no")
_NAME_HEADERS = ("name", "label_name", "labelname", "region", "region_name", "structure", "description",
                 "label")


def read_label_table(path: str | Path) -> dict[int, str]:
    """Parse a label table: TSV or CSV (id and name, header optional) or FreeSurfer/ITK-SNAP style text.

    FreeSurfer LUT lines are ``id name R G B A``; ITK-SNAP lines are ``id R G B A VIS MSH "name"``; ``#``
    starts a comment. Errors name the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: label table not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read label table ({exc})") from exc
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise SettingsError(f"{path}: label table is empty")
    rows = _split_rows(path, lines)
    id_col, name_col = 0, 1
    first_no, first = rows[0]
    if not _is_int(first[0]):  # a header row
        headers = [h.strip().lower() for h in first]
        id_col = next((headers.index(h) for h in _ID_HEADERS if h in headers), 0)
        name_cols = [headers.index(h) for h in _NAME_HEADERS if h in headers and headers.index(h) != id_col]
        name_col = name_cols[0] if name_cols else (1 if id_col != 1 else 0)
        rows = rows[1:]
    table: dict[int, str] = {}
    for line_no, fields in rows:
        if len(fields) <= max(id_col, name_col):
            raise SettingsError(f"{path}: line {line_no}: expected a label id and a name")
        raw_id, name = fields[id_col].strip(), fields[name_col].strip()
        if _is_itksnap_row(fields):
            name = fields[-1].strip()
        if not _is_int(raw_id):
            raise SettingsError(f"{path}: line {line_no}: label id '{raw_id}' is not a whole number")
        if not name:
            raise SettingsError(f"{path}: line {line_no}: label {raw_id} has no name")
        label = int(raw_id)
        if label in table and table[label] != name:
            raise SettingsError(f"{path}: line {line_no}: label {label} is named twice")
        table[label] = name
    if not table:
        raise SettingsError(f"{path}: label table has no rows after its header")
    return table


def _split_rows(path: Path, lines: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Split lines by the table's delimiter: tab, comma, else whitespace with shell-style quotes."""
    sample = lines[0][1]
    if "\t" in sample or "," in sample:
        delim = "\t" if "\t" in sample else ","
        reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delim)
        return [(n, fields) for (n, _), fields in zip(lines, reader, strict=True)]
    rows = []
    for n, line in lines:
        try:
            rows.append((n, shlex.split(line)))
        except ValueError as exc:
            raise SettingsError(f"{path}: line {n}: {exc}") from exc
    return rows


def _is_int(text: str) -> bool:
    try:
        int(text.strip())
    except ValueError:
        return False
    return True


def _is_itksnap_row(fields: list[str]) -> bool:
    """ITK-SNAP label files: eight fields, all numeric but the quoted name at the end."""
    return len(fields) == 8 and all(_is_number(f) for f in fields[:7]) and not _is_number(fields[7])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def atlas_partition(atlas: Atlas, scan: Scan) -> Partition:
    """The atlas regions on the scan grid, nearest neighbour through the affines (atlas already registered).

    Rows are the labels present in the atlas image (plus background), so every scan gets the same regions.
    The label image depends only on the scan's grid, so it is resampled once per geometry and reused.
    """
    key = (scan.shape, np.asarray(scan.affine, dtype=np.float64).tobytes())
    cached = atlas.partitions.get(key)
    if cached is not None:
        return cached
    labels = resample_nearest(atlas.labels, atlas.affine, scan.shape, scan.affine, fill=0)
    ids = tuple(sorted(atlas.names))
    index = np.searchsorted(np.asarray(ids), labels).astype(np.int32)
    partition = Partition(index=index, ids=ids, names=tuple(atlas.names[i] for i in ids), kind="atlas")
    if len(atlas.partitions) >= _GEOMETRIES_KEPT:
        atlas.partitions.pop(next(iter(atlas.partitions)))
    atlas.partitions[key] = partition
    return partition
