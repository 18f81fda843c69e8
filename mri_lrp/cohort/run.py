"""`mri-lrp cohort OUT`: read a finished run (of explain or merge), analyse each predicted class, write
``OUT/cohort/`` (names fixed so other tools can read them).

The maps are each scan's ``model_relevance.nii.gz`` (the model grid: every scan of a run on one voxel
layout). Scans without one (explained by an earlier version and resumed) or on another grid are left out
and listed in ``cohort.json``. Maps are read twice: once for the features and the t-test grid, once more,
after clustering, for the full-resolution cluster and group means; no step holds every full map at once.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri_lrp import __version__
from mri_lrp.cohort import flags, groupmaps, spray
from mri_lrp.cohort.plots import plot_eigengap, plot_embedding, plot_mean
from mri_lrp.cohort.scanfacts import METADATA_NAME, MODEL_GRID_NAME, load_model_grid
from mri_lrp.cohort.tables import join_metadata
from mri_lrp.errors import SettingsError
from mri_lrp.outputs import atomic_write_json, read_csv, save_nifti, write_csv
from mri_lrp.scans.ids import safe_part

COHORT_DIR = "cohort"
MEMBER_COLUMNS = ["scan_id", "predicted_class", "cluster", "x", "y", *flags.PROBES]
CLUSTER_COLUMNS = ["cluster", "predicted_class", "size", "share_of_class", *flags.PROBES, "top_region"]


@dataclass
class CohortResult:
    """What the analysis found, for the command's summary line and the report."""

    folder: Path
    scans: int
    classes: dict[str, int]                  # class -> number of clusters
    flagged: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def describe(self) -> str:
        per_class = ", ".join(f"{c}: {k}" for c, k in self.classes.items())
        lines = [f"cohort: {self.scans} scans in {len(self.classes)} classes (clusters {per_class}) -> {self.folder}"]
        if self.flagged:
            lines.append(f"flagged (candidates to look at, see clusters.csv 'why'): {', '.join(self.flagged)}")
        if self.skipped:
            lines.append(f"left out: {len(self.skipped)} scans (e.g. {self.skipped[0]['scan_id']}: "
                         f"{self.skipped[0]['reason']}); listed in cohort.json")
        if self.unmatched:
            lines.append(f"--metadata: {len(self.unmatched)} rows joined no scan (e.g. {self.unmatched[0]}); listed "
                         "in cohort.json")
        return "\n".join(lines)


