"""The streaming run behind `mri-lrp explain`: read -> batch -> explain -> write, with resume and shards.

Reading and preprocessing run in worker processes, a bounded number of scans ahead; LRP runs in batches on
the device in this process; per-scan outputs are written by background threads. A scan counts as done only
when its marker file (written last) exists with the run's fingerprint, so a kill at any point loses at most
the scans in flight, and the next run redoes exactly those.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp import __version__
from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import LoadedModel, load_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import ModelInput, ModelSpace, to_model, to_scan
from mri_lrp.outputs import (
    DONE_MARKER,
    FAILURE_COLUMNS,
    SUMMARY_COLUMNS,
    atomic_write_json,
    atomic_write_text,
    read_csv,
    save_nifti,
    write_csv,
)
from mri_lrp.progress import Reporter
from mri_lrp.regions import (
    BY_CLASS_COLUMNS,
    REGION_COLUMNS,
    atlas_partition,
    builtin_partition,
    by_class_table,
    find_mask,
    load_atlas,
    load_mask,
    mask_metrics,
    region_rows,
    top_region,
)
from mri_lrp.render import render_overlay
from mri_lrp.scans import ScanRef, Skipped, discover, read_scan
from mri_lrp.scans.read import content_notes
from mri_lrp.scans.scan import Scan
from mri_lrp.settings import Settings
from mri_lrp.shard import Shard, assign, local_device_from_env, shard_from_env

EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_SCANS = 0, 3, 4
CPU_AUTO_BATCH, CUDA_AUTO_BATCH = 2, 32


@dataclass
class RunStats:
    """Counts and stage timings of one run (what run.json and the closing summary report)."""

    found: int = 0
    in_shard: int = 0
    done: int = 0
    resumed: int = 0
    failed: int = 0
    skipped_files: int = 0
    interrupted: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=lambda: {
        "read": 0.0, "transfer": 0.0, "explain": 0.0, "write": 0.0})

    def add(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


@dataclass
class Prepared:
    """A scan read and turned into model input by a worker, with the worker's time spent."""

    ref: ScanRef
    scan: Scan
    model_input: ModelInput
    seconds: float


@dataclass
class Explained:
    """One scan's model-space relevance (one map per target) and its numbers, ready to be written."""

    prepared: Prepared
    relevance: torch.Tensor            # (T, *model sample shape) or (T, S, ...) for slice models; on CPU
    probs: np.ndarray                  # (K,) scan-level class probabilities
    targets: list[int]
    output_relevance: list[float]
    absorbed: list[float]
    output_abs: list[float]            # Σ |R_out| per target: the conservation error's scale
    seconds: float


def run_explain(settings: Settings, reporter: Reporter) -> int:
    """Run the whole job; returns the exit code. Setup errors raise (the CLI maps them to exit 2)."""
    t_start = time.time()
    stats = RunStats()
    loaded = load_checkpoint(
        settings.checkpoint, model=settings.model, model_kwargs=settings.model_kwargs or None,
        class_names=list(settings.class_names) if settings.class_names else None,
        input_spec=InputSpec.from_dict(settings.input_spec) if settings.input_spec else None,
        trust_checkpoint=settings.trust_checkpoint,
    )
    target = resolve_target(settings.target, loaded.class_names)
    device = resolve_device(settings.device)
    model = loaded.model.to(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(model, **rule_params(settings))
    for w in caught:
        reporter.note(f"warning: {w.message}", always=True)
    if settings.atlas:
        _atlas(settings.atlas, settings.atlas_labels)  # a bad atlas is a setup error, before any scan
    fingerprint = settings.fingerprint(loaded.sha256)

    refs, skipped = discover(list(settings.scans), volume=settings.volume)
    refs, skipped = exclude_own_files(refs, skipped, settings)
    stats.found, stats.skipped_files = len(refs), len(skipped)
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}")
    shard = Shard.parse(settings.shard) if settings.shard else shard_from_env(os.environ)
    if shard is not None:
        mine = set(assign([r.scan_id for r in refs], shard))
        refs = [r for r in refs if r.scan_id in mine]
        reporter.note(f"shard {shard.index}/{shard.count}: {len(refs)} of {stats.found} scans")
    stats.in_shard = len(refs)

    out = Path(settings.out)
    tables_dir = out / "parts" / f"shard-{shard.index}-of-{shard.count}" if shard else out
    tables_dir.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        atomic_write_text(tables_dir / "plan.txt", "".join(f"{r.scan_id}\n" for r in refs))

    todo = [r for r in refs if not (settings.resume and is_done(out / "scans" / r.scan_id, fingerprint))]
    stats.resumed = len(refs) - len(todo)
    if stats.resumed:
        reporter.note(f"resume: {stats.resumed} scans already done with these settings")

    failures: list[dict[str, Any]] = []
    writer = ScanWriter(out, settings, loaded.class_names, loaded.input_spec.dims, fingerprint)
    job = _Job(settings, loaded, explainer, target, device, reporter, stats, writer, failures)
    with _StopOnSignal() as stop:
        job.stop = stop
        job.run(todo)

    summary, regions = collect_results(out, refs, fingerprint)
    write_csv(tables_dir / "summary.csv", summary, SUMMARY_COLUMNS)
    write_csv(tables_dir / "regions.csv", regions, [*REGION_COLUMNS, "target_class"])
    write_csv(tables_dir / "failures.csv", failures, FAILURE_COLUMNS)
    if settings.by_class:
        write_csv(tables_dir / "regions_by_class.csv", by_class_table(summary, regions), BY_CLASS_COLUMNS)
    stats.done = len(summary)
    wall = time.time() - t_start
    atomic_write_json(tables_dir / "run.json",
                      run_manifest(settings, loaded, device, stats, wall, shard, fingerprint))
    reporter.finish(stats, wall)
    if stats.interrupted:
        return 128 + (signal.SIGTERM if stats.interrupted == "SIGTERM" else signal.SIGINT)
    if not refs or (stats.done == 0 and stats.failed and all(f["stage"] == "read" for f in failures)):
        return EXIT_NO_SCANS
    return EXIT_SOME_FAILED if failures else EXIT_OK


