"""A fold ensemble's files and figures for one scan, beside the mean map the writer writes as for one model.

``relevance.nii.gz`` (written by the scan writer) is the mean of the folds' maps on the scan's grid, which
``scan_maps`` maps back once each (by linearity, the mean of ``Explained.relevance`` mapped back). Here each
fold's map goes to ``relevance_fold<k>.nii.gz`` and the voxel-wise standard deviation across folds (numpy's,
ddof 0) to ``relevance_std.nii.gz``, all on the scan's grid with the writer's header; each fold adds its region
rows (``fold`` = k, the mean's rows are ``mean``), its folds.csv row, and the scan's summary row gets the
agreement columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp.folds import (
    FoldMaps,
    kendall_w,
    leave_one_out,
    map_agreement,
    outlier,
    outlier_note,
    split_note,
    vote,
)
from mri_lrp.model.transform import ModelSpace, to_scan, to_scan_channels
from mri_lrp.outputs import NiftiMeta, save_nifti
from mri_lrp.pipeline.layout import ScanFiles
from mri_lrp.regions import region_rows
from mri_lrp.render_folds import add_fold_strip
from mri_lrp.scans.scan import Scan

FOLD_COLUMNS = ["scan_id", "fold", "checkpoint", "checkpoint_sha256", "predicted_class", "prob", "relevance_sum",
                "map_correlation"]


@dataclass
class FoldOutputs:
    """What the fold files add to a scan's outputs."""

    files: list[str] = field(default_factory=list)              # as the done marker lists them
    region_rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)       # the agreement columns of summary.csv
    warnings: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)    # folds.csv rows


def scan_maps(folds: FoldMaps, space: ModelSpace, channels: tuple[str, ...]) -> np.ndarray:
    """float32 (k, T, I, J, K): every fold's maps on the scan's grid (a case's channels summed, as the writer
    sums them). The writer's mean map is their mean, so each map goes back through the resampling once."""
    def one(relevance: np.ndarray) -> np.ndarray:
        if channels:
            per = np.asarray(to_scan_channels(torch.from_numpy(relevance), space), dtype=np.float32)
            return per.sum(axis=0, dtype=np.float64).astype(np.float32)
        return to_scan(torch.from_numpy(relevance), space).astype(np.float32)

    return np.stack([np.stack([one(r) for r in fold]) for fold in folds.relevance])


def mean_and_spread(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the standard deviation (ddof 0) over the first axis, accumulated in float64 one fold at a
    time (a float64 copy of every fold's map would be k scans' worth of memory)."""
    mean = maps.mean(axis=0, dtype=np.float64)
    square = np.zeros_like(mean)
    for fold in maps:
        d = fold - mean
        square += d * d
    return mean, np.sqrt(square / len(maps))


def write_folds(folds: FoldMaps, maps: np.ndarray, scan: Scan, where: ScanFiles, partition: Any, mask_part: Any,
                voxel_ml: float, targets: list[int], class_names: list[str], meta: NiftiMeta, overlay: Path,
                vmax: float) -> FoldOutputs:
    """Each fold's map (``maps``, from ``scan_maps``) and the spread as files, each fold's region rows, folds.csv
    rows and the summary columns; the ensemble class's overlay (at ``overlay``, colour limit ``vmax``) gains the
    row of fold panels."""
    k = len(folds.sources)
    multi = len(targets) > 1
    ensemble = int(np.argmax(folds.probs.mean(axis=0)))
    shown = targets.index(ensemble) if ensemble in targets else 0  # the map that speaks for the scan
    result = FoldOutputs()
    for f in range(k):
        path = where.relevance(f"fold{f}")
        save_nifti(path, np.moveaxis(maps[f], 0, -1) if multi else maps[f, 0], scan.affine, meta)
        result.files.append(where.listed(path))
    mean, spread = mean_and_spread(maps)
    save_nifti(where.relevance("std"), np.moveaxis(spread, 0, -1) if multi else spread[0], scan.affine, meta)
    result.files.append(where.listed(where.relevance("std")))

    ranked = []  # per fold: the region sums of the partition that covers the scan, for the shown map
    for f in range(k):
        for n, t in enumerate(targets):
            rows = region_rows(scan.scan_id, maps[f, n], partition, voxel_ml, mask=mask_part)
            for row in rows:
                row["target_class"], row["channel"], row["fold"] = class_names[t], "all", str(f)
            result.region_rows.extend(rows)
            if n == shown:
                ranked.append([float(r["relevance_sum"]) for r in rows if r["partition"] == partition.kind])

    model_maps = folds.relevance[:, shown]
    loo = leave_one_out(model_maps)
    odd = outlier(loo)
    w = kendall_w(np.asarray(ranked))
    add_fold_strip(overlay, scan.volume, mean[shown], maps[:, shown],
                   spread[shown], scan.affine, vmax,
                   [*(f"fold {f}  r={r:.2f}" for f, r in enumerate(loo)), "spread (std)"])
    result.summary = {
        "folds": k, "fold_vote": vote(folds.probs, ensemble),
        "prob_std": float(folds.probs[:, ensemble].std()),
        "map_agreement": map_agreement(model_maps),
        "region_agreement": "" if np.isnan(w) else w,
        "outlier_fold": "" if odd is None else odd,
    }
    result.warnings = [note for note in (split_note(folds.probs, ensemble, class_names),
                                         outlier_note(odd, loo, folds.sources[odd]) if odd is not None else "")
                       if note]
    for f, source in enumerate(folds.sources):
        result.rows.append({
            "scan_id": scan.scan_id, "fold": f, "checkpoint": source.path, "checkpoint_sha256": source.sha256,
            "predicted_class": class_names[int(np.argmax(folds.probs[f]))],
            "prob": "" if multi else float(folds.probs[f, targets[0]]),
            "relevance_sum": float(maps[f].sum(dtype=np.float64)), "map_correlation": loo[f],
        })
    return result
