"""Where a run's wall time goes: the CPU of each process of a command's tree, in half-second steps.

    python benchmarks/timeline.py [--step 0.5] -- mri-lrp explain SCANS --checkpoint X --out OUT ...

Starts the command, samples /proc every 50 ms for the command's process and all its descendants, and prints,
per step, the CPU seconds of the main process, the workers' fork server and the workers (every other
descendant), and how many cores were busy. Idle steps show what waits on what: a run on two cores is as fast as
it can be when both are busy from its first step to its last. Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    kids[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except OSError:
                pass
    return kids


def _tree(root: int) -> list[int]:
    kids, out = _children(), [root]
    for pid in out:
        out.extend(kids.get(pid, []))
    return out


def _ticks_and_command(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline") as f:
            command = f.read().replace("\0", " ")
    except OSError:
        return None
    return int(fields[11]) + int(fields[12]), command


def sample(command: list[str], step: float) -> tuple[float, dict[int, collections.Counter]]:
    """Run ``command``; CPU ticks per role per step, and the wall time to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last: dict[int, int] = {}
    roles: dict[int, str] = {}
    steps: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    while proc.poll() is None:
        now = time.perf_counter() - t0
        for pid in _tree(proc.pid):
            seen = _ticks_and_command(pid)
            if seen is None:
                continue
            ticks, cmd = seen
            if pid not in roles:
                server = "forkserver" in cmd and "server" not in roles.values()
                roles[pid] = "main" if pid == proc.pid else "server" if server else "workers"
            steps[int(now / step)][roles[pid]] += ticks - last.get(pid, 0)
            last[pid] = ticks
        time.sleep(0.05)
    return time.perf_counter() - t0, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=float, default=0.5, help="seconds per line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    wall, steps = sample(command, args.step)
    totals: collections.Counter = collections.Counter()
    print(f"{'t (s)':>6} {'main':>6} {'server':>7} {'workers':>8} {'cores busy':>11}")
    for n in sorted(steps):
        row = steps[n]
        totals.update(row)
        cpu = {k: row.get(k, 0) / TICK for k in ("main", "server", "workers")}
        print(f"{n * args.step:6.1f} {cpu['main']:6.2f} {cpu['server']:7.2f} {cpu['workers']:8.2f} "
              f"{sum(cpu.values()) / args.step:11.2f}")
    cpu = {k: totals.get(k, 0) / TICK for k in ("main", "server", "workers")}
    print(f"wall {wall:.2f} s to the main process's exit; CPU s: main {cpu['main']:.2f}, server "
          f"{cpu['server']:.2f}, workers {cpu['workers']:.2f}, total {sum(cpu.values()):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
