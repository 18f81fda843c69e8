"""Relevance per region: atlas labels, built-in world-space octants, tumour masks, and their sums.

A *partition* gives every voxel of a scan exactly one region, so the region sums of a partition always add up
to the scan's total relevance. Regions come from a registered atlas (resampled nearest-neighbour through the
two affines), or, without one, from the head's octants in world RAS coordinates, which makes the table the
same for a LAS and a RAS copy of one scan. A tumour mask adds a second partition: ``inside_mask`` and
``outside_mask``.

Conventions chosen here (the CSV reader can rely on them):
- ``partition`` says which set a row belongs to: ``builtin`` (octants), ``atlas`` or ``mask``; each set adds up
  to the scan's total on its own, so sums are grouped by (scan, partition).
- ``channel`` is ``all`` for rows of the scan's relevance; a multi-channel case adds one row set per channel
  (its own map, fractions of its own total), so sums are grouped by (scan, partition, channel).
- ``region_name`` is unique within a scan; ``region_id`` is the label value inside its own partition.
- Atlas label 0 and every voxel that falls outside the atlas image are region 0, ``background``.
- ``relevance_fraction`` is 0 for every region when the scan's total relevance is exactly 0 (nothing to share
  out); ``relevance_density`` is 0 for a region with no voxels.
- ``rank`` is 1 for the region with the largest ``relevance_sum`` within its partition (ties: lower id first).
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.scans.scan import Scan

REGION_COLUMNS = ["scan_id", "partition", "channel", "region_id", "region_name", "voxels", "volume_ml", "relevance_sum",
                  "relevance_pos", "relevance_neg", "relevance_fraction", "relevance_density", "rank"]
BY_CLASS_COLUMNS = ["predicted_class", "target_class", "partition", "region_name", "scans", "mean_relevance_sum",
                    "mean_relevance_fraction", "mean_relevance_density"]
BACKGROUND = "background"
OUTSIDE_HEAD = "outside_head"
INSIDE_MASK = "inside_mask"
OUTSIDE_MASK = "outside_mask"
MASK_REGION_NAMES = (INSIDE_MASK, OUTSIDE_MASK)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_MASK_NAME_SUFFIXES = ("", "_mask", "-mask", "_seg", "-seg", "_label", "_labels")
_GEOMETRIES_KEPT = 8  # atlas label images kept per atlas, one per scan grid seen
_TIE_MM = 1e-6  # voxels this close to the head's centre plane go to the right/anterior/superior side


@dataclass(frozen=True)
class Atlas:
    """A label image in world space with its names; ``names`` covers every label present in ``labels``."""

    labels: np.ndarray          # int32, (I, J, K), 0 = background
    affine: np.ndarray          # (4, 4) voxel -> world RAS mm
    names: dict[int, str]       # label id -> region name, including 0 -> "background"
    source: str
    partitions: dict = field(default_factory=dict, compare=False, repr=False)  # scan geometry -> Partition


@dataclass(frozen=True)
class Partition:
    """Every voxel of one scan grid assigned to exactly one region.

    ``index`` holds positions into ``ids``/``names`` (not the label values), so sums are one ``bincount``.
    The flat index and the voxel counts are computed once per partition, however many maps are summed over it.
    """

    index: np.ndarray           # integer (intp or int32), scan shape, values in [0, len(ids))
    ids: tuple[int, ...]
    names: tuple[str, ...]
    kind: str = "builtin"       # the ``partition`` column: builtin, atlas or mask

    @cached_property
    def flat_index(self) -> np.ndarray:
        """The index as one flat intp array (what ``bincount`` takes without a copy)."""
        return np.ascontiguousarray(self.index, dtype=np.intp).reshape(-1)

    @cached_property
    def voxels(self) -> np.ndarray:
        return np.bincount(self.flat_index, minlength=len(self.ids))


# ----------------------------------------------------------------------------------------------- geometry

def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres; the determinant is right for sheared and oblique grids too."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) / 1000.0)


def resample_nearest(data: np.ndarray, affine: np.ndarray, target_shape: Sequence[int],
                     target_affine: np.ndarray, fill: int | float = 0) -> np.ndarray:
    """Nearest-neighbour resampling of ``data`` onto a target grid, through both voxel->world affines.

    Target voxels whose world position falls outside ``data`` get ``fill``. Identical grids return a copy
    without interpolation error.
    """
    src = np.asarray(data)
    shape = tuple(int(n) for n in target_shape)
    try:
        to_src = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, np.float64)
    except np.linalg.LinAlgError as exc:
        raise ValueError("source affine is singular") from exc
    if src.shape == shape and np.allclose(to_src, np.eye(4), atol=1e-6):
        return src.copy()
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    idx = []
    inside = np.ones(shape, dtype=bool)
    for d in range(3):
        coord = (to_src[d, 0] * grids[0] + to_src[d, 1] * grids[1] + to_src[d, 2] * grids[2]
                 + to_src[d, 3])
        rounded = np.floor(coord + 0.5 + 1e-9).astype(np.int64)
        rounded = np.broadcast_to(rounded, shape)
        inside &= (rounded >= 0) & (rounded < src.shape[d])
        idx.append(np.clip(rounded, 0, src.shape[d] - 1))
    out = src[idx[0], idx[1], idx[2]]
    out[~inside] = fill
    return out


def _world_coords(shape: Sequence[int], affine: np.ndarray) -> list[np.ndarray]:
    """World x, y, z of every voxel centre, as three broadcastable arrays (no full (N, 3) copy).

    Terms with a zero coefficient are left out, so on an axis-aligned grid each array stays one-dimensional.
    """
    grids = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    a = np.asarray(affine, dtype=np.float64)
    coords = []
    for d in range(3):
        value: np.ndarray = np.full((1, 1, 1), a[d, 3])
        for axis in range(3):
            if a[d, axis] != 0.0:
                value = value + a[d, axis] * grids[axis]
        coords.append(value)
    return coords


# ------------------------------------------------------------------------------------------------ atlas

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


# -------------------------------------------------------------------------------------- built-in regions

def head_mask(data: np.ndarray) -> np.ndarray:
    """A rough head: voxels above 10% of the robust (2nd-98th percentile) range, with enclosed holes filled.

    Skull, CSF and necrotic cores are dark on T1 but lie inside the head; a voxel counts as inside when bright
    voxels surround it along all three grid axes, which fills such holes without filling in the background.
    """
    values = np.asarray(data, dtype=np.float32)
    if not np.isfinite(values).all():  # readers already replace NaN; a copy only when some are left
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    step = 2 if values.size > 1 << 20 else 1  # every 8th voxel pins the percentiles of a large volume
    sample = values[::step, ::step, ::step]
    low, high = np.percentile(sample, [2.0, 98.0]) if values.size else (0.0, 0.0)
    bright = values > low + 0.1 * (high - low)
    # Inside along an axis = between the first and the last bright voxel of its line. The running ORs work on
    # bits packed eight to a byte along another axis, eight lines at once; packing is fastest along the axis
    # that is contiguous in memory (the first for nibabel's Fortran-ordered arrays, the last for C order).
    fast, second, third = np.argsort(bright.strides, kind="stable")
    packed = np.packbits(bright, axis=fast)
    across = np.unpackbits(_between(packed, second) & _between(packed, third), axis=fast, count=bright.shape[fast])
    along = np.unpackbits(_between(np.packbits(bright, axis=second), fast), axis=second,
                          count=bright.shape[second])
    return (across & along).view(bool)


def _between(bits: np.ndarray, axis: int) -> np.ndarray:
    """Bits set at and after the first set bit of their line along ``axis``, and at and before the last."""
    before = np.bitwise_or.accumulate(bits, axis=axis)
    after = np.flip(np.bitwise_or.accumulate(np.flip(bits, axis), axis=axis), axis)
    return before & after


def builtin_partition(scan: Scan) -> Partition:
    """Left/right x anterior/posterior x superior/inferior around the head centre in world RAS, plus outside.

    The centre is the mean world position of the head mask. Single-slice scans are not split along the world
    axis closest to their slice normal (every voxel would sit on one side), so their names have two parts.
    """
    shape = scan.shape
    head = head_mask(scan.volume)  # a multi-channel case: its first channel
    if not head.any():
        head = np.ones(shape, dtype=bool)
    if scan.kind == "image":
        return _image_partition(head)
    world = _world_coords(shape, scan.affine)
    # The affine is linear, so the mean world position is the affine applied to the mean voxel index.
    count = float(head.sum())
    mean_index = [float((np.arange(n) * head.sum(axis=tuple(a for a in range(3) if a != axis))).sum() / count)
                  for axis, n in enumerate(shape)]
    centre = list(np.asarray(scan.affine, dtype=np.float64)[:3, :3] @ mean_index + np.asarray(scan.affine)[:3, 3])
    axes = [0, 1, 2]
    if scan.is_2d:
        columns = np.asarray(scan.affine, dtype=np.float64)[:3, :3]
        normal = columns[:, 2]
        if not np.linalg.norm(normal) > 0:
            normal = np.cross(columns[:, 0], columns[:, 1])
        if np.linalg.norm(normal) > 0:
            axes.remove(int(np.argmax(np.abs(normal))))
    words = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))
    side = np.zeros((1, 1, 1), dtype=np.intp)  # broadcast: one-dimensional per axis on an axis-aligned grid
    for place, axis in enumerate(reversed(axes)):
        side = side + ((world[axis] - centre[axis] > -_TIE_MM).astype(np.intp) << place)
    names = [OUTSIDE_HEAD]
    for code in range(2 ** len(axes)):
        parts = [words[axis][(code >> place) & 1] for place, axis in enumerate(reversed(axes))]
        names.append("_".join(reversed(parts)))
    index = np.where(head, side + 1, 0)  # intp already: what bincount takes, no copy per map
    return Partition(index=index, ids=tuple(range(len(names))), names=tuple(names), kind="builtin")


IMAGE_REGIONS = ("image_top_left", "image_top_right", "image_bottom_left", "image_bottom_right")


def _image_partition(head: np.ndarray) -> Partition:
    """An image file's stand-in geometry names no anatomy: quarters of the picture as displayed (axis 0 = rows
    top to bottom, axis 1 = columns left to right) around the centre of the head mask, plus outside."""
    rows, cols = np.nonzero(head.any(axis=2))
    side = ((np.arange(head.shape[0]) >= rows.mean())[:, None, None].astype(np.intp) << 1) \
        + (np.arange(head.shape[1]) >= cols.mean())[None, :, None].astype(np.intp)
    index = np.where(head, side + 1, 0)
    return Partition(index=index, ids=tuple(range(5)), names=(OUTSIDE_HEAD, *IMAGE_REGIONS), kind="builtin")


# ----------------------------------------------------------------------------------------------- masks

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


# ------------------------------------------------------------------------------------------------- sums

def region_rows(scan_id: str, relevance: np.ndarray, partition: Partition, voxel_ml: float,
                mask: np.ndarray | Partition | None = None) -> list[dict]:
    """One row per region (REGION_COLUMNS), then ``inside_mask`` and ``outside_mask`` when a mask is given.

    Each partition is one labelled pass (``bincount`` over its index, once for the signed sums and once for the
    positive part), accumulated in float64, so each partition adds up to the scan's total to rounding. A mask
    may come as its ``mask_partition`` already, to be built once for every map of a scan.
    """
    rel = np.asarray(relevance)
    if rel.shape != partition.index.shape:
        raise ValueError(f"relevance shape {rel.shape} differs from the partition's {partition.index.shape}")
    if mask is not None and not isinstance(mask, Partition):
        if np.shape(mask) != rel.shape:
            raise ValueError(f"mask shape {np.shape(mask)} differs from relevance shape {rel.shape}")
        mask = mask_partition(mask)
    flat = rel.reshape(-1)
    positive = np.maximum(flat, 0.0)
    rows, total = _partition_rows(scan_id, flat, positive, partition, voxel_ml, None)
    if mask is not None:
        rows += _partition_rows(scan_id, flat, positive, mask, voxel_ml, total)[0]
    return rows


def _partition_rows(scan_id: str, flat: np.ndarray, positive: np.ndarray, partition: Partition,
                    voxel_ml: float, total: float | None) -> tuple[list[dict], float]:
    """The rows of one partition, and the scan's total (the sum of its sums unless given)."""
    n = len(partition.ids)
    voxels = partition.voxels
    sums = np.bincount(partition.flat_index, weights=flat, minlength=n)
    pos = np.bincount(partition.flat_index, weights=positive, minlength=n)
    neg = sums - pos
    if total is None:
        total = float(sums.sum())
    order = sorted(range(n), key=lambda r: (-sums[r], partition.ids[r]))
    ranks = {region: place + 1 for place, region in enumerate(order)}
    rows = []
    for r in range(n):
        volume = float(voxels[r]) * voxel_ml
        rows.append({
            "scan_id": scan_id,
            "partition": partition.kind,
            "region_id": int(partition.ids[r]),
            "region_name": partition.names[r],
            "voxels": int(voxels[r]),
            "volume_ml": volume,
            "relevance_sum": float(sums[r]),
            "relevance_pos": float(pos[r]),
            "relevance_neg": float(neg[r]),
            "relevance_fraction": float(sums[r] / total) if total != 0.0 else 0.0,
            "relevance_density": float(sums[r] / volume) if volume > 0 else 0.0,
            "rank": ranks[r],
        })
    return rows, total


