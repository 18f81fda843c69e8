"""A throw-away single-node SLURM cluster for tests: munged + slurmctld + slurmd with state in a temp folder.

Needs root and Debian's packages (installed with apt when missing). Every wait is bounded, and ``stop``
ends exactly the daemons this harness started, by PID, so a failing test cannot leave a cluster behind
or hang CI. ``unavailable_reason()`` says why the cluster cannot run here (used to skip with a reason).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin")


class ClusterError(RuntimeError):
    """The cluster did not come up (or a command against it failed); the message carries the logs' tail."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def install_packages(timeout: float = 150.0) -> str | None:
    """Install the SLURM and munge packages when missing (all apt calls within ``timeout``); else why not."""
    if all(_which(b) for b in _BINARIES):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if _which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    deadline = time.monotonic() + timeout
    try:
        result = _run(command, timeout, env)
        if result.returncode != 0:  # stale package lists: refresh once and retry
            _run(["apt-get", "update"], max(1.0, deadline - time.monotonic()), env)
            result = _run(command, max(1.0, deadline - time.monotonic()), env)
    except subprocess.TimeoutExpired:
        return f"apt-get could not install {' '.join(PACKAGES)} within {timeout:.0f} s"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}"
    missing = [b for b in _BINARIES if _which(b) is None]
    return f"installed packages lack {', '.join(missing)}" if missing else None


def unavailable_reason() -> str | None:
    """None when a cluster can be started here, else why not (not root, no apt, install failed)."""
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (munged and slurmd run as root)"
    return install_packages()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(check, timeout: float, what: str, logs: list[Path]) -> None:
    """Poll ``check`` until it is true; on timeout raise with the logs' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tails = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in logs)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


class SlurmCluster:
    """One node (this machine, at 127.0.0.1) in one partition; use as a context manager."""

    def __init__(self, root: Path, budget: float = 300.0) -> None:
        self.root = root
        self.deadline = time.monotonic() + budget
        self.conf = root / "slurm.conf"
        self.socket = root / "munge" / "munge.socket"
        self.node = socket.gethostname().split(".")[0]
        self.pids: dict[str, int] = {}
        self.env: dict[str, str] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and slurmd, and wait until the node is idle."""
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._start_munge(timeout)
        self._write_conf()
        self.env = {"SLURM_CONF": str(self.conf)}
        self._start_daemon("slurmctld", [_which("slurmctld") or "slurmctld", "-f", str(self.conf)], timeout)
        self._start_daemon(
            "slurmd", [_which("slurmd") or "slurmd", "-f", str(self.conf), "-N", self.node], timeout
        )
        _wait_for(self._node_idle, timeout, "the node to be idle in sinfo", self._logs())

    def stop(self, timeout: float = 15.0) -> None:
        """Cancel leftover jobs, then end the daemons this harness started (by PID), newest first."""
        if "slurmctld" in self.pids and "slurmd" in self.pids:
            try:  # let slurmd end the jobs' processes before it goes away itself
                self.run(["scancel", "--full", "--user", "root"], 10)
                _wait_for(self._queue_empty, timeout, "cancelled jobs to end", [])
            except (subprocess.TimeoutExpired, OSError, ClusterError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _terminate(pid, timeout)

    # --- pieces --------------------------------------------------------------------------------
    def _logs(self) -> list[Path]:
        return sorted((self.root / "log").glob("*.log"))

    def _start_munge(self, timeout: float) -> None:
        munge_dir = self.root / "munge"
        munge_dir.chmod(0o755)  # munged refuses a socket folder others can write to; clients must reach it
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        pid_file = munge_dir / "munged.pid"
        args = [
            _which("munged") or "munged",
            f"--key-file={key}",
            f"--socket={self.socket}",
            f"--pid-file={pid_file}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
            "--force",
        ]
        result = _run(args, timeout)
        if result.returncode != 0:
            raise ClusterError(f"munged did not start: {result.stderr.strip() or result.stdout.strip()}")
        _wait_for(lambda: _read_pid(pid_file) is not None, timeout, "munged's pid file", self._logs())
        self.pids["munged"] = _read_pid(pid_file)
        _wait_for(self.socket.exists, timeout, "munged's socket", self._logs())

    def _node_line(self) -> str:
        """This machine as ``slurmd -C`` sees it (CPUs, sockets, cores, threads, RealMemory)."""
        result = _run([_which("slurmd") or "slurmd", "-C"], 30)
        for line in result.stdout.splitlines():
            if line.startswith("NodeName="):
                fields = [f for f in line.split() if not f.startswith(("NodeName=", "UpTime="))]
                return " ".join(fields)
        raise ClusterError(f"slurmd -C printed no node line: {result.stdout.strip()} {result.stderr.strip()}")

    def _write_conf(self) -> None:
        log, state = self.root / "log", self.root / "state"
        lines = [
            "ClusterName=mrilrptest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={state / 'slurmctld.pid'}",
            f"SlurmdPidFile={state / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "MinJobAge=5",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {self._node_line()} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemon(self, name: str, args: list[str], timeout: float) -> None:
        pid_file = self.root / "state" / f"{name}.pid"
        result = _run(args, timeout, {**os.environ, "SLURM_CONF": str(self.conf)})
        if result.returncode != 0:
            raise ClusterError(f"{name} did not start: {result.stderr.strip()}\n{_tail(self._log(name))}")
        _wait_for(lambda: _read_pid(pid_file) is not None, timeout, f"{name}'s pid file", self._logs())
        self.pids[name] = _read_pid(pid_file)

    def _log(self, name: str) -> Path:
        return self.root / "log" / f"{name}.log"

    def _node_idle(self) -> bool:
        try:
            result = self.run(["sinfo", "--noheader", "--nodes", self.node, "--format", "%t"], timeout=10)
        except (subprocess.TimeoutExpired, ClusterError):
            return False
        return result.stdout.strip() == "idle"

    def time_left(self, cap: float = 150.0) -> float:
        """Seconds the next wait may take: at most ``cap`` and never past the overall budget."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ClusterError("the cluster's time budget is spent")
        return min(cap, left)

    def _queue_empty(self) -> bool:
        try:
            result = self.run(["squeue", "--noheader"], timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0 and not result.stdout.strip()

    # --- client commands -----------------------------------------------------------------------
    def run(
        self, args: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; raises on timeout.

        ``env`` replaces this process's environment (jobs inherit it); SLURM_CONF is always set.
        """
        binary = _which(args[0]) or args[0]
        return _run([binary, *args[1:]], timeout, {**(os.environ if env is None else env), **self.env})

    def sbatch_wait(self, args: list[str], timeout: float, env: dict[str, str] | None = None) -> int:
        """``sbatch --wait`` a job and return its exit code; cancels the job when it overruns ``timeout``."""
        name = f"mrilrp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            result = self.run(["sbatch", "--wait", f"--job-name={name}", *args], timeout, env)
        except subprocess.TimeoutExpired:
            self.run(["scancel", f"--name={name}"], 10)
            raise ClusterError(f"sbatch {' '.join(args)} did not finish within {timeout:.0f} s") from None
        if result.returncode != 0 and not result.stdout.startswith("Submitted"):
            raise ClusterError(f"sbatch {' '.join(args)} failed: {result.stderr.strip()}")
        return result.returncode


def _read_pid(path: Path) -> int | None:
    """The PID a daemon wrote, or None while the file is absent or half-written."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a daemon's zombie (it is not our child, but be safe) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; ignores a process that is already gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