def exclude_own_files(refs: list[ScanRef], skipped: list, settings: Settings) -> tuple[list[ScanRef], list]:
    """Masks, atlas and earlier outputs may sit inside the scanned folder: they are inputs of another kind."""
    own = [(Path(p).resolve(), why) for p, why in (
        (settings.masks, "under --masks"), (settings.out, "under --out"), (settings.atlas, "the --atlas image"))
        if p]
    kept = []
    for ref in refs:
        files = [Path(p).resolve() for p in ref.paths]
        why = next((why for root, why in own if files and all(f == root or root in f.parents for f in files)),
                   None)
        if why is None:
            kept.append(ref)
        else:
            skipped.append(Skipped(ref.source, f"{why}, not a scan"))
    return kept, skipped


def rule_params(settings: Settings) -> dict[str, Any]:
    """The Explainer's keyword arguments from the settings."""
    return {
        "rule": settings.rule, "alpha": settings.alpha, "beta": settings.beta, "epsilon": settings.epsilon,
        "gamma": settings.gamma, "composite": settings.composite, "overrides": settings.overrides or None,
    }


def resolve_target(target: str, class_names: list[str]) -> int | str | None:
    """'predicted' -> None, 'all' -> 'all', an index or a class name -> the class index."""
    if target == "predicted":
        return None
    if target == "all":
        return "all"
    if target in class_names:
        return class_names.index(target)
    if target.lstrip("-").isdigit():
        index = int(target)
        if 0 <= index < len(class_names):
            return index
        raise SettingsError(f"--target: class index {index} is out of range (the model has "
                            f"{len(class_names)} classes)")
    raise SettingsError(f"--target: '{target}' is not a class of this model ({', '.join(class_names)})")


