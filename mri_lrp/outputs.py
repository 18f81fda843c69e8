"""Atomic file writers, the CSV schemas of the spec, and the run manifest.

Every file appears complete or not at all: content goes to a temporary file in the same folder, is flushed
to disk and renamed over the final name, so a kill at any moment leaves no half-written output.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_COLUMNS = [
    "scan_id", "source", "kind", "shape", "spacing_mm", "shape_x", "shape_y", "shape_z",
    "spacing_x", "spacing_y", "spacing_z", "predicted_class", "predicted_prob",
    "target_class", "target_prob", "output_relevance", "relevance_sum", "conservation_error",
    "absorbed", "top_region", "relevance_outside_head", "relevance_border",
    "relevance_mass_accuracy", "pointing_game", "mask_volume_ml",
    "fitness", "input_coverage", "scan_inside", "feature_distance", "feature_percentile", "intensity_distance",
    "fitness_reasons",
    "folds", "fold_vote", "prob_std", "map_agreement", "region_agreement", "outlier_fold",  # fold ensembles
    "warnings", "status", "seconds", "modality", "series_description", "series_number", "protocol",
]
FAILURE_COLUMNS = ["scan_id", "source", "stage", "error"]


def summary_columns(channels: Sequence[str] = ()) -> list[str]:
    """SUMMARY_COLUMNS plus a multi-channel model's ``share_<channel>`` columns, before ``warnings``."""
    at = SUMMARY_COLUMNS.index("warnings")
    return [*SUMMARY_COLUMNS[:at], *(f"share_{c}" for c in channels), *SUMMARY_COLUMNS[at:]]
SKIPPED_COLUMNS = ["path", "reason"]   # skipped.csv: inputs that hold no scan, and why
DONE_MARKER = "result.json"


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it becomes ``path`` (umask permissions).

    ``suffix`` lets writers that pick a format from the name (nibabel, matplotlib) see the right one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are for the team to read
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with writer threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to ``path`` via a temporary sibling, fsync and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    # A non-UTF-8 file name that reached a message becomes a visible escape, not a crash of the whole run.
    atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV with the given leading columns; columns beyond them are kept, in first-seen order."""
    rows = list(rows)
    cols = list(columns)
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in cols})
    return buf.getvalue()


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    atomic_write_text(path, csv_text(rows, columns))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class NiftiMeta:
    """What a derived volume says about itself in its header, so viewers and pipelines read it right."""

    qform_code: int = 2               # the source's codes (1 scanner, 2 aligned, ...), carried over
    sform_code: int = 2
    intent: str = ""                  # a nibabel intent name, e.g. "estimate"; "" leaves it unset
    intent_name: str = ""             # up to 16 bytes
    descrip: str = ""                 # up to 80 bytes (cut there)
    cal: tuple[float, float] | None = None  # the default display window (cal_min, cal_max)


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray, meta: NiftiMeta | None = None) -> None:
    """Write a float32 NIfTI atomically; ``.nii.gz`` is gzip by ISA-L (standard gzip, several times faster
    than zlib at its fastest level, where the relevance volume compressed by zlib dominated a scan's writes)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None)
    header = img.header
    affine = np.asarray(affine, dtype=np.float64)
    meta = meta or NiftiMeta()
    header.set_sform(affine, code=meta.sform_code)
    header.set_qform(affine, code=meta.qform_code)
    header.set_xyzt_units("mm")
    if meta.intent:
        header.set_intent(meta.intent, name=meta.intent_name[:16])
    if meta.descrip:
        header["descrip"] = meta.descrip.encode("ascii", "replace")[:80]
    if meta.cal is not None:
        header["cal_min"], header["cal_max"] = meta.cal
    raw = img.to_bytes()
    if str(path).endswith(".gz"):
        from isal import igzip

        raw = igzip.compress(raw, compresslevel=1)
    atomic_write_bytes(path, raw)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "x".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
