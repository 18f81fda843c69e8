"""How many worker processes and torch threads a run gets, sized from the cores it may use.

Each worker process reads scans and, once they are explained, writes those same scans' outputs, so a scan's
voxels never cross a process boundary (they used to be pickled through two pipes, reader to main to
writer). Per 128³ scan on one CPU core, writing (mapping back, regions, overlay, files) costs about as much
as LRP on the CPU and twice the reading, and on a GPU the LRP loop itself needs little more than one core to
launch kernels. So the cores this process may run on (its affinity mask, which SLURM and containers set, not
the machine's count) go to the workers, at least as many as the user asked for, and what is left to torch's
intra-op threads on the CPU. No stage is given threads that would have to share a core with another stage's
busy process: torch's OpenMP threads collapse when a core they spin on is taken.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

MAX_WORKERS = 32


@dataclass(frozen=True)
class StagePlan:
    cores: int
    workers: int          # processes that read and write (0: everything in the main process)
    torch_threads: int    # intra-op threads of the LRP loop in the main process

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity where the OS has one, else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_stages(workers: int, device_type: str, cores: int | None = None) -> StagePlan:
    """Stage sizes for at least ``workers`` worker processes on ``cores`` cores (default: the affinity mask).

    On a GPU the LRP loop keeps one core and every other core runs a worker. On the CPU half the cores run
    workers (reading and writing are the larger share of the work), at least two wherever there are two
    cores (workers do not spin when they share a core, so the OS balances them against the LRP loop), and
    torch gets the cores the workers leave, at least one thread. ``workers == 0`` keeps everything in one
    process, for debugging and for tests.
    """
    cores = available_cores() if cores is None else max(1, cores)
    if workers == 0:
        return StagePlan(cores, 0, max(1, cores - 1) if device_type == "cpu" else min(2, cores))
    if device_type == "cpu":
        planned = max(2 if cores >= 2 else 1, cores // 2)
    else:
        planned = max(1, cores - 1)
    n = min(MAX_WORKERS, max(workers, planned))
    threads = max(1, cores - n) if device_type == "cpu" else min(2, max(1, cores - n))
    return StagePlan(cores, n, threads)
