"""Run hygiene for nightly jobs: a lock on --out, a history of runs, a start line, timely progress lines."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume_identity import write_volume

from mri_lrp import __version__
from mri_lrp.errors import SettingsError
from mri_lrp.pipeline import run_explain
from mri_lrp.pipeline.lock import LOCK_NAME, acquire
from mri_lrp.pipeline.write import ScanWriter
from mri_lrp.progress import Reporter
from mri_lrp.settings import build_settings

ROOT = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from mri_lrp.pipeline.lock import acquire
out = Path(sys.argv[1])
lock = acquire(out, out, "2026-01-02T03:04:05+0000")
print("held", flush=True)
time.sleep(120)
"""


def start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def explain(scans: Path, out: Path, **options: object) -> tuple[int, str]:
    log = io.StringIO()
    settings = build_settings({"scans": [str(scans)], "out": str(out), "workers": 0, **options})
    return run_explain(settings, Reporter(tty=False, stream=log, quiet=bool(options.get("quiet")))), log.getvalue()


def test_a_second_run_on_the_same_out_exits_2_naming_the_holder(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (12, 12, 12), seed=1)
    holder = start_holder(out)
    try:
        res = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(scans), "--out", str(out)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2, res.stderr
    error = [line for line in res.stderr.splitlines() if line.startswith("mri-lrp: error:")]
    assert len(error) == 1
    assert f"process {holder.pid}" in error[0] and "started 2026-01-02T03:04:05+0000" in error[0]
    assert not (out / "summary.csv").exists()


def test_the_lock_of_a_killed_run_is_recovered_and_the_run_goes_on(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (12, 12, 12), seed=1)
    holder = start_holder(out)
    os.kill(holder.pid, signal.SIGKILL)  # as the OOM killer or `scancel --signal=KILL` would
    holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead run's lock is left behind
    code, log = explain(scans, out)
    assert code == 0, log
    assert f"recovered the lock of an earlier run that no longer runs (process {holder.pid}" in log
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


def test_shards_share_one_out_but_one_shard_runs_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = out / "parts"
    first = acquire(out, parts / "shard-0-of-2", "t0")
    second = acquire(out, parts / "shard-1-of-2", "t1")
    try:
        with pytest.raises(SettingsError, match=rf"shard folder .*shard-0-of-2 is in use .*process {os.getpid()}"):
            acquire(out, parts / "shard-0-of-2", "t2")
        with pytest.raises(SettingsError, match="in use by another mri-lrp run .a sharded run"):
            acquire(out, out, "t3")
    finally:
        first.release()
        second.release()
    acquire(out, out, "t4").release()  # all shards done: a plain run may go


def test_every_run_adds_a_history_manifest_and_logs_a_start_line_under_quiet(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (12, 12, 12), seed=1)
    code, log = explain(scans, out, quiet=True, rule="epsilon")
    assert code == 0
    first_line = log.splitlines()[0]
    assert re.search(rf"mri-lrp {re.escape(__version__)} explain: .*rule=\"epsilon\"", first_line)
    assert f'out="{out}"' in first_line and "quiet=true" in first_line
    time.sleep(1.1)  # history files are named by the start second
    code, _ = explain(scans, out, quiet=True, rule="epsilon")
    assert code == 0
    history = sorted((out / "runs").glob("*.json"))
    assert len(history) == 2
    runs = [json.loads(p.read_text()) for p in history]
    assert [r["counts"]["resumed"] for r in runs] == [0, 1]
    assert json.loads((out / "run.json").read_text()) == runs[-1]


def test_the_progress_line_of_a_scan_comes_before_the_next_scan_is_written(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    for n in range(3):
        write_volume(scans / f"s{n}.nii.gz", (12, 12, 12), seed=n)
    log = io.StringIO()
    original = ScanWriter.write

    def logged_write(self: ScanWriter, res):  # type: ignore[no-untyped-def]
        log.write(f"write-start {res.scan.scan_id}\n")
        return original(self, res)

    monkeypatch.setattr(ScanWriter, "write", logged_write)
    settings = build_settings({"scans": [str(scans)], "out": str(out), "workers": 0, "batch_size": "3"})
    assert run_explain(settings, Reporter(tty=False, stream=log)) == 0
    events = []
    for line in log.getvalue().splitlines():
        started, done = re.match(r"write-start (\S+)$", line), re.search(r"\] (\S+) ok \(", line)
        if started or done:
            events.append(("start", started.group(1)) if started else ("done", done.group(1)))  # type: ignore[union-attr]
    assert events == [(e, f"s{n}") for n in range(3) for e in ("start", "done")], log.getvalue()


def test_readme_cron_line_works_under_crons_minimal_environment() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## At night, from cron", 1)[1].split("\n## ", 1)[0]
    block = section.split("```cron", 1)[1].split("```", 1)[0]
    job = next(line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
               and "mri-lrp" in line)
    command = job.split("&&")[-1].split()[0] if "&&" in job else job.split()[5]
    assert command.startswith("/") and command.endswith("/mri-lrp"), job  # cron's PATH is /usr/bin:/bin
    assert "MAILTO" in block and "command -v mri-lrp" in section


def test_the_demo_model_says_so_in_the_log_the_table_and_every_overlay(tmp_path: Path) -> None:
    import csv

    import numpy as np
    from PIL import Image

    from mri_lrp.model.checkpoint import DEMO_NOTICE
    from mri_lrp.render import STAMP_COLOUR

    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (12, 12, 12), seed=1)
    code, log = explain(scans, out, quiet=True)  # a config that forgot its checkpoint
    assert code == 0
    assert sum("DEMO MODEL trained on synthetic heads" in line for line in log.splitlines()) == 1
    with (out / "summary.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert DEMO_NOTICE in row["warnings"]
    png = Image.open(out / "scans" / "a" / "overlay.png")
    assert png.text["Warning"].startswith(DEMO_NOTICE)  # then the 12-voxel volume's input-fitness stamp
    rgb = np.asarray(png.convert("RGB"))
    assert (rgb[0] == STAMP_COLOUR).all() and (rgb[:, -1] == STAMP_COLOUR).all()  # the frame, all round
    assert json.loads((out / "run.json").read_text())["checkpoint"]["demo"] is True


def test_a_plain_state_dict_announces_the_assumed_spec_once_and_is_no_demo(tmp_path: Path) -> None:
    import torch

    from mri_lrp.model.zoo import build_model

    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (32, 32, 32), seed=1)  # the native grid must survive the net's poolings
    write_volume(scans / "b.nii.gz", (32, 32, 32), seed=2)
    weights = tmp_path / "weights.pt"
    torch.save(build_model("cnn3d", num_classes=3).state_dict(), weights)
    code, log = explain(scans, out, checkpoint=str(weights), model="cnn3d", model_kwargs={"num_classes": 3})
    assert code == 0, log
    assumed = [line for line in log.splitlines() if "does not say how its model was trained" in line]
    assert len(assumed) == 1
    assert "on the scan's own grid (shape native, spacing native mm)" in assumed[0]
    assert "zscore intensities" in assumed[0] and "class names class_0, class_1, class_2" in assumed[0]
    assert "DEMO MODEL" not in log
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["checkpoint"]["demo"] is False and manifest["checkpoint"]["assumed"] in assumed[0]
