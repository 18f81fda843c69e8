"""Writing one scan's outputs (relevance volume, overlay, regions) and, last, its done marker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp import __version__
from mri_lrp.cohort.probes import outside_head_note
from mri_lrp.cohort.scanfacts import write_cohort_files
from mri_lrp.folds import FoldMaps
from mri_lrp.lrp.explain import conservation_note
from mri_lrp.lrp.rules import RULES_VERSION
from mri_lrp.model.transform import ModelSpace, model_volume, outside_relevance, to_scan, to_scan_channels
from mri_lrp.outputs import DONE_MARKER, NiftiMeta, atomic_write_json, save_nifti, write_csv
from mri_lrp.pipeline.explained import Explained
from mri_lrp.pipeline.fold_outputs import scan_maps, write_folds
from mri_lrp.pipeline.layout import Layout
from mri_lrp.pipeline.read import HELD
from mri_lrp.regions import (
    REGION_COLUMNS,
    atlas_partition,
    builtin_partition,
    find_mask,
    load_atlas,
    load_mask,
    mask_metrics,
    mask_partition,
    region_rows,
    top_region,
)
from mri_lrp.render import render_channels, render_overlay
from mri_lrp.report.preview import PREVIEW_NAME, write_preview
from mri_lrp.scans import ScanRef, read_scan
from mri_lrp.scans.read import content_notes
from mri_lrp.scans.scan import Scan
from mri_lrp.settings import Settings

MODEL_INPUT_NAME = "model_input.nii.gz"


@dataclass
class WriteJob:
    """What a writer needs of an explained scan (no model tensors: cheap to send).

    ``scan`` is None when the worker that read the scan holds it (``write_held`` finds it there, or reads it
    again from ``ref`` when that worker has since been replaced)."""

    scan: Scan | None
    ref: ScanRef
    space: ModelSpace
    relevance: np.ndarray              # float32 (T, *model sample shape), one map per target
    probs: np.ndarray
    targets: list[int]
    output_relevance: list[float]
    absorbed: list[float]
    output_abs: list[float]            # Σ |R_out| per target: the conservation error's scale
    seconds: float

    notes: tuple[str, ...] = ()        # remarks from preprocessing, for the summary's warnings
    identity: list[dict[str, Any]] = field(default_factory=list)  # the input files, recorded in the done marker
    dicom: dict[str, str] = field(default_factory=dict)           # DICOM facts from discovery, for the tables
    model_input: np.ndarray | None = None  # (X, Y, Z, C) model tensor, only with --save-model-input
    fitness: dict[str, Any] = field(default_factory=dict)  # fitness.score.FITNESS_COLUMNS
    folds: FoldMaps | None = None          # a fold ensemble: each fold's maps (relevance is their mean)

    @classmethod
    def of(cls, res: Explained, with_input: bool = False) -> WriteJob:
        p = res.prepared
        seen = model_volume(p.model_input.tensor, p.model_input.space) if with_input else None
        return cls(p.scan, p.ref, p.model_input.space, res.relevance.numpy(), res.probs, res.targets,
                   res.output_relevance, res.absorbed, res.output_abs, res.seconds, p.model_input.notes,
                   list(p.ref.identity), {**p.ref.dicom, "series_description": p.ref.series_description}, seen,
                   res.fitness, folds=res.folds)


def write_held(writer: ScanWriter, job: WriteJob) -> tuple[float, str]:
    """In a worker: write a scan's outputs from the scan this worker read and kept."""
    scan = HELD.pop(job.ref.scan_id, None) or read_scan(job.ref)
    return writer.write(replace(job, scan=scan))


@lru_cache(maxsize=2)
def cached_atlas(labels: str, table: str | None) -> Any:
    """The atlas, loaded once per process (writers run in their own processes)."""
    return load_atlas(labels, table)


