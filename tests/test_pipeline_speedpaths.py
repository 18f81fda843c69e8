"""The pipeline's stage sizes follow the cores it may use, and its fast paths write what the slow ones did."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mri_lrp.pipeline.stages import StagePlan, available_cores, plan_stages


@pytest.mark.parametrize(("workers", "device", "cores", "want"), [
    (2, "cpu", 2, StagePlan(2, 2, 1)),        # this kind of VM: two workers to balance, one torch thread
    (1, "cpu", 2, StagePlan(2, 2, 1)),        # at least what was asked, at least two where there are two cores
    (2, "cpu", 16, StagePlan(16, 8, 8)),      # half the cores read and write, torch gets what is left
    (12, "cpu", 16, StagePlan(16, 12, 4)),    # more were asked for
    (2, "cuda", 16, StagePlan(16, 15, 1)),    # a GPU node: the loop keeps one core, the rest read and write
    (4, "cuda", 64, StagePlan(64, 32, 2)),    # workers capped; the loop gets two threads back
    (0, "cpu", 2, StagePlan(2, 0, 1)),        # --workers 0: everything in one process
])
def test_stage_sizes_follow_the_cores(workers: int, device: str, cores: int, want: StagePlan) -> None:
    assert plan_stages(workers, device, cores) == want


def test_torch_threads_never_share_a_core_with_workers() -> None:
    for cores in range(1, 65):
        for workers in (1, 2, 4):
            for device in ("cpu", "cuda"):
                plan = plan_stages(workers, device, cores)
                assert plan.workers >= workers and plan.torch_threads >= 1
                assert plan.torch_threads <= max(1, cores - plan.workers)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_available_cores_is_the_affinity_mask_not_the_machine() -> None:
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from mri_lrp.pipeline.stages import available_cores; print(available_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "1"
    assert available_cores() == len(os.sched_getaffinity(0))


def test_png_writer_matches_pillows_pixels_on_an_overlay(tmp_path) -> None:
    from PIL import Image

    from mri_lrp.render import compose_overlay, write_png

    rng = np.random.default_rng(2)
    scan = rng.random((20, 24, 16)).astype(np.float32) * 100
    relevance = rng.standard_normal((20, 24, 16)).astype(np.float32)
    overlay = compose_overlay(scan, relevance, np.diag([2.0, 2.0, 3.0, 1.0]), title="t")
    write_png(tmp_path / "o.png", overlay.rgb)
    with Image.open(tmp_path / "o.png") as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), overlay.rgb)


@pytest.mark.parametrize(("args", "starts"), [
    (["explain", "scans/"], True),
    (["explain", "scans/", "--workers", "4"], True),
    (["explain", "scans/", "--workers", "0"], False),
    (["explain", "scans/", "-j", "0"], False),
    (["explain", "scans/", "--workers=0"], False),
    (["explain", "scans/", "--dry-run"], False),
    (["explain", "--help"], False),
    (["inspect", "scans/"], False),
    (["--version"], False),
    ([], False),
])
def test_entry_point_starts_the_worker_server_only_for_runs_with_workers(args: list[str], starts: bool) -> None:
    from mri_lrp.launch import starts_workers

    assert starts_workers(args) is starts


def test_worker_server_and_entry_point_import_without_torch() -> None:
    """What the entry point loads before the worker server starts must not import torch (it would serialise
    the two sets of imports again)."""
    code = "import sys, mri_lrp.launch, mri_lrp.pipeline.workers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_console_entry_point_keeps_the_commands_exit_status_and_output(tmp_path) -> None:
    """The entry point ends the process itself (no module teardown): status and output must survive that."""
    out = subprocess.run([sys.executable, "-m", "mri_lrp", "--version"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("mri-lrp ")
    out = subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "missing: no such file or folder" in out.stderr
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "mri_lrp", "explain", str(tmp_path / "empty"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 4 and (tmp_path / "out" / "run.json").is_file(), out.stderr
