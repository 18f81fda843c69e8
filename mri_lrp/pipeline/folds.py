"""A fold ensemble on the device: each batch, read and preprocessed once, is explained by every fold.

Each fold runs through the single-model path of ``Job`` unchanged (the same batching, out-of-memory halving
and isolation of a scan that breaks a batch), so a fold's map is exactly what a one-checkpoint run of that
fold gives for the same target. With the default target every fold first explains its own prediction; a
fold whose class differs from the ensemble's (the mean of the folds' probabilities) explains that scan again
for the ensemble's class, so the extra work is only where folds disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp.fitness.score import FitnessCheck
from mri_lrp.folds import FoldMaps
from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import LoadedModel
from mri_lrp.model.folds import fold_sources
from mri_lrp.pipeline.batch import Job
from mri_lrp.pipeline.explained import Explained
from mri_lrp.pipeline.read import Prepared
from mri_lrp.pipeline.resume import done_marker
from mri_lrp.scans import ScanRef

Explain = Callable[[Job, list[Prepared]], list[Explained]]


class FoldJob(Job):
    """``Job`` over the folds of an ensemble: one read per scan, every fold explains it."""

    def __init__(self, folds: Sequence[LoadedModel], explainers: Sequence[Explainer], *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.explainers = list(explainers)
        self.sources = fold_sources(folds)
        # Fitness is judged on fold 0 (its feature tap, its reference envelope); the other folds' passes get the
        # model-free checks only, so no fold reads features another fold's pass left behind.
        self.fold_fitness = [self.fitness, *(FitnessCheck(f.model, e) for f, e in zip(folds[1:], explainers[1:],
                                                                                      strict=True))]

    def _explain_volumes(self, batch: list[Prepared]) -> list[Explained]:
        return self._ensemble(batch, Job._explain_volumes)

    def _explain_slices(self, p: Prepared) -> list[Explained]:
        return self._ensemble([p], lambda job, batch: Job._explain_slices(job, batch[0]))

    def _fold(self, k: int, target: int | str | None) -> Job:
        """The single-model job of fold k (sharing this job's counters, pools and failure list)."""
        view = Job.__new__(Job)
        view.__dict__.update(self.__dict__)
        view.explainer, view.target, view.fitness = self.explainers[k], target, self.fold_fitness[k]
        return view

    def _run_fold(self, k: int, target: int | str | None, batch: list[Prepared], explain: Explain
                  ) -> dict[str, Explained]:
        view = self._fold(k, target)
        results = explain(view, batch)
        self.batch_size = min(self.batch_size, view.batch_size)  # a fold that ran out of memory halves it for all
        return {r.prepared.ref.scan_id: r for r in results}

    def _ensemble(self, batch: list[Prepared], explain: Explain) -> list[Explained]:
        per_fold: list[dict[str, Explained]] = []
        for k in range(len(self.explainers)):
            per_fold.append(self._run_fold(k, self.target, batch, explain))
            batch = [p for p in batch if p.ref.scan_id in per_fold[-1]]  # failed in one fold: failed for all
        if self.target is None:  # every fold explains the ensemble's class
            for p in list(batch):
                sid = p.ref.scan_id
                ensemble = int(np.argmax(np.mean([fold[sid].probs for fold in per_fold], axis=0)))
                for fold in (f for f in range(len(per_fold)) if per_fold[f][sid].targets != [ensemble]):
                    again = self._run_fold(fold, ensemble, [p], explain)
                    if sid not in again:
                        batch.remove(p)
                        break
                    per_fold[fold][sid] = again[sid]
        return [self._combine(p, [fold[p.ref.scan_id] for fold in per_fold]) for p in batch]

    def _combine(self, p: Prepared, results: list[Explained]) -> Explained:
        """The ensemble's Explained: mean map and probabilities, each fold's kept beside them."""
        maps = torch.stack([r.relevance for r in results])
        probs = np.stack([r.probs for r in results])
        k = len(results)

        def mean(values: list[list[float]]) -> list[float]:
            return [float(v) for v in np.mean(np.asarray(values, dtype=np.float64), axis=0)]

        return Explained(
            p, maps.double().mean(dim=0).float(), probs.mean(axis=0), list(results[0].targets),
            mean([r.output_relevance for r in results]), mean([r.absorbed for r in results]),
            mean([r.output_abs for r in results]),
            sum(r.seconds for r in results) - (k - 1) * p.seconds,
            results[0].fitness, FoldMaps(maps.numpy(), probs, self.sources),
        )


def fold_rows(out: Path, refs: list[ScanRef], fingerprint: str) -> list[dict[str, Any]]:
    """folds.csv: the fold rows of every done scan of this run's set, from their markers (resumed ones too)."""
    rows: list[dict[str, Any]] = []
    for ref in refs:
        marker = done_marker(out / "scans" / ref.scan_id, fingerprint, list(ref.identity) if ref.identity else None)
        if marker is not None:
            rows.extend(marker.get("folds", []))
    return rows
