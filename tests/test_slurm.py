"""The SLURM recipe in configs/slurm/ against a real single-node SLURM started on this machine.

An array job over the sample scans, merged, must give the single-process run's tables; a shard whose
work is lost and resubmitted alone must complete the merge; submit.sh's dependent merge must run after
an irregular array. Skips (with the reason) without root or when SLURM cannot be installed. The scripts'
argument handling is also checked without SLURM, against a stand-in sbatch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mri_lrp.shard import Shard

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "configs" / "slurm"
SAMPLES = REPO / "sample_scans" / "t1"
MRI_LRP = str(Path(sys.executable).with_name("mri-lrp"))
# the same options for every run (array tasks get their thread count from the job script's OMP_NUM_THREADS)
EXPLAIN_ARGS = ["--device", "cpu", "--masks", str(SAMPLES / "masks")]
SBATCH_ARGS = ["--cpus-per-task=1", "--mem=512M", "--gres=none", "--time=10:00"]
TIMING_COLUMNS = {"seconds"}
SHARD_VARIABLES = ("SLURM_ARRAY_", "MRI_LRP_ARRAY", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
BUDGET = 300.0  # seconds for everything after the install; every wait takes at most what is left


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from slurm_cluster import SlurmCluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    with SlurmCluster(root, budget=BUDGET) as running:
        yield running


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The jobs' working folder (their logs go to logs/ in it) and every run's output."""
    path = tmp_path_factory.mktemp("jobs")
    path.chmod(0o755)
    return path


def explain_env() -> dict[str, str]:
    """This environment without any shard of its own (CI may itself run inside a SLURM job or torchrun)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SHARD_VARIABLES)}
    return {**inherited, "MRI_LRP": MRI_LRP, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def single_run(cluster, work: Path) -> Path:
    """The reference: one process over every sample scan."""
    out = work / "single"
    result = subprocess.run(
        [MRI_LRP, "explain", str(SAMPLES), "--out", str(out), *EXPLAIN_ARGS],
        capture_output=True, text=True, timeout=cluster.time_left(240), env=explain_env(), check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def read_rows(path: Path, drop: set[str] = frozenset()) -> list[dict[str, str]]:
    """A table's rows without the given columns, sorted by scan_id (stable: region order is kept)."""
    with path.open(newline="") as handle:
        rows = [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]
    return sorted(rows, key=lambda row: row["scan_id"])


def same_cell(a: str, b: str) -> bool:
    """Equal text, or numbers equal up to float32 rounding.

    Reader workers hand scans over in the order they finish, so batches (and the order of float32 sums)
    can differ between runs; conservation_error, a residue of about 1e-7, then differs in its last digits.
    """
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6)
    except ValueError:
        return False


def assert_same_tables(merged: Path, single: Path) -> None:
    for table, drop in (("summary.csv", TIMING_COLUMNS), ("regions.csv", set()), ("failures.csv", set())):
        got, expected = read_rows(merged / table, drop), read_rows(single / table, drop)
        assert [row["scan_id"] for row in got] == [row["scan_id"] for row in expected], table
        for row, reference in zip(got, expected, strict=True):
            assert row.keys() == reference.keys(), table
            differing = {k: (row[k], reference[k]) for k in row if not same_cell(row[k], reference[k])}
            assert not differing, f"{table} {row['scan_id']}: {differing}"


def sbatch_explain(cluster, work: Path, out: Path, array: str, env: dict[str, str] | None = None) -> int:
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    args = [f"--array={array}", *SBATCH_ARGS, f"--output={logs}/explain-%A_%a.log", f"--chdir={work}",
            str(SLURM_DIR / "explain-array.sbatch"), str(SAMPLES), str(out), *EXPLAIN_ARGS]
    return cluster.sbatch_wait(args, cluster.time_left(), {**explain_env(), **(env or {})})


def merge_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MRI_LRP, "merge", *args], capture_output=True, text=True, timeout=60, check=False)


def job_logs(work: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((work / "logs").glob("*.log")))


@pytest.fixture(scope="module")
def array_run(cluster, work: Path) -> Path:
    """``sbatch --array=0-2 --wait`` of the example job script over the sample scans."""
    out = work / "array"
    rc = sbatch_explain(cluster, work, out, "0-2")
    assert rc == 0, job_logs(work)
    return out


@pytest.mark.slow
def test_array_tasks_each_write_one_disjoint_shard(array_run: Path, single_run: Path) -> None:
    parts = sorted(p.name for p in (array_run / "parts").iterdir())
    assert parts == [Shard(i, 3).part_name for i in range(3)]
    plans = [(array_run / "parts" / name / "plan.txt").read_text().split() for name in parts]
    every = [scan_id for plan in plans for scan_id in plan]
    assert all(plans) and len(every) == len(set(every))
    assert set(every) == {row["scan_id"] for row in read_rows(single_run / "summary.csv")}


