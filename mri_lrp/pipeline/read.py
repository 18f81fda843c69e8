"""Reading and preprocessing in worker processes, a bounded number of scans ahead of the consumer.

A worker keeps the scans it read (their voxels) until the same worker writes their outputs: only the model
input crosses to the main process, and only the relevance comes back.
"""

from __future__ import annotations

import concurrent.futures as cf
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace

import torch

from mri_lrp.errors import ScanError
from mri_lrp.fitness.checks import raw_stats
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import ModelInput, to_model
from mri_lrp.pipeline.workers import WorkerSet
from mri_lrp.scans import ScanRef, read_scan
from mri_lrp.scans.scan import Scan


@dataclass
class Prepared:
    """A scan read and turned into model input, with the time spent on it.

    ``scan`` is None when the scan stays in the worker process that read it (``worker``), to be written there.
    """

    ref: ScanRef
    scan: Scan | None
    model_input: ModelInput
    seconds: float
    worker: int | None = None
    raw: dict[str, float] = field(default_factory=dict)  # the stored values' range (fitness.checks.raw_stats)


# In a worker process: the scans read here whose outputs are still to be written here, by scan_id.
HELD: dict[str, Scan] = {}


def prepare(ref: ScanRef, spec: InputSpec) -> Prepared:
    """Read one scan and make its model input."""
    t0 = time.perf_counter()
    scan = read_scan(ref)
    try:
        model_input = to_model(scan, spec, "cpu")
    except (ValueError, RuntimeError) as e:
        raise ScanError(ref.source, f"cannot convert to the model's input: {e}", stage="preprocess") from None
    return Prepared(ref, scan, model_input, time.perf_counter() - t0, raw=raw_stats(scan.data))


def worker_init() -> None:
    # The parent decides how to stop (Ctrl-C and SLURM's TERM reach the whole process group): it lets the
    # scans in flight finish, then shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def prepare_and_hold(ref: ScanRef, spec: InputSpec) -> Prepared | ScanError:
    """In a worker: prepare the scan and keep it here; what goes back is the model input."""
    result = prepare_or_error(ref, spec)
    if isinstance(result, ScanError):
        return result
    HELD[ref.scan_id] = result.scan  # type: ignore[assignment]
    return replace(result, scan=None)


def release(scan_id: str) -> None:
    """In a worker: forget a held scan whose outputs will not be written (its explanation failed)."""
    HELD.pop(scan_id, None)


def prepared_stream(refs: list[ScanRef], spec: InputSpec, workers: WorkerSet | None, stop: threading.Event,
                    ahead: int) -> Iterator[tuple[ScanRef, Prepared | ScanError]]:
    """Yield (ref, Prepared or ScanError) in input order, at most ``ahead`` scans ahead of the consumer; with
    no workers, read in this process."""
    if workers is None:
        for ref in refs:
            if stop.is_set():
                return
            yield ref, prepare_or_error(ref, spec)
        return
    pending = deque(refs)
    queue: deque[tuple[ScanRef, int, cf.Future]] = deque()
    strikes: set[str] = set()  # scans that were the next read of a worker when it died
    try:
        while queue or pending:
            while pending and len(queue) < ahead and not stop.is_set():
                queue.append(_submit(workers, pending.popleft(), spec))
            if not queue:
                break
            ref, worker, fut = queue[0]
            try:
                result = fut.result()
            except BrokenProcessPool:
                # The worker died (killed for memory, a crash in a decoder, or while writing another scan): the
                # reads queued there are spread over the workers again, so that the one that killed it shares
                # no queue with the others; a scan that was the next read at two deaths fails.
                if ref.scan_id in strikes:
                    result = ScanError(ref.location, "the worker process died reading it (out of memory, or a "
                                       "crash in a decoder)", stage="read")
                else:
                    strikes.add(ref.scan_id)
                    queue = deque(_submit(workers, r, spec) if w == worker else (r, w, f) for r, w, f in queue)
                    continue
            queue.popleft()
            if isinstance(result, Prepared):
                result.worker = worker
            yield ref, result
            if stop.is_set():
                break
    finally:
        for _, _, fut in queue:  # reads not started; their workers still finish the writes queued
            fut.cancel()


def _submit(workers: WorkerSet, ref: ScanRef, spec: InputSpec) -> tuple[ScanRef, int, cf.Future]:
    worker = workers.next_worker()
    return ref, worker, workers.submit(worker, prepare_and_hold, ref, spec)


def prepare_or_error(ref: ScanRef, spec: InputSpec) -> Prepared | ScanError:
    try:
        return prepare(ref, spec)
    except ScanError as e:
        return e
    except MemoryError:
        return ScanError(ref.source, "out of memory while reading", stage="read")
    except Exception as e:  # noqa: BLE001 - any reader bug must cost one scan, not the batch
        return ScanError(ref.source, f"unexpected {type(e).__name__}: {e}", stage="read")