class ScanWriter:
    """Writes one scan's files (relevance volume, overlay, regions) and, last, its done marker."""

    def __init__(self, out: Path, settings: Settings, class_names: list[str], dims: int, fingerprint: str,
                 layout: Layout | None = None, model_sha256: str = "", stamp: str = "") -> None:
        self.out, self.settings, self.class_names, self.dims = out, settings, list(class_names), dims
        self.fingerprint, self.model_sha256 = fingerprint, model_sha256
        self.layout = layout or Layout()
        self.stamp = stamp  # e.g. the demo-model notice: on every overlay and in every row's warnings

    def write(self, res: WriteJob) -> tuple[float, str]:
        t0 = time.perf_counter()
        scan, ctx = res.scan, res.space
        names = self.class_names
        where = self.layout.files(self.out, scan.scan_id, scan.source)
        scan_dir = where.folder
        scan_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.atlas:
            partition = atlas_partition(cached_atlas(self.settings.atlas, self.settings.atlas_labels), scan)
        else:
            partition = builtin_partition(scan)
        mask = self._mask(scan)
        mask_part = mask_partition(mask) if mask is not None else None  # built once for every map
        voxel_ml = float(abs(np.linalg.det(scan.affine[:3, :3]))) / 1000.0
        pred = int(np.argmax(res.probs))
        multi = len(res.targets) > 1
        maps, rows, files, vmax, total = [], [], [], 0.0, 0.0
        first: dict[str, Any] = {}
        stamp = "; ".join(filter(None, [self.stamp, fitness_stamp(res.fitness)]))
        per_channel: list[np.ndarray] = []  # a multi-channel case: (C, I, J, K) per target
        fold_maps = None if res.folds is None else scan_maps(res.folds, ctx, scan.channels)  # (k, T, I, J, K)
        for n, t in enumerate(res.targets):
            if scan.channels:
                per_channel.append(channel_maps(res.relevance[n], ctx))
                rel = per_channel[-1].sum(axis=0, dtype=np.float64).astype(np.float32)
            elif fold_maps is not None:  # the folds' mean, from their maps on the scan grid (each mapped back once)
                rel = fold_maps[:, n].mean(axis=0, dtype=np.float64).astype(np.float32)
            else:
                rel = to_scan(torch.from_numpy(res.relevance[n]), ctx).astype(np.float32)
            maps.append(rel)
            rrows = region_rows(scan.scan_id, rel, partition, voxel_ml, mask=mask_part)
            for row in rrows:
                row["target_class"], row["channel"] = names[t], "all"
            rows.extend(rrows)
            if scan.channels:
                rows.extend(channel_rows(scan, per_channel[-1], partition, voxel_ml, mask_part, names[t]))
            total += sum(float(r["relevance_sum"]) for r in rrows if r["partition"] == partition.kind)
            suffix = f"_{_safe(names[t])}" if multi else ""
            draw = partial(render_channels, channels=scan.channels, channel_relevance=per_channel[-1]) \
                if scan.channels else render_overlay
            vmax = max(vmax, draw(
                where.overlay(suffix.lstrip("_")), scan.data, rel, scan.affine,
                title=f"{scan.scan_id}: predicted {names[pred]} (p={res.probs[pred]:.2f})", stamp=stamp,
                subtitle=f"relevance for {names[t]} (p={res.probs[t]:.2f}) · {self._rule_text()}",
                mask=mask, image=scan.kind == "image",
            ))
            files.append(where.listed(where.overlay(suffix.lstrip("_"))))
            if t == pred or not multi:  # with --target all, the predicted class's map speaks for the scan
                first = {
                    "target_class": "all" if multi else names[t],
                    "target_prob": "" if multi else float(res.probs[t]),
                    "top_region": top_region(rrows),
                    **(mask_metrics(rel, mask, voxel_ml, rrows) if mask is not None else {}),
                    **(channel_shares(scan.channels, per_channel[-1]) if scan.channels else {}),
                }
        # Totals cover every map written (all classes with --target all), so they add up with the file.
        out_rel, out_abs = float(sum(res.output_relevance)), float(sum(res.output_abs))
        first.update({"output_relevance": out_rel, "relevance_sum": total,
                      "conservation_error": abs(total - out_rel) / out_abs if out_abs > 0 else 0.0,
                      "absorbed": float(sum(res.absorbed))})
        volume = np.stack(maps, axis=-1) if multi else maps[0]
        save_nifti(where.relevance(), volume, scan.affine, self._nifti_meta(scan, vmax))
        files.append(where.listed(where.relevance()))
        for c, channel in enumerate(scan.channels):  # relevance.nii.gz is the sum of these
            own = [p[c] for p in per_channel]
            save_nifti(where.relevance(channel), np.stack(own, axis=-1) if multi else own[0], scan.affine,
                       self._nifti_meta(scan, vmax))
            files.append(where.listed(where.relevance(channel)))
        if res.model_input is not None:  # what the network saw, on the model grid
            save_nifti(scan_dir / MODEL_INPUT_NAME, res.model_input, ctx.affine)
            files.append(MODEL_INPUT_NAME)
        atomic_write_json(where.sidecar(), self._sidecar([names[t] for t in res.targets]))
        files.append(where.listed(where.sidecar()))
        shown = res.targets.index(pred) if pred in res.targets else 0  # the viewer shows the predicted class
        write_preview(scan_dir / PREVIEW_NAME, scan.volume, maps[shown], scan.affine, world=scan.kind != "image")
        files.append(PREVIEW_NAME)
        cohort_files, probes = write_cohort_files(scan_dir, scan, res.relevance[shown], ctx, maps[shown],
                                                  names[res.targets[shown]])
        files.extend(cohort_files)
        fold = None if fold_maps is None else write_folds(
            res.folds, fold_maps, scan, where, partition, mask_part, voxel_ml, res.targets, names,
            self._nifti_meta(scan, vmax), where.overlay(_safe(names[res.targets[shown]]) if multi else ""), vmax)
        if fold is not None:  # the mean's rows, then each fold's
            rows = [*({**row, "fold": "mean"} for row in rows), *fold.region_rows]
            files.extend(fold.files)
        write_csv(scan_dir / "regions.csv", rows, [*REGION_COLUMNS, "target_class"])
        files.append("regions.csv")
        seconds = res.seconds + (time.perf_counter() - t0)
        summary = {
            "scan_id": scan.scan_id, "source": scan.source, "kind": scan.kind,
            "shape": "x".join(str(n) for n in scan.shape),
            "spacing_mm": "x".join(f"{v:.4g}" for v in scan.spacing),
            **{f"shape_{a}": n for a, n in zip("xyz", scan.shape, strict=True)},
            **{f"spacing_{a}": round(float(v), 6) for a, v in zip("xyz", scan.spacing, strict=True)},
            "predicted_class": names[pred], "predicted_prob": float(res.probs[pred]),
            **first, **probes,
            **res.fitness,
            **(fold.summary if fold is not None else {}),
            "warnings": "; ".join((*content_notes(scan), *res.notes, *self._model_notes(scan),
                                   *filter(None, [fitness_warning(res.fitness), outside_head_note(probes)]),
                                   *filter(None, [conservation_note(out_rel, total, out_abs),
                                                  padding_note(res.relevance, ctx, out_abs)]),
                                   *(fold.warnings if fold is not None else ()))),
            "status": "ok", "seconds": round(seconds, 3),
            **self._join_columns(res.dicom),
        }
        atomic_write_json(scan_dir / DONE_MARKER, {"fingerprint": self.fingerprint, "rules_version": RULES_VERSION,
                                                   "inputs": res.identity, "files": files, "summary": summary,
                                                   **({"folds": fold.rows} if fold is not None else {})})
        return time.perf_counter() - t0, "ok"

    def _nifti_meta(self, scan: Scan, vmax: float) -> NiftiMeta:
        """The source's qform/sform codes (DICOM: scanner), an estimate intent, the rule, a ±vmax window."""
        if scan.kind == "dicom":
            qcode, scode = 1, 1
        else:
            qcode, scode = (int(c) if c.isdigit() else 2
                            for c in (scan.metadata.get(k, "") for k in ("qform_code", "sform_code")))
        return NiftiMeta(qform_code=qcode, sform_code=scode, intent="estimate", intent_name="LRP relevance",
                         descrip=f"LRP {self._rule_text(ascii_only=True)}", cal=(-vmax, vmax))

    def _sidecar(self, targets: list[str]) -> dict[str, Any]:
        """relevance.json: what the volume holds, for readers that do not parse ``descrip``; ``class_names``
        has one name per volume (one for a 3D map, every class in volume order for ``--target all``)."""
        s = self.settings
        return {
            "rule": s.composite or s.rule,
            "parameters": {"alpha": s.alpha, "beta": s.beta, "epsilon": s.epsilon, "gamma": s.gamma,
                           "composite": s.composite, "init": s.init, "overrides": dict(s.overrides or {})},
            "target": s.target,
            "class_names": targets,
            "model_sha256": self.model_sha256,
            "version": __version__,
        }

    def _join_columns(self, dicom: dict[str, str]) -> dict[str, str]:
        """What joins a row back to the PACS: series facts, and the UIDs only with --keep-uids (never patient
        name, ID or birth date)."""
        cols = {"modality": dicom.get("modality", ""), "series_description": dicom.get("series_description", ""),
                "series_number": dicom.get("series_number", ""), "protocol": dicom.get("protocol", "")}
        if self.settings.keep_uids:
            cols.update(study_uid=dicom.get("study_uid", ""), series_uid=dicom.get("series_uid", ""))
        return cols

    def _model_notes(self, scan: Scan) -> tuple[str, ...]:
        if self.stamp:
            return (self.stamp, *self._shape_notes(scan))
        return self._shape_notes(scan)

    def _shape_notes(self, scan: Scan) -> tuple[str, ...]:
        if scan.is_2d and self.dims == 3:
            return ("a single slice fed to a 3D model: the model sees it repeated through its depth, far from "
                    "the volumes it was trained on",)
        return ()

    def _mask(self, scan: Scan) -> np.ndarray | None:
        if not self.settings.masks:
            return None
        path = find_mask(Path(self.settings.masks), scan)
        return None if path is None else load_mask(path, scan)

    def _rule_text(self, ascii_only: bool = False) -> str:
        s = self.settings
        if s.composite:
            return f"composite {s.composite}, init {s.init}"
        a, b, e, g = ("alpha", "beta", "eps", "gamma") if ascii_only else ("α", "β", "ε", "γ")
        params = {"alphabeta": f"{a}={s.alpha:g} {b}={s.beta:g}", "epsilon": f"{e}={s.epsilon:g}",
                  "gamma": f"{g}={s.gamma:g}"}.get(s.rule, "")
        return f"rule {s.rule} {params}".strip() + f", init {s.init}"