def mask_metrics(relevance: np.ndarray, mask: np.ndarray, voxel_ml: float,
                 rows: Iterable[Mapping] | None = None) -> dict:
    """Explanation quality against a ground-truth mask.

    ``relevance_mass_accuracy``: positive relevance inside the mask / all positive relevance (0 when there is
    no positive relevance). ``pointing_game``: the voxel of highest relevance lies inside the mask (False
    when no voxel has positive relevance). ``mask_volume_ml``: the mask's volume on the scan grid.
    Given this map's ``region_rows`` (with the mask), the sums come from its mask rows instead of another pass.
    """
    rel = np.asarray(relevance)
    inside = np.asarray(mask, dtype=bool)
    if inside.shape != rel.shape:
        raise ValueError(f"mask shape {inside.shape} differs from relevance shape {rel.shape}")
    mask_rows = {str(r["region_name"]): r for r in rows or () if r.get("partition") == "mask"}
    if len(mask_rows) == 2:
        inside_pos = float(mask_rows[INSIDE_MASK]["relevance_pos"])
        all_positive = inside_pos + float(mask_rows[OUTSIDE_MASK]["relevance_pos"])
        volume_ml = float(mask_rows[INSIDE_MASK]["voxels"]) * voxel_ml
    else:
        positive = np.maximum(rel.astype(np.float64), 0.0)
        inside_pos, all_positive = float(positive[inside].sum()), float(positive.sum())
        volume_ml = float(inside.sum()) * voxel_ml
    accuracy = inside_pos / all_positive if all_positive > 0 else 0.0
    peak = int(np.argmax(rel)) if rel.size else 0
    pointing = bool(rel.size and rel.flat[peak] > 0 and inside.flat[peak])
    return {"relevance_mass_accuracy": accuracy, "pointing_game": pointing, "mask_volume_ml": volume_ml}