@pytest.mark.slow
def test_merge_job_gives_the_single_run_tables(
    cluster, work: Path, array_run: Path, single_run: Path
) -> None:
    logs = work / "logs"
    rc = cluster.sbatch_wait(
        [*SBATCH_ARGS, f"--output={logs}/merge-%j.log", str(SLURM_DIR / "merge.sbatch"), str(array_run)],
        cluster.time_left(), explain_env(),
    )
    assert rc == 0, job_logs(work)
    assert json.loads((array_run / "run.json").read_text())["complete"] is True
    assert_same_tables(array_run, single_run)


@pytest.mark.slow
def test_lost_shard_resubmitted_alone_completes_the_merge(
    cluster, work: Path, array_run: Path, single_run: Path
) -> None:
    out = work / "preempted"
    shutil.copytree(array_run, out, symlinks=True)
    lost = out / "parts" / Shard(1, 3).part_name
    for scan_id in (lost / "plan.txt").read_text().split():
        shutil.rmtree(out / "scans" / scan_id, ignore_errors=True)
    shutil.rmtree(lost)
    for name in ("summary.csv", "regions.csv", "failures.csv", "run.json"):
        (out / name).unlink(missing_ok=True)

    gap = merge_cli(str(out), "--out", str(out))
    assert gap.returncode == 3 and "1/3" in gap.stdout, gap.stdout + gap.stderr

    # resubmitted as a one-task array; MRI_LRP_ARRAY says which shard of the original array it was
    rc = sbatch_explain(cluster, work, out, "1", env={"MRI_LRP_ARRAY": "0-2"})
    assert rc == 0, job_logs(work)
    assert sorted(p.name for p in (out / "parts").iterdir()) == [Shard(i, 3).part_name for i in range(3)]
    done = merge_cli(str(out), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_tables(out, single_run)


@pytest.mark.slow
def test_submit_script_runs_an_irregular_array_then_the_dependent_merge(cluster, work: Path) -> None:
    subset = work / "subset"
    subset.mkdir()
    chosen = sorted(SAMPLES.glob("*.nii.gz"))[:3]  # one scan per task
    for path in chosen:
        shutil.copy(path, subset / path.name)
    out = work / "submitted"
    options = [*SBATCH_ARGS, f"--chdir={work}", f"--output={work / 'logs'}/%x-%j.log"]
    submitted = cluster.run(
        ["bash", str(SLURM_DIR / "submit.sh"), *options, "0,4,9", str(subset), str(out), "--device", "cpu"],
        timeout=30, env=explain_env(),
    )
    assert submitted.returncode == 0, submitted.stderr
    merge_job = submitted.stdout.split()[-1]

    wait = cluster.time_left()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        queue = cluster.run(["squeue", "--noheader", f"--jobs={merge_job}", "--format=%T"], timeout=10)
        if not queue.stdout.strip() and (out / "run.json").is_file():
            break
        time.sleep(1)
    else:
        cluster.run(["scancel", merge_job], timeout=10)
        pytest.fail(f"merge job {merge_job} did not finish within {wait:.0f} s\n{job_logs(work)}")

    run = json.loads((out / "run.json").read_text())
    assert run["merged"] is True and run["complete"] is True, run
    assert [part["shard"] for part in run["parts"]] == ["0/3", "1/3", "2/3"]  # tasks 0, 4, 9
    assert len(read_rows(out / "summary.csv")) == len(chosen)


# --- without SLURM: the scripts' own logic ----------------------------------------------------------
@pytest.mark.parametrize("script", ["explain-array.sbatch", "merge.sbatch", "submit.sh"])
def test_job_scripts_without_arguments_print_usage_and_exit_2(script: str) -> None:
    result = subprocess.run(["bash", str(SLURM_DIR / script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_submit_script_names_the_array_and_chains_the_merge_on_the_array_job(tmp_path: Path) -> None:
    record = tmp_path / "calls"
    fake = tmp_path / "sbatch"
    fake.write_text(
        "#!/bin/bash\n"
        f'echo "MRI_LRP_ARRAY=${{MRI_LRP_ARRAY:-}} $*" >> {record}\n'
        'if [[ "$*" == *--array=* ]]; then echo "101;cluster"; else echo 102; fi\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(SLURM_DIR / "submit.sh"), "--partition=gpu", "0,4,9", "/data/scans", "/scratch/out",
         "--rule", "epsilon"],
        capture_output=True, text=True, timeout=30, env=env,
    )
    assert result.returncode == 0, result.stderr
    explain, merge = record.read_text().splitlines()
    assert explain == (f"MRI_LRP_ARRAY=0,4,9 --parsable --partition=gpu --array=0,4,9 "
                       f"{SLURM_DIR}/explain-array.sbatch /data/scans /scratch/out --rule epsilon")
    assert merge.endswith(
        f"--parsable --partition=gpu --dependency=afterany:101 {SLURM_DIR}/merge.sbatch /scratch/out"
    )
    assert result.stdout.strip() == "explain array job 101, merge job 102"