def channel_maps(relevance: np.ndarray, space: ModelSpace) -> np.ndarray:
    """A case's model-space relevance as one (C, I, J, K) map per channel on the case's grid."""
    return np.asarray(to_scan_channels(torch.from_numpy(relevance), space), dtype=np.float32)


def channel_rows(scan: Scan, per: np.ndarray, partition: Any, voxel_ml: float, mask_part: Any,
                 target: str) -> list[dict[str, Any]]:
    """The region rows of each channel's own map (after the summed rows, whose channel is 'all')."""
    rows = []
    for name, rel in zip(scan.channels, per, strict=True):
        for row in region_rows(scan.scan_id, rel, partition, voxel_ml, mask=mask_part):
            row["target_class"], row["channel"] = target, name
            rows.append(row)
    return rows


def channel_shares(channels: tuple[str, ...], per: np.ndarray) -> dict[str, float]:
    """share_<channel>: each channel's part of the scan's signed total (they add up to 1; 0 when it is 0)."""
    sums = per.reshape(len(channels), -1).sum(axis=1, dtype=np.float64)
    total = float(sums.sum())
    return {f"share_{c}": float(v / total) if total != 0.0 else 0.0 for c, v in zip(channels, sums, strict=True)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def padding_note(relevance: np.ndarray, space: ModelSpace, output_abs: float) -> str:
    """A remark when relevance fell on zero padding past the scan (no scan voxel holds it), or ""."""
    outside = sum(outside_relevance(torch.from_numpy(r), space) for r in relevance)
    if output_abs <= 0 or abs(outside) <= 1e-3 * output_abs:
        return ""
    return (f"{abs(outside) / output_abs:.1%} of the relevance lies on zero padding past the scan (the model grid "
            "is larger than the scan's field of view) and is in no voxel of the relevance map")


def fitness_warning(fit: dict[str, Any]) -> str:
    """The summary warning of a scan whose input is unlike the model's (fitness out or doubtful), or ""."""
    if fit.get("fitness") == "out":
        return f"input fitness out: {fit['fitness_reasons']} (do not trust this prediction or its heatmap)"
    if fit.get("fitness") == "doubtful":
        return f"input fitness doubtful: {fit['fitness_reasons']}"
    return ""


def fitness_stamp(fit: dict[str, Any]) -> str:
    """The overlay's stamp for a scan that is out for the model, or ""."""
    return "INPUT UNLIKE THE MODEL'S: do not trust" if fit.get("fitness") == "out" else ""
