"""Writing one scan's outputs (relevance volume, overlay, regions) and, last, its done marker."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mri_lrp.model.transform import ModelSpace, to_scan
from mri_lrp.outputs import DONE_MARKER, atomic_write_json, save_nifti, write_csv
from mri_lrp.regions import (
    REGION_COLUMNS,
    atlas_partition,
    builtin_partition,
    find_mask,
    load_atlas,
    load_mask,
    mask_metrics,
    region_rows,
    top_region,
)
from mri_lrp.render import render_overlay
from mri_lrp.scans.read import content_notes
from mri_lrp.scans.scan import Scan
from mri_lrp.settings import Settings

if TYPE_CHECKING:
    from mri_lrp.pipeline.batch import Explained


@dataclass
class WriteJob:
    """What a writer process needs of an explained scan (no model tensors: cheap to send)."""

    scan: Scan
    space: ModelSpace
    relevance: np.ndarray              # float32 (T, *model sample shape), one map per target
    probs: np.ndarray
    targets: list[int]
    output_relevance: list[float]
    absorbed: list[float]
    output_abs: list[float]            # Σ |R_out| per target: the conservation error's scale
    seconds: float

    notes: tuple[str, ...] = ()        # remarks from preprocessing, for the summary's warnings

    @classmethod
    def of(cls, res: Explained) -> WriteJob:
        p = res.prepared
        return cls(p.scan, p.model_input.space, res.relevance.numpy(), res.probs, res.targets,
                   res.output_relevance, res.absorbed, res.output_abs, res.seconds, p.model_input.notes)


@lru_cache(maxsize=2)
def cached_atlas(labels: str, table: str | None) -> Any:
    """The atlas, loaded once per process (writers run in their own processes)."""
    return load_atlas(labels, table)


class ScanWriter:
    """Writes one scan's files (relevance volume, overlay, regions) and, last, its done marker."""

    def __init__(self, out: Path, settings: Settings, class_names: list[str], dims: int, fingerprint: str) -> None:
        self.out, self.settings, self.class_names, self.dims = out, settings, list(class_names), dims
        self.fingerprint = fingerprint

    def write(self, res: WriteJob) -> tuple[float, str]:
        t0 = time.perf_counter()
        scan, ctx = res.scan, res.space
        names = self.class_names
        scan_dir = self.out / "scans" / scan.scan_id
        scan_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.atlas:
            partition = atlas_partition(cached_atlas(self.settings.atlas, self.settings.atlas_labels), scan)
        else:
            partition = builtin_partition(scan)
        mask = self._mask(scan)
        voxel_ml = float(abs(np.linalg.det(scan.affine[:3, :3]))) / 1000.0
        pred = int(np.argmax(res.probs))
        multi = len(res.targets) > 1
        maps, rows, files = [], [], []
        first: dict[str, Any] = {}
        for n, t in enumerate(res.targets):
            rel = to_scan(torch.from_numpy(res.relevance[n]), ctx).astype(np.float32)
            maps.append(rel)
            rrows = region_rows(scan.scan_id, rel, partition, voxel_ml, mask=mask)
            for row in rrows:
                row["target_class"] = names[t]
            rows.extend(rrows)
            suffix = f"_{_safe(names[t])}" if multi else ""
            render_overlay(
                scan_dir / f"overlay{suffix}.png", scan.data, rel, scan.affine,
                title=f"{scan.scan_id}: predicted {names[pred]} (p={res.probs[pred]:.2f})",
                subtitle=f"relevance for {names[t]} (p={res.probs[t]:.2f}) · {self._rule_text()}",
            )
            files.append(f"overlay{suffix}.png")
            if t == pred or not multi:  # with --target all, the predicted class's map speaks for the scan
                first = {
                    "target_class": "all" if multi else names[t],
                    "target_prob": "" if multi else float(res.probs[t]),
                    "top_region": top_region(rrows),
                    **(mask_metrics(rel, mask, voxel_ml) if mask is not None else {}),
                }
        # Totals cover every map written (all classes with --target all), so they add up with the file.
        total = float(sum(m.sum(dtype=np.float64) for m in maps))
        out_rel, out_abs = float(sum(res.output_relevance)), float(sum(res.output_abs))
        first.update({"output_relevance": out_rel, "relevance_sum": total,
                      "conservation_error": abs(total - out_rel) / out_abs if out_abs > 0 else 0.0,
                      "absorbed": float(sum(res.absorbed))})
        volume = np.stack(maps, axis=-1) if multi else maps[0]
        save_nifti(scan_dir / "relevance.nii.gz", volume, scan.affine)
        files.append("relevance.nii.gz")
        write_csv(scan_dir / "regions.csv", rows, [*REGION_COLUMNS, "target_class"])
        files.append("regions.csv")
        seconds = res.seconds + (time.perf_counter() - t0)
        summary = {
            "scan_id": scan.scan_id, "source": scan.source, "kind": scan.kind,
            "shape": "x".join(str(n) for n in scan.shape),
            "spacing_mm": "x".join(f"{v:.4g}" for v in scan.spacing),
            "predicted_class": names[pred], "predicted_prob": float(res.probs[pred]),
            **first,
            "warnings": "; ".join((*content_notes(scan), *res.notes, *self._model_notes(scan))),
            "status": "ok", "seconds": round(seconds, 3),
        }
        atomic_write_json(scan_dir / DONE_MARKER,
                          {"fingerprint": self.fingerprint, "files": files, "summary": summary})
        return time.perf_counter() - t0, "ok"

    def _model_notes(self, scan: Scan) -> tuple[str, ...]:
        if scan.is_2d and self.dims == 3:
            return ("a single slice fed to a 3D model: the model sees it repeated through its depth, far from "
                    "the volumes it was trained on",)
        return ()

    def _mask(self, scan: Scan) -> np.ndarray | None:
        if not self.settings.masks:
            return None
        path = find_mask(Path(self.settings.masks), scan)
        return None if path is None else load_mask(path, scan)

    def _rule_text(self) -> str:
        s = self.settings
        if s.composite:
            return f"composite {s.composite}, init {s.init}"
        params = {"alphabeta": f"α={s.alpha:g} β={s.beta:g}", "epsilon": f"ε={s.epsilon:g}",
                  "gamma": f"γ={s.gamma:g}"}.get(s.rule, "")
        return f"rule {s.rule} {params}".strip() + f", init {s.init}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)

