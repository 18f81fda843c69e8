"""Reading and preprocessing in worker processes, a bounded number of scans ahead of the consumer."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mri_lrp.errors import ScanError
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import ModelInput, to_model
from mri_lrp.pipeline.workers import worker_context
from mri_lrp.scans import ScanRef, read_scan
from mri_lrp.scans.scan import Scan


@dataclass
class Prepared:
    """A scan read and turned into model input by a worker, with the worker's time spent."""

    ref: ScanRef
    scan: Scan
    model_input: ModelInput
    seconds: float

def prepare(ref: ScanRef, spec: InputSpec) -> Prepared:
    """Read one scan and make its model input; runs in a worker process (so: pure, picklable)."""
    t0 = time.perf_counter()
    scan = read_scan(ref)
    try:
        model_input = to_model(scan, spec, "cpu")
    except (ValueError, RuntimeError) as e:
        raise ScanError(ref.source, f"cannot convert to the model's input: {e}", stage="preprocess") from None
    return Prepared(ref, scan, model_input, time.perf_counter() - t0)


def worker_init() -> None:
    # The parent decides how to stop (Ctrl-C and SLURM's TERM reach the whole process group): it lets the
    # scans in flight finish, then shuts the pools down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def prepared_stream(refs: list[ScanRef], spec: InputSpec, workers: int, stop: threading.Event,
                    ahead: int | None = None) -> Iterator[tuple[ScanRef, Prepared | ScanError]]:
    """Yield (ref, Prepared or ScanError) in input order, at most ``ahead`` (default 2 per worker) scans ahead
    of the consumer."""
    if workers == 0:
        for ref in refs:
            if stop.is_set():
                return
            yield ref, _prepare_or_error(ref, spec)
        return
    ctx = worker_context()
    ahead = ahead or 2 * workers
    pending = deque(refs)
    queue: deque[tuple[ScanRef, cf.Future]] = deque()
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init)
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
                pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init)
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