def run_cohort(out: str | Path, clusters: int | None = None, metadata: str | Path | None = None) -> CohortResult:
    """Analyse the run in ``out``; SettingsError (one line) for a folder that is no finished run."""
    out = Path(out)
    if clusters is not None and clusters < 1:
        raise SettingsError(f"--clusters: must be at least 1, got {clusters}")
    if metadata is not None and not Path(metadata).is_file():
        raise SettingsError(f"--metadata {metadata}: no such file")
    summary = out / "summary.csv"
    if not summary.is_file():
        if (out / "parts").is_dir():
            raise SettingsError(f"{out}: a sharded run's parts; run `mri-lrp merge {out} --out {out}` first")
        raise SettingsError(f"{out}: no summary.csv (not the output folder of explain or merge)")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = [r for r in read_csv(summary) if r.get("status", "ok") == "ok" and r.get("scan_id")]
    skipped: list[dict[str, str]] = []
    meta: dict[str, dict[str, str]] = {}
    paths: dict[str, Path] = {}
    for row in rows:
        scan_id = row["scan_id"]
        folder = out / "scans" / scan_id
        if "/" in scan_id or scan_id in (".", "..") or not (folder / MODEL_GRID_NAME).is_file():
            skipped.append({"scan_id": scan_id, "reason": f"no {MODEL_GRID_NAME} (explained by an earlier version? "
                                                          "rerun explain with --no-resume)"})
            continue
        paths[scan_id] = folder / MODEL_GRID_NAME
        meta[scan_id] = _scan_metadata(folder, row)
    joined = join_metadata(metadata, meta) if metadata is not None else None

    # Pass 1: features and the t grid, per scan.
    feats: dict[str, np.ndarray] = {}
    tgrid: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    affines: dict[str, np.ndarray] = {}
    for scan_id, path in paths.items():
        try:
            volume, affine = load_model_grid(path)
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for a damaged file
            skipped.append({"scan_id": scan_id, "reason": f"{path.name} unreadable ({type(e).__name__}: {e})"})
            continue
        shapes[scan_id], affines[scan_id] = volume.shape, affine
        feats[scan_id] = spray.features(volume)
        tgrid[scan_id] = groupmaps.block_mean(groupmaps.normalised(volume), groupmaps.t_factor(volume.shape))
    if not shapes:
        raise SettingsError(f"{out}: no scan has a {MODEL_GRID_NAME}; rerun explain (with --no-resume for scans "
                            "explained by an earlier version)")
    grid = Counter(shapes.values()).most_common(1)[0][0]
    for scan_id in [s for s, shape in shapes.items() if shape != grid]:
        skipped.append({"scan_id": scan_id, "reason": f"model grid {list(shapes[scan_id])}, not the run's "
                                                      f"{list(grid)} (a model without a fixed input shape)"})
        for store in (feats, tgrid, shapes):
            store.pop(scan_id)
    timings["read"] = time.perf_counter() - t0
    kept = [r for r in rows if r["scan_id"] in feats]
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in kept:
        by_class.setdefault(row["predicted_class"], []).append(row)
    run_meta = [meta[r["scan_id"]] for r in kept]
    columns = flags.purity_columns(run_meta)
    pooled_shape = tuple(-(-n // f) for n, f in zip(grid, spray.pool_factor(grid), strict=True))

    folder = out / COHORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    members: list[dict[str, Any]] = []
    cluster_rows: list[dict[str, Any]] = []
    assignment: dict[str, str] = {}
    eigen_plots, embed_plots, per_class_json = [], [], {}
    t1 = time.perf_counter()
    for class_name in sorted(by_class):
        class_rows = by_class[class_name]
        ids = [r["scan_id"] for r in class_rows]
        x = np.stack([feats[s] for s in ids])
        result = spray.analyse(x, clusters)
        names = [f"{class_name}-{c}" for c in range(result.k)]
        enriched = [{**r, **meta[r["scan_id"]]} for r in class_rows]
        table = flags.cluster_table(class_name, names, result.labels, enriched, x, pooled_shape,
                                    spray.pool_factor(grid), run_meta, columns)
        cluster_rows.extend(table)
        for n, row in enumerate(enriched):
            assignment[row["scan_id"]] = names[result.labels[n]]
            members.append({"scan_id": row["scan_id"], "predicted_class": class_name,
                            "cluster": names[result.labels[n]], "x": round(float(result.layout[n, 0]), 4),
                            "y": round(float(result.layout[n, 1]), 4),
                            **{p: row.get(p, "") for p in flags.PROBES},
                            **{c: row.get(c, "") for c in columns}})
        flagged = {t["cluster"] for t in table if t["flag"] == "true"}
        eigen_plots.append((class_name, result.eigenvalues, result.k, result.k_from))
        embed_plots.append((class_name, result.layout, result.labels, names, flagged))
        per_class_json[class_name] = {"scans": len(ids), "k": result.k, "k_from": result.k_from,
                                      "neighbours": result.neighbours,
                                      "eigenvalues": [round(float(v), 6) for v in result.eigenvalues]}
    timings["spray"] = time.perf_counter() - t1

    # Pass 2: full-resolution means per cluster and per class.
    t2 = time.perf_counter()
    sums: dict[tuple[str, str], np.ndarray] = {}
    first_affine: dict[tuple[str, str], np.ndarray] = {}
    for row in kept:
        volume = groupmaps.normalised(load_model_grid(paths[row["scan_id"]])[0])
        for key in (("cluster", assignment[row["scan_id"]]), ("class", row["predicted_class"])):
            sums[key] = sums[key] + volume if key in sums else volume.astype(np.float64)
            first_affine.setdefault(key, affines[row["scan_id"]])
    for row in cluster_rows:
        name = row["cluster"]
        mean = (sums["cluster", name] / row["size"]).astype(np.float32)
        save_nifti(folder / f"cluster_{safe_part(name)}_mean.nii.gz", mean, first_affine["cluster", name])
        plot_mean(folder / f"cluster_{safe_part(name)}_mean.png", mean,
                  f"cluster {name}: mean of {row['size']} maps")
    for class_name, class_rows in by_class.items():
        ids = [r["scan_id"] for r in class_rows]
        stem = f"group_{safe_part(class_name)}"
        save_nifti(folder / f"{stem}_mean.nii.gz",
                   (sums["class", class_name] / len(ids)).astype(np.float32), first_affine["class", class_name])
        factor = groupmaps.t_factor(grid)
        stack = np.stack([tgrid[s].ravel() for s in ids])
        t, info = groupmaps.t_test(stack)
        t_shape = tgrid[ids[0]].shape
        save_nifti(folder / f"{stem}_t.nii.gz", t.reshape(t_shape).astype(np.float32),
                   groupmaps.block_affine(first_affine["class", class_name], factor))
        atomic_write_json(folder / f"{stem}_t.json", {
            **info, "class": class_name, "grid": list(t_shape), "block": factor,
            "maps": "each scan's model-grid relevance divided by its total |R|, block-averaged by 'block'",
            "affine_from": "the class's first scan (every scan shares the voxel layout, not the world position)"})
    timings["group_maps"] = time.perf_counter() - t2

    write_csv(folder / "members.csv", members, MEMBER_COLUMNS)
    write_csv(folder / "clusters.csv", cluster_rows,
              [*CLUSTER_COLUMNS, *(f"{k}_{c}" for c in columns for k in ("purity", "value")), "flag", "why"])
    plot_eigengap(folder / "eigengap.png", eigen_plots)
    plot_embedding(folder / "embedding.png", embed_plots)
    timings["total"] = time.perf_counter() - t0
    flagged_names = [r["cluster"] for r in cluster_rows if r["flag"] == "true"]
    atomic_write_json(folder / "cohort.json", {
        "version": __version__, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(), "libraries": _versions(),
        "maps": _which_maps(out),
        "settings": {"clusters": clusters, "pool_size": spray.POOL_SIZE, "feature_grid": list(pooled_shape),
                     "knn": spray.KNN, "eigenvectors": spray.N_EIGEN, "max_clusters": spray.MAX_CLUSTERS,
                     "gap_share": spray.GAP_SHARE, "min_scans": spray.MIN_SCANS, "seed": spray.SEED,
                     "flags": {"outside_share": flags.OUTSIDE_SHARE, "purity": flags.PURITY,
                               "min_cluster": flags.MIN_CLUSTER, "alpha": flags.ALPHA,
                               "max_levels": flags.MAX_LEVELS, "focus_share": flags.FOCUS_SHARE,
                               "focus_min": flags.FOCUS_MIN, "focus_ratio": flags.FOCUS_RATIO},
                     "t_grid_max": groupmaps.T_GRID_MAX, "permutations": groupmaps.PERMUTATIONS},
        "model_grid": list(grid), "scans": len(kept), "classes": per_class_json,
        "flagged": flagged_names, "metadata_columns": columns,
        "metadata": joined.to_json() if joined else None,
        "skipped": skipped, "timings": {k: round(v, 3) for k, v in timings.items()},
    })
    return CohortResult(folder, len(kept), {c: v["k"] for c, v in per_class_json.items()}, flagged_names,
                        skipped, joined.unmatched if joined else [])


def _scan_metadata(folder: Path, row: dict[str, str]) -> dict[str, str]:
    """The scan's metadata.json, or its join keys from the summary row when there is none."""
    try:
        value = json.loads((folder / METADATA_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        value = {}
    base = {"scan_id": row["scan_id"], "source": row.get("source", "")}
    return {**base, **{str(k): str(v) for k, v in value.items()}} if isinstance(value, dict) else base


def _which_maps(out: Path) -> str:
    """Which class each map explains, from the run's settings (the predicted class unless --target said else)."""
    try:
        target = json.loads((out / "run.json").read_text(encoding="utf-8")).get("settings", {}).get("target")
    except (OSError, ValueError, AttributeError):
        target = None
    if target in (None, "predicted", "all"):
        return "relevance for each scan's predicted class"
    return f"relevance for class {target} (the run's --target), grouped by predicted class"


def _versions() -> dict[str, str]:
    import scipy
    import sklearn

    return {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__}
