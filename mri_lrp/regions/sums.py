"""One map's relevance per region: the rows of ``regions.csv`` for a scan, its top region, and how much of
the relevance lies inside a ground-truth mask."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from mri_lrp.regions.masks import INSIDE_MASK, MASK_REGION_NAMES, OUTSIDE_MASK, mask_partition
from mri_lrp.regions.partition import Partition

REGION_COLUMNS = ["scan_id", "partition", "channel", "region_id", "region_name", "voxels", "volume_ml", "relevance_sum",
                  "relevance_pos", "relevance_neg", "relevance_fraction", "relevance_density", "rank"]


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