def resolve_device(device: str) -> torch.device:
    """'auto' picks this rank's GPU (LOCAL_RANK), any GPU, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(local_device_from_env(os.environ) or "cuda")
        return torch.device("cpu")
    return torch.device(device)


def done_marker(scan_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The scan's marker when it carries this run's fingerprint and every file it lists exists, else None."""
    try:
        marker = json.loads((scan_dir / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files_there = all((scan_dir / name).is_file() for name in marker.get("files", []))
    return marker if marker.get("fingerprint") == fingerprint and files_there else None


def is_done(scan_dir: Path, fingerprint: str) -> bool:
    return done_marker(scan_dir, fingerprint) is not None


def collect_results(out: Path, refs: list[ScanRef], fingerprint: str) -> tuple[list[dict], list[dict]]:
    """Summary and region rows of every done scan of this run's set, in scan order, from their markers."""
    summary: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for ref in refs:
        scan_dir = out / "scans" / ref.scan_id
        marker = done_marker(scan_dir, fingerprint)
        if marker is not None:
            summary.append(marker["summary"])
            regions.extend(read_csv(scan_dir / "regions.csv"))
    return summary, regions


def run_manifest(settings: Settings, loaded: LoadedModel, device: torch.device, stats: RunStats,
                 wall: float, shard: Shard | None, fingerprint: str) -> dict[str, Any]:
    import nibabel
    import pydicom

    busy = stats.stage_seconds["explain"] + stats.stage_seconds["transfer"]
    return {
        "tool": "mri-lrp", "version": __version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "nibabel": nibabel.__version__, "pydicom": pydicom.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
        "settings": settings.to_json(),
        "fingerprint": fingerprint,
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "architecture": loaded.architecture,
                       "classes": loaded.class_names, "input_spec": loaded.input_spec.to_dict()},
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "counts": {"found": stats.found, "in_shard": stats.in_shard, "done": stats.done,
                   "resumed": stats.resumed, "failed": stats.failed, "skipped_files": stats.skipped_files},
        "interrupted": stats.interrupted,
        "seconds": {"wall": round(wall, 3), **{k: round(v, 3) for k, v in stats.stage_seconds.items()},
                    "device_busy_fraction": round(busy / wall, 3) if wall > 0 else None},
    }


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
def _atlas(labels: str, table: str | None) -> Any:
    """The atlas, loaded once per process (writers run in their own processes)."""
    return load_atlas(labels, table)


# --- reading in workers -------------------------------------------------------------------------------

def prepare(ref: ScanRef, spec: InputSpec) -> Prepared:
    """Read one scan and make its model input; runs in a worker process (so: pure, picklable)."""
    t0 = time.perf_counter()
    scan = read_scan(ref)
    try:
        model_input = to_model(scan, spec, "cpu")
    except (ValueError, RuntimeError) as e:
        raise ScanError(ref.source, f"cannot convert to the model's input: {e}", stage="preprocess") from None
    return Prepared(ref, scan, model_input, time.perf_counter() - t0)


def _worker_init() -> None:
    # The parent decides how to stop (Ctrl-C and SLURM's TERM reach the whole process group): it lets the
    # scans in flight finish, then shuts the pools down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def _reader_context() -> multiprocessing.context.BaseContext:
    """Readers fork from a server that has already imported torch and the readers: fast, fork-safe starts."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["mri_lrp.pipeline"])
        return ctx
    return multiprocessing.get_context("spawn")


def prepared_stream(refs: list[ScanRef], spec: InputSpec, workers: int,
                    stop: threading.Event) -> Iterator[tuple[ScanRef, Prepared | ScanError]]:
    """Yield (ref, Prepared or ScanError) in input order, at most a few scans ahead of the consumer."""
    if workers == 0:
        for ref in refs:
            if stop.is_set():
                return
            yield ref, _prepare_or_error(ref, spec)
        return
    ctx = _reader_context()
    ahead = 2 * workers
    pending = deque(refs)
    queue: deque[tuple[ScanRef, cf.Future]] = deque()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    try:
        while queue or pending:
            while pending and len(queue) < ahead and not stop.is_set():
                ref = pending.popleft()
                queue.append((ref, pool.submit(_prepare_or_error, ref, spec)))
            if not queue:
                break
            ref, fut = queue.popleft()
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool:
                # A reader died (killed for memory, or a crash in a decoder): that scan fails, the rest of
                # the queue goes to a fresh pool.
                result = ScanError(ref.location, "the reader process died (out of memory, or a crash in a "
                                   "decoder)", stage="read")
                pending.extendleft(r for r, _ in reversed(queue))
                queue.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
            yield ref, result
            if stop.is_set():
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare_or_error(ref: ScanRef, spec: InputSpec) -> Prepared | ScanError:
    try:
        return prepare(ref, spec)
    except ScanError as e:
        return e
    except MemoryError:
        return ScanError(ref.source, "out of memory while reading", stage="read")
    except Exception as e:  # noqa: BLE001 - any reader bug must cost one scan, not the batch
        return ScanError(ref.source, f"unexpected {type(e).__name__}: {e}", stage="read")


# --- the job: batching, explaining, handing off to writers ------------------------------------------

class _Job:
    def __init__(self, settings: Settings, loaded: LoadedModel, explainer: Explainer, target: int | str | None,
                 device: torch.device, reporter: Reporter, stats: RunStats, writer: ScanWriter,
                 failures: list[dict[str, Any]]) -> None:
        self.settings, self.loaded, self.explainer = settings, loaded, explainer
        self.target, self.device, self.reporter, self.stats = target, device, reporter, stats
        self.writer, self.failures = writer, failures
        self.spec = loaded.input_spec
        fixed = settings.batch_size_value
        self.batch_size = fixed or (CUDA_AUTO_BATCH if device.type == "cuda" else CPU_AUTO_BATCH)
        self.auto_batch = fixed is None
        self.stop: threading.Event = threading.Event()

    def run(self, todo: list[ScanRef]) -> None:
        self.reporter.start(len(todo))
        writes: deque[tuple[Prepared, cf.Future]] = deque()
        with self._writer_pool() as pool:
            def hand_off(results: list[Explained]) -> None:
                for res in results:
                    writes.append((res.prepared, pool.submit(self.writer.write, WriteJob.of(res))))
                while len(writes) > 4:  # bounded: memory stays flat however many scans
                    self._finish_write(*writes.popleft())

            batch: list[Prepared] = []
            for ref, item in prepared_stream(todo, self.spec, self.settings.workers, self.stop):
                if isinstance(item, ScanError):
                    self._fail(ref, item.stage, item.reason)
                    continue
                self.stats.add("read", item.seconds)
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
            while writes:
                self._finish_write(*writes.popleft())
        if self.stop.is_set():
            self.stats.interrupted = self.stop.signal_name  # type: ignore[attr-defined]

    def _writer_pool(self) -> cf.Executor:
        """Writers are processes (rendering and compression hold the GIL), or one thread with --workers 0."""
        if self.settings.workers == 0:
            return cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        return cf.ProcessPoolExecutor(max_workers=2, mp_context=_reader_context(), initializer=_worker_init)

    def _finish_write(self, prepared: Prepared, fut: cf.Future) -> None:
        ref = prepared.ref
        try:
            seconds, status = fut.result()
        except ScanError as e:  # a bad mask: named with its own path, at its own stage
            self._fail(ref, e.stage, e.reason if e.path in (ref.source, ref.location) else str(e))
            return
        except Exception as e:  # noqa: BLE001 - one scan's write error costs only that scan
            self._fail(ref, "write", f"{type(e).__name__}: {e}")
            return
        self.stats.add("write", seconds)
        self.reporter.scan_done(ref.scan_id, status)

    def _fail(self, ref: ScanRef, stage: str, error: str) -> None:
        """Record a failed scan; the log line names it as the user gave it (a series given as the root is '.')."""
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
            seconds = (time.perf_counter() - t0) / len(batch)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                self._fail(batch[0].ref, "explain", "CUDA out of memory")
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
            self._fail(batch[0].ref, "explain", f"{type(e).__name__}: {e}")
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
            results.append(Explained(p, r, probs[i], targets, orel, absb, oabs, seconds + p.seconds))
        return results

    def _explain_slices(self, p: Prepared) -> list[Explained]:
        """A slice model sees the scan's slices as a batch; the scan's class is the mean over slices."""
        t0 = time.perf_counter()
        x_all = p.model_input.tensor
        try:
            logits = torch.cat([self.explainer.logits(self._to_device(chunk)).float().cpu()
                                for chunk in x_all.split(self.batch_size)])
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
            self._fail(p.ref, "explain", "CUDA out of memory")
            return []
        except Exception as e:  # noqa: BLE001 - one scan's failure, not the batch's
            self._fail(p.ref, "explain", f"{type(e).__name__}: {e}")
            return []
        seconds = time.perf_counter() - t0
        self.stats.add("explain", seconds)
        return [Explained(p, torch.stack(maps), probs.double().numpy(), targets, orel, absb, oabs,
                          seconds + p.seconds)]

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        self.stats.add("transfer", time.perf_counter() - t0)
        return x


# --- writing one scan's outputs ---------------------------------------------------------------------

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
            partition = atlas_partition(_atlas(self.settings.atlas, self.settings.atlas_labels), scan)
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


# --- stopping cleanly on SIGINT / SIGTERM (SLURM preemption) ----------------------------------------

class _StopOnSignal:
    """First SIGINT/SIGTERM: stop taking new scans, finish and flush the ones in flight. Second: abort."""

    def __enter__(self) -> threading.Event:
        self.event = threading.Event()
        self.event.signal_name = None  # type: ignore[attr-defined]
        self.previous: dict[int, Callable | int | None] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.signal_name = signal.Signals(signum).name  # type: ignore[attr-defined]
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