def top_region(rows: Iterable[Mapping]) -> str:
    """The anatomical region (mask rows excluded) with the largest relevance_sum; '' when there is none."""
    best_name, best = "", -np.inf
    for row in rows:
        if row.get("partition") == "mask" or row["region_name"] in MASK_REGION_NAMES:
            continue
        value = float(row["relevance_sum"])
        if value > best:
            best_name, best = str(row["region_name"]), value
    return best_name


def by_class_table(summary_rows: Iterable[Mapping], region_rows: Iterable[Mapping]) -> list[dict]:
    """Mean relevance_sum, fraction and density per (predicted class, target class, region), with scan count.

    Relevance for different target classes is never averaged together: rows carrying ``target_class`` (runs
    with ``--target all``) are grouped by it too; without it the column is empty. Works on fresh rows or rows
    read back from CSV (strings); scans without a predicted class in the summary (failed ones) are left out.
    Classes sort by name; regions keep their first-seen order.
    """
    predicted = {str(row["scan_id"]): str(row["predicted_class"]) for row in summary_rows
                 if row.get("predicted_class") not in (None, "")}
    groups: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    region_order: dict[str, int] = {}
    partition_of: dict[str, str] = {}  # names are unique in a scan; the column says which set a mean sums within
    for row in region_rows:
        cls = predicted.get(str(row["scan_id"]))
        if cls is None or row.get("channel", "all") not in ("all", "", None):  # a case's summed rows only
            continue
        name = str(row["region_name"])
        region_order.setdefault(name, len(region_order))
        partition_of.setdefault(name, str(row.get("partition") or ""))
        key = (cls, str(row.get("target_class") or ""), name)
        groups.setdefault(key, []).append((float(row["relevance_sum"]), float(row["relevance_fraction"]),
                                           float(row["relevance_density"])))
    table = []
    for (cls, target, name) in sorted(groups, key=lambda key: (key[0], key[1], region_order[key[2]])):
        values = np.asarray(groups[(cls, target, name)], dtype=np.float64)
        means = values.mean(axis=0)
        table.append({"predicted_class": cls, "target_class": target, "partition": partition_of[name],
                      "region_name": name,
                      "scans": len(values),
                      "mean_relevance_sum": float(means[0]), "mean_relevance_fraction": float(means[1]),
                      "mean_relevance_density": float(means[2])})
    return table
