"""How many processes and threads each stage gets: readers, the LRP loop, writers, sized from the cores.

Per 128³ scan on one CPU core, writing (mapping back, regions, overlay, files) costs about as much as LRP on
the CPU and several times the reading, and on a GPU the LRP loop itself needs little more than one core to
launch kernels. So the cores this process may run on (its affinity mask, which SLURM and containers set, not
the machine's count) go to the readers the user asked for, then the writers, and what is left to torch's
intra-op threads on the CPU. No stage is given threads that would have to share a core with another stage's
busy process: torch's OpenMP threads collapse when a core they spin on is taken.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

MAX_WRITERS = 32


@dataclass(frozen=True)
class StagePlan:
    cores: int
    readers: int          # reader processes (0: read inline in the main process)
    writers: int          # writer processes (0: one writer thread in the main process)
    torch_threads: int    # intra-op threads of the LRP loop in the main process

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity where the OS has one, else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_stages(readers: int, device_type: str, cores: int | None = None) -> StagePlan:
    """Stage sizes for ``readers`` reader processes on ``cores`` cores (default: the affinity mask).

    On a GPU the LRP loop keeps one core (two threads for the host side of the batch) and every other core not
    taken by a reader writes. On the CPU half the cores write (writing is the larger share of the work) and
    torch gets the cores that neither readers nor writers take, at least one thread. ``readers == 0`` keeps
    everything in one process (one writer thread), for debugging and for tests.
    """
    cores = available_cores() if cores is None else max(1, cores)
    if readers == 0:
        return StagePlan(cores, 0, 0, max(1, cores - 1) if device_type == "cpu" else min(2, cores))
    spare = max(0, cores - readers)
    if device_type == "cpu":
        # At least two writers wherever there are two cores: writer processes do not spin when they share a
        # core, so the OS can balance them against the LRP loop; torch's threads get only cores left free.
        writers = min(MAX_WRITERS, max(2 if cores >= 2 else 1, cores // 2))
        threads = max(1, cores - readers - writers)
    else:
        writers = min(MAX_WRITERS, max(1, spare - 1))
        threads = min(2, max(1, cores - readers - writers))
    return StagePlan(cores, readers, writers, threads)
