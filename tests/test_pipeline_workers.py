"""Worker processes read a scan and write its outputs: one that dies costs at most the scan that killed it.

The deaths are real: a ``sitecustomize`` on the run's PYTHONPATH (imported by every interpreter the run
starts, the workers' fork server included) makes the worker handling one named scan exit on the spot, as the
OOM killer or a crashing decoder would.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp.outputs import DONE_MARKER

SITE = '''
import os, sys
if not any(a.endswith("pytest") for a in sys.argv[:1]):
    from pathlib import Path
    from mri_lrp.pipeline import read, write

    CRASH, ONCE = os.environ.get("CRASH_SCAN", ""), os.environ.get("CRASH_ONCE", "")

    def dies(scan_id):
        if scan_id != CRASH:
            return False
        if ONCE:  # the first time only, as a worker killed for memory by another job's peak would
            flag = Path(ONCE)
            if flag.exists():
                return False
            flag.touch()
        return True

    if os.environ.get("CRASH_WHEN") == "read":
        _prepare = read.prepare
        def prepare(ref, spec):
            if dies(ref.scan_id):
                os._exit(9)
            return _prepare(ref, spec)
        read.prepare = prepare
    else:
        _write = write.ScanWriter.write
        def scan_write(self, job):
            if dies(job.scan.scan_id):
                os._exit(9)
            return _write(self, job)
        write.ScanWriter.write = scan_write
'''


def write_scans(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij"))
    for i in range(n):
        data = np.exp(-3 * (grid**2).sum(0)) * 1000 + np.random.default_rng(i).normal(0, 20, (24,) * 3)
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), folder / f"s{i}.nii.gz")


def run(tmp_path: Path, when: str, once: bool) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_scans(scans, 6)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "CRASH_SCAN": "s2", "CRASH_WHEN": when, "CRASH_ONCE": str(tmp_path / "crashed") if once else ""}
    proc = subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(scans), "--out", str(out),
                           "--workers", "2", "--batch-size", "2"], env=env, capture_output=True, text=True,
                          timeout=300)
    return proc, out


def outcome(out: Path) -> tuple[set[str], dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        done = {row["scan_id"] for row in csv.DictReader(f)}
    with open(out / "failures.csv", newline="") as f:
        failed = {row["scan_id"]: f"{row['stage']}: {row['error']}" for row in csv.DictReader(f)}
    return done, failed


@pytest.mark.parametrize("when", ["read", "write"])
def test_a_worker_killed_once_costs_no_scan(tmp_path: Path, when: str) -> None:
    proc, out = run(tmp_path, when, once=True)
    assert (tmp_path / "crashed").exists(), "the worker was not killed"
    assert proc.returncode == 0, proc.stderr
    done, failed = outcome(out)
    assert done == {f"s{i}" for i in range(6)} and not failed
    for i in range(6):  # every scan whole: its marker lists files that exist
        marker = json.loads((out / "scans" / f"s{i}" / DONE_MARKER).read_text())
        assert all((out / "scans" / f"s{i}" / name).is_file() for name in marker["files"])
    # ... and each written from its own voxels: the same maps as a run in one process with no deaths.
    inline = tmp_path / "inline"
    subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(tmp_path / "scans"), "--out", str(inline),
                    "--workers", "0", "--batch-size", "2"], capture_output=True, text=True, timeout=300, check=True)
    for i in range(6):
        got, want = (nib.load(root / "scans" / f"s{i}" / "relevance.nii.gz") for root in (out, inline))
        np.testing.assert_array_equal(got.affine, want.affine)
        np.testing.assert_allclose(got.get_fdata(), want.get_fdata(), rtol=1e-5,
                                   atol=1e-7 * np.abs(want.get_fdata()).max())
        # The regions come from the scan's own voxels (its head mask): the held scan, or the one read again.
        got_rows, want_rows = (list(csv.DictReader(open(root / "scans" / f"s{i}" / "regions.csv", newline="")))
                               for root in (out, inline))
        assert [(r["region_name"], r["voxels"]) for r in got_rows] == \
            [(r["region_name"], r["voxels"]) for r in want_rows]


@pytest.mark.parametrize(("when", "stage"), [("read", "read"), ("write", "write")])
def test_a_scan_that_kills_every_worker_fails_alone_with_the_reason(tmp_path: Path, when: str, stage: str) -> None:
    proc, out = run(tmp_path, when, once=False)
    assert proc.returncode == 3, proc.stderr
    done, failed = outcome(out)
    assert done == {f"s{i}" for i in range(6)} - {"s2"}
    assert list(failed) == ["s2"] and failed["s2"].startswith(f"{stage}: ") and "died" in failed["s2"]
    assert "s2" in proc.stderr and "died" in proc.stderr and "Traceback" not in proc.stderr
