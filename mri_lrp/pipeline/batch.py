"""The job's core loop: batch prepared scans, explain them on the device, hand them to the writers."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from functools import partial
from typing import Any

import numpy as np
import torch

from mri_lrp.errors import ScanError, is_disk_full
from mri_lrp.fitness.score import FitnessCheck
from mri_lrp.lrp import Explainer
from mri_lrp.lrp.explain import conservation_note, warm_up_autograd
from mri_lrp.model.checkpoint import LoadedModel
from mri_lrp.pipeline.explained import Explained
from mri_lrp.pipeline.manifest import RunStats
from mri_lrp.pipeline.read import Prepared, prepared_stream, release, worker_init
from mri_lrp.pipeline.stages import plan_stages
from mri_lrp.pipeline.workers import WorkerSet
from mri_lrp.pipeline.write import ScanWriter, WriteJob, write_held
from mri_lrp.progress import Reporter
from mri_lrp.scans import ScanRef
from mri_lrp.settings import Settings

CPU_AUTO_BATCH, CUDA_AUTO_BATCH = 2, 32


class Job:
    def __init__(self, settings: Settings, loaded: LoadedModel, explainer: Explainer, target: int | str | None,
                 device: torch.device, reporter: Reporter, stats: RunStats, writer: ScanWriter,
                 failures: list[dict[str, Any]], fitness: FitnessCheck | None = None) -> None:
        self.settings, self.loaded, self.explainer = settings, loaded, explainer
        self.target, self.device, self.reporter, self.stats = target, device, reporter, stats
        self.writer, self.failures = writer, failures
        # Model-free checks always; with --reference, the reference distances too.
        self.fitness = fitness or FitnessCheck(loaded.model, explainer)
        self.unfit: list[tuple[ScanRef, str]] = []  # left unexplained by --skip-unfit, with the reason
        self.spec = loaded.input_spec
        fixed = settings.batch_size_value
        self.batch_size = fixed or (CUDA_AUTO_BATCH if device.type == "cuda" else CPU_AUTO_BATCH)
        self.auto_batch = fixed is None
        self.plan = plan_stages(settings.workers, device.type)
        stats.stages = self.plan.to_json()
        self.stop: threading.Event = threading.Event()
        self.conservation_noted = False
        self.disk_full = False  # a write found no space left: no further scan is started
        self._lock = threading.RLock()  # writes are recorded from the workers' result threads
        self._written = threading.Condition()  # guards _outstanding: writes submitted and not yet recorded
        self._outstanding = 0
        self._workers: WorkerSet | None = None
        self._inline: cf.ThreadPoolExecutor | None = None

    def _note_conservation(self, res: Explained) -> None:
        """The first scan whose explanation lost or created too much relevance is named in the log, once per run
        (every such scan carries the warning in summary.csv)."""
        if self.conservation_noted:
            return
        note = conservation_note(sum(res.output_relevance), float(res.relevance.double().sum()), sum(res.output_abs))
        if note:
            self.conservation_noted = True
            self.reporter.note(f"warning: {res.prepared.ref.scan_id}: {note} (further scans: see the warnings "
                               f"column of summary.csv)", always=True)

    def run(self, todo: list[ScanRef]) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.plan.torch_threads)  # the cores the workers leave, no more
        try:
            self._run(todo)
        finally:
            torch.set_num_threads(threads)

    def _run(self, todo: list[ScanRef]) -> None:
        self.reporter.start(len(todo))
        # Worker processes read and write (rendering holds the GIL); with --workers 0, one writer thread.
        self._workers = WorkerSet(self.plan.workers, worker_init) if self.plan.workers else None
        self._inline = None if self._workers else cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        try:
            self._stream(todo)
            with self._written:  # every write recorded, retries included
                self._written.wait_for(lambda: self._outstanding == 0)
        finally:
            for pool in (self._workers, self._inline):
                if pool is not None:
                    pool.shutdown()
        if self.stop.is_set():
            self.stats.interrupted = self.stop.signal_name  # type: ignore[attr-defined]

    def _stream(self, todo: list[ScanRef]) -> None:
        def hand_off(results: list[Explained]) -> None:
            for res in results:
                if not self._fit_to_write(res):
                    continue
                self._note_conservation(res)
                self._submit_write(res.prepared, WriteJob.of(res, self.settings.save_model_input))
            with self._written:  # bounded: memory flat in the scan count
                self._written.wait_for(lambda: self._outstanding <= 2 * max(1, self.plan.workers))

        if self._workers is not None:  # while the first scans are read
            threading.Thread(target=warm_up_autograd, name="warm-up", daemon=True).start()
        # Two scans per worker, and one CPU batch more: while the first batch is explained (the slowest, caches
        # are cold) the workers fill the next one instead of waiting. Not a whole GPU batch: scans can be large.
        ahead = 2 * self.plan.workers + CPU_AUTO_BATCH
        batch: list[Prepared] = []
        with closing(prepared_stream(todo, self.spec, self._workers, self.stop, ahead)) as stream:
            for ref, item in stream:
                if isinstance(item, ScanError):
                    self._fail(ref, item.stage, item.reason)
                    continue
                self.stats.add("read", item.seconds)
                refused = self.fitness.refuse(item.model_input)
                if refused:
                    self._drop(item, "preprocess", refused)
                    continue
                unfit = self.settings.skip_unfit and self.fitness.out_before_explaining(item.model_input, item.raw)
                if unfit:
                    self._skip_unfit(item, unfit)
                    continue
                if self.spec.dims == 2:
                    hand_off(self._explain_slices(item))
                    continue
                batch.append(item)
                if len(batch) >= self.batch_size:
                    hand_off(self._explain_volumes(batch))
                    batch = []
                if self.stop.is_set():
                    break
        if batch:
            hand_off(self._explain_volumes(batch))

    def explain_one(self, prepared: Prepared) -> Explained | None:
        """One prepared scan through the same device path as a batch (``explain_scan`` uses it); None when it
        failed, with the failure recorded as in a run."""
        refused = self.fitness.refuse(prepared.model_input)
        if refused:
            self._drop(prepared, "preprocess", refused)
            return None
        results = self._explain_slices(prepared) if self.spec.dims == 2 else self._explain_volumes([prepared])
        return results[0] if results else None

    def _submit_write(self, prepared: Prepared, job: WriteJob, retry: bool = True) -> None:
        """Write in the worker that holds the scan. A finished scan is reported the moment it is written (on a
        pool's result thread), not when the bounded queue next drains; a write whose worker died is sent once
        more, to another worker, which reads the scan again."""
        with self._written:
            self._outstanding += 1
        try:
            if self._workers is not None:  # a retry goes elsewhere: the dead worker's queue may hold its killer
                worker = prepared.worker if retry else (prepared.worker + 1) % len(self._workers)  # type: ignore
                fut = self._workers.submit(worker, write_held, self.writer, job)
            else:
                fut = self._inline.submit(self.writer.write, job)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - a write that cannot even be queued costs its scan, not the run
            self._fail(prepared.ref, "write", f"{type(e).__name__}: {e}")
            self._written_one()
            return
        fut.add_done_callback(partial(self._finish_write, prepared, job, retry))

    def _finish_write(self, prepared: Prepared, job: WriteJob, retry: bool, fut: cf.Future) -> None:
        try:
            if retry and not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool):
                self._submit_write(prepared, job, retry=False)
            else:
                with self._lock:
                    self._record_write(prepared, fut)
        finally:
            self._written_one()

    def _written_one(self) -> None:
        with self._written:
            self._outstanding -= 1
            self._written.notify_all()

    def _explain_failed(self, prepared: Prepared, error: str) -> None:
        """A scan that will not be written: recorded, and forgotten by the worker that holds it."""
        self._drop(prepared, "explain", error)

    def _drop(self, prepared: Prepared, stage: str, error: str) -> None:
        self._fail(prepared.ref, stage, error)
        self._release(prepared)

    def _release(self, prepared: Prepared) -> None:
        """The worker that read a scan that will not be written forgets its voxels."""
        if self._workers is not None and prepared.worker is not None:
            self._workers.submit(prepared.worker, release, prepared.ref.scan_id)

    def _fit_to_write(self, res: Explained) -> bool:
        """Log a scan that is out for the model; with --skip-unfit, leave it unwritten (listed as skipped)."""
        fit = res.fitness
        if fit.get("fitness") != "out":
            return True
        ref = res.prepared.ref
        if not self.settings.skip_unfit:
            self.reporter.note(f"warning: {ref.scan_id}: input unlike the model's inputs: {fit['fitness_reasons']}",
                               always=True)
            return True
        self._skip_unfit(res.prepared, fit["fitness_reasons"])
        return False

    def _skip_unfit(self, prepared: Prepared, reasons: str) -> None:
        """--skip-unfit: no files for this scan; listed as skipped, and forgotten by the worker that holds it."""
        self.unfit.append((prepared.ref, reasons))
        self.reporter.note(f"{prepared.ref.scan_id}: not explained (--skip-unfit): {reasons}", always=True)
        self._release(prepared)

    def _record_write(self, prepared: Prepared, fut: cf.Future) -> None:
        ref = prepared.ref
        try:
            seconds, status = fut.result()
        except ScanError as e:  # a bad mask: named with its own path, at its own stage
            self._fail(ref, e.stage, e.reason if e.path in (ref.source, ref.location) else str(e))
            return
        except BrokenProcessPool:
            self._fail(ref, "write", "the worker process died writing it twice (out of memory?)")
            return
        except Exception as e:  # noqa: BLE001 - one scan's write error costs only that scan
            if is_disk_full(e):  # ... unless the disk is full: the next scans would fail alike
                self.disk_full = True
                self.stop.set()
            self._fail(ref, "write", f"{type(e).__name__}: {e}")
            return
        self.stats.written += 1
        self.stats.add("write", seconds)
        self.reporter.scan_done(ref.scan_id, status)

    def _fail(self, ref: ScanRef, stage: str, error: str) -> None:
        """Record a failed scan; the log line names it as the user gave it (a series given as the root is '.')."""
        with self._lock:
            self.stats.failed += 1
            self.failures.append({"scan_id": ref.scan_id, "source": ref.source, "stage": stage, "error": error})
            named = error.startswith(f"{ref.location}: ")  # a substring test takes 'pixel spacing' for 'spacing'
            self.reporter.scan_failed(ref.scan_id, error if named else f"{ref.location}: {error}")

    def _explain_volumes(self, batch: list[Prepared]) -> list[Explained]:
        """Explain volumes in one device batch; halve on CUDA out-of-memory, isolate a scan that breaks it."""
        try:
            t0 = time.perf_counter()
            x = self._to_device(torch.stack([p.model_input.tensor for p in batch]))
            exp = self.explainer(x, target=self.target, init=self.settings.init,
                                 class_names=self.loaded.class_names)
            rel = exp.relevance.detach().to("cpu", torch.float32)
            probs = exp.probs.detach().to("cpu", torch.float64).numpy()
            tgt = exp.target.detach().cpu()
            out_rel = exp.output_relevance.detach().cpu().double()
            absorbed = exp.absorbed.detach().cpu().double()
            out_abs = exp.output_relevance_abs.detach().cpu().double()
            features = self.fitness.features(len(batch))
            seconds = (time.perf_counter() - t0) / len(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                self._explain_failed(batch[0], "CUDA out of memory")
                return []
            torch.cuda.empty_cache()
            if self.auto_batch:
                self.batch_size = max(1, len(batch) // 2)
                self.reporter.note(f"CUDA out of memory: batch size now {self.batch_size}")
            half = len(batch) // 2
            return self._explain_volumes(batch[:half]) + self._explain_volumes(batch[half:])
        except Exception as e:  # noqa: BLE001 - find the one scan that breaks the batch
            if len(batch) > 1:
                return [r for p in batch for r in self._explain_volumes([p])]
            self._explain_failed(batch[0], f"{type(e).__name__}: {e}")
            return []
        self.stats.add("explain", seconds * len(batch))
        results = []
        for i, p in enumerate(batch):
            if self.target == "all":
                targets = [int(t) for t in tgt[i]]
                r = rel[i]
                orel = [float(v) for v in out_rel.view(len(batch), -1)[i]]
                absb = [float(v) for v in absorbed.view(len(batch), -1)[i]]
                oabs = [float(v) for v in out_abs.view(len(batch), -1)[i]]
            else:
                targets, r = [int(tgt[i])], rel[i].unsqueeze(0)
                orel, absb, oabs = [float(out_rel[i])], [float(absorbed[i])], [float(out_abs[i])]
            fit = self.fitness.assess(p.model_input, p.raw, None if features is None else features[i])
            results.append(Explained(p, r, probs[i], targets, orel, absb, oabs, seconds + p.seconds, fit))
        return results

    def _explain_slices(self, p: Prepared) -> list[Explained]:
        """A slice model sees the scan's slices as a batch; the scan's class is the mean over slices."""
        t0 = time.perf_counter()
        x_all = p.model_input.tensor
        try:
            parts, features = [], []
            for chunk in x_all.split(self.batch_size):
                parts.append(self.explainer.logits(self._to_device(chunk)).float().cpu())
                features.append(self.fitness.features(chunk.shape[0]))
            logits = torch.cat(parts)
            seen = None if any(f is None for f in features) else np.concatenate(features).mean(axis=0)
            probs = torch.softmax(logits, dim=1).mean(dim=0)
            if self.target == "all":
                targets = list(range(len(self.loaded.class_names)))
            elif self.target is None:
                targets = [int(probs.argmax())]
            else:
                targets = [int(self.target)]
            maps, orel, absb, oabs = [], [], [], []
            for t in targets:
                parts, o, a, b = [], 0.0, 0.0, 0.0
                for chunk in x_all.split(self.batch_size):
                    tt = torch.full((chunk.shape[0],), t, dtype=torch.long, device=self.device)
                    exp = self.explainer(self._to_device(chunk), target=tt, init=self.settings.init)
                    parts.append(exp.relevance.detach().to("cpu", torch.float32))
                    o += float(exp.output_relevance.sum())
                    a += float(exp.absorbed.sum())
                    b += float(exp.output_relevance_abs.sum())
                maps.append(torch.cat(parts))
                orel.append(o)
                absb.append(a)
                oabs.append(b)
        except torch.cuda.OutOfMemoryError:
            if self.batch_size > 1:
                torch.cuda.empty_cache()
                self.batch_size = max(1, self.batch_size // 2)
                self.reporter.note(f"CUDA out of memory: batch size now {self.batch_size}")
                return self._explain_slices(p)
            self._explain_failed(p, "CUDA out of memory")
            return []
        except Exception as e:  # noqa: BLE001 - one scan's failure, not the batch's
            self._explain_failed(p, f"{type(e).__name__}: {e}")
            return []
        seconds = time.perf_counter() - t0
        self.stats.add("explain", seconds)
        return [Explained(p, torch.stack(maps), probs.double().numpy(), targets, orel, absb, oabs,
                          seconds + p.seconds, self.fitness.assess(p.model_input, p.raw, seen))]

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        self.stats.add("transfer", time.perf_counter() - t0)
        return x

