"""End-to-end speed of `mri-lrp explain` against the naive sequential script, on generated 128³ NIfTI heads.

    python benchmarks/pipeline_speed.py [--device cpu|cuda] [--n 16] [--size 128] [--model-grid 64]
                                        [--workers N] [--batch-size auto|N] [--data DIR] [--json OUT]
                                        [--repeats N] [--memory 16,64] [--costs]

Writes ``--n`` phantom heads of ``--size``³ voxels at 1.5 mm (`mri_lrp.phantoms`, the four classes in turn,
stored orientations mixed) as float32 .nii.gz, and one checkpoint of the zoo's ``cnn3d`` (seeded weights,
non-trivial BatchNorm statistics) whose input is ``--model-grid``³ covering the same field of view, RAS,
z-scored. Both sides get exactly these files and this checkpoint, and compute the same LRP-αβ (α=2, β=1)
relevance for the predicted class (benchmarks/naive_baseline.py checks it against the package's engine).

Each side runs as its own process, started cold, one after the other. "process wall" is the time from start to
exit as seen from here (interpreter, imports, model loading and, for the pipeline, worker processes included);
"run wall" is the time the side itself reports for its scan loop (naive) or its run (pipeline run.json).
Memory: the peak, over the run, of the summed proportional set size (PSS: shared pages split between the
processes sharing them) of the side's process and all its descendants, sampled every 0.2 s from /proc.
``--memory 16,64`` runs only the pipeline, once per scan count, to show that memory does not grow with the
number of scans. ``--costs`` measures, in this process on one thread, the CPU time of each piece of one scan's
work outside the pipeline's scheduling (reading, LRP, mapping back, regions, overlay, files).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model
from mri_lrp.phantoms import LABELS, ORIENTATIONS, generate_phantom

HERE = Path(__file__).resolve().parent
SPACING_MM = 1.5
CLASSES = list(LABELS)


def make_scans(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` phantom heads of ``size``³ at 1.5 mm as .nii.gz; files already there (``--data``) are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"head_{i:03d}.nii.gz"
        if not path.exists():
            phantom = generate_phantom(1000 + i, LABELS[i % len(LABELS)], shape=(size,) * 3,
                                       spacing=(SPACING_MM,) * 3, orientation=ORIENTATIONS[i % len(ORIENTATIONS)])
            nib.save(nib.Nifti1Image(phantom.volume, phantom.affine), path)
        paths.append(path)
    return paths


def seeded_network(**kwargs: int) -> torch.nn.Module:
    """Zoo cnn3d with seed-0 weights and BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    model = build_model("cnn3d", **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def benchmark_spec(size: int, grid: int) -> InputSpec:
    """The model grid: ``grid`` voxels a side covering the ``size``-voxel scans' field of view."""
    spacing = size * SPACING_MM / grid
    return InputSpec(dims=3, channels=1, shape=(grid,) * 3, spacing=(spacing,) * 3, orientation="RAS",
                     normalization="zscore")


def make_checkpoint(path: Path, size: int, grid: int) -> InputSpec:
    """The benchmark model: zoo cnn3d with seeded weights and BatchNorm statistics that are not the identity."""
    model, spec = seeded_network(num_classes=len(CLASSES)), benchmark_spec(size, grid)
    save_checkpoint(path, model.eval(), architecture="cnn3d", kwargs={"num_classes": len(CLASSES)},
                    class_names=CLASSES, input_spec=spec)
    return spec


@dataclass
class Timed:
    """One side's process: wall and CPU seconds (its workers included), peak memory, and the machine's load."""

    wall: float
    cpu: float
    load_before: float
    load_after: float
    proc: subprocess.CompletedProcess
    peak_pss_mb: float | None = None


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from /proc/<pid>/task/<tid>/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks of one process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


class TreeMemory:
    """Samples, in a thread, the summed PSS of a process tree and each member's CPU time. ``peak_mb`` is None
    where /proc cannot tell. ``cpu_s`` sums every member's last sampled CPU time: it counts the processes a
    fork server starts, which rusage misses (the server is never reaped by the measured process), and misses
    at most the last interval of each process's life."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.peak_kb = pid, every_s, 0
        self.ticks: dict[int, int] = {}
        self.supported = os.path.exists(f"/proc/{pid}/smaps_rollup")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        if self.supported:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self.supported:
            self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            members = _tree(self.pid)
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in members))
            for p in members:
                self.ticks[p] = max(self.ticks.get(p, 0), _cpu_ticks(p))

    @property
    def cpu_s(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    @property
    def peak_mb(self) -> float | None:
        return round(self.peak_kb / 1024, 1) if self.supported and self.peak_kb else None


def _timed(cmd: list[str], env: dict[str, str]) -> Timed:
    """Run ``cmd`` to the end. CPU time: the larger of the children's rusage (exact for what was reaped) and
    the sampled CPU time of the whole process tree (which includes the fork server's workers)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as popen, \
            TreeMemory(popen.pid) as memory:
        stdout, stderr = popen.communicate()
    wall = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, max(reaped, memory.cpu_s), load_before, os.getloadavg()[0], proc, memory.peak_mb)


def run_naive(data: Path, checkpoint: Path, out: Path, device: str, env: dict[str, str]) -> dict[str, Any]:
    """The naive script as a fresh process; its own per-stage seconds plus the process wall time."""
    run = _timed([sys.executable, str(HERE / "naive_baseline.py"), str(data), "--checkpoint",
                  str(checkpoint), "--out", str(out), "--device", device], env)
    if run.proc.returncode != 0:
        raise SystemExit(f"naive baseline failed (exit {run.proc.returncode}):\n{run.proc.stderr[-3000:]}")
    result = json.loads(run.proc.stdout.strip().splitlines()[-1])
    return {**result, "process_wall": run.wall, "cpu": run.cpu, "load": (run.load_before, run.load_after),
            "peak_pss_mb": run.peak_pss_mb}


def run_pipeline(data: Path, checkpoint: Path, out: Path, args: argparse.Namespace,
                 env: dict[str, str]) -> dict[str, Any]:
    """`mri-lrp explain` as a fresh process; its run.json plus the process wall time."""
    cmd = [str(Path(sys.executable).with_name("mri-lrp")), "explain", str(data), "--checkpoint", str(checkpoint),
           "--out", str(out), "--no-resume", "--quiet", "--rule", "alphabeta", "--alpha", "2", "--beta", "1",
           "--device", args.device, "--batch-size", str(args.batch_size)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    run = _timed(cmd, env)
    if run.proc.returncode != 0:
        raise SystemExit(f"mri-lrp explain failed (exit {run.proc.returncode}):\n{run.proc.stderr[-3000:]}")
    manifest = json.loads((out / "run.json").read_text())
    return {"command": " ".join(cmd), "process_wall": run.wall, "cpu": run.cpu,
            "load": (run.load_before, run.load_after), "run_json": manifest, "peak_pss_mb": run.peak_pss_mb}


def relevance_difference(naive_out: Path, pipe_out: Path, scans: list[Path]) -> float:
    """Worst scan's Σ|naive − pipeline| / Σ|pipeline| relevance: both sides must have computed the same
    explanation, or the timing compares different work. αβ divides by sums of same-signed contributions and
    max pooling picks one winner, so float32 rounding that differs with the batch size (1 here, 2 in the
    pipeline) moves a little relevance where such a sum is near zero or a pool nearly ties: the package's own
    engine differs by up to ~2e-3 between batch 1 and 2 on these scans, and agrees with the naive hooks to
    ~3e-7 at the same batch size. Different work (another rule, class or grid) differs by order 1."""
    worst = 0.0
    for path in scans:
        stem = path.name.split(".")[0]
        naive = np.asarray(nib.load(naive_out / f"{stem}_relevance.nii.gz").dataobj, dtype=np.float64)
        piped = np.asarray(nib.load(pipe_out / "scans" / stem / "relevance.nii.gz").dataobj, dtype=np.float64)
        total = max(float(np.abs(piped).sum()), np.finfo(np.float64).tiny)
        worst = max(worst, float(np.abs(naive - piped).sum()) / total)
    return worst


def side_numbers(n: int, naive: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    """One naive run and one pipeline run: scans/s, CPU seconds, per-stage seconds, machine load."""
    seconds = pipe["run_json"]["seconds"]
    counts = pipe["run_json"]["counts"]
    if counts["done"] != n or counts["failed"]:
        raise SystemExit(f"mri-lrp explain did not explain every scan: {counts}")
    return {
        "naive": {"process_wall_s": round(naive["process_wall"], 2), "run_wall_s": naive["seconds"]["wall"],
                  "cpu_s": round(naive["cpu"], 2), "scans_per_s": round(n / naive["process_wall"], 3),
                  "cpu_s_per_scan": round(naive["cpu"] / n, 3), "peak_pss_mb": naive["peak_pss_mb"],
                  "load_avg": naive["load"],
                  "stage_s": {k: v for k, v in naive["seconds"].items() if k != "wall"}},
        "pipeline": {"process_wall_s": round(pipe["process_wall"], 2), "run_wall_s": seconds["wall"],
                     "cpu_s": round(pipe["cpu"], 2), "scans_per_s": round(n / pipe["process_wall"], 3),
                     "cpu_s_per_scan": round(pipe["cpu"] / n, 3), "peak_pss_mb": pipe["peak_pss_mb"],
                     "stages": pipe["run_json"].get("stages"),
                     "load_avg": pipe["load"],
                     "stage_s": {k: v for k, v in seconds.items() if k not in ("wall", "device_busy_fraction")},
                     "device": pipe["run_json"]["device"],
                     "device_busy_fraction": seconds.get("device_busy_fraction")},
        "speedup_process": round(naive["process_wall"] / pipe["process_wall"], 2),
        "speedup_run": round(naive["seconds"]["wall"] / seconds["wall"], 2),
    }


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each side's fastest run (the least disturbed by other load) and the ratio of the two."""
    naive = min((r["naive"] for r in runs), key=lambda side: side["process_wall_s"])
    pipe = min((r["pipeline"] for r in runs), key=lambda side: side["process_wall_s"])
    return {"naive": naive, "pipeline": pipe,
            "speedup_process": round(naive["process_wall_s"] / pipe["process_wall_s"], 2),
            "speedup_run": round(naive["run_wall_s"] / pipe["run_wall_s"], 2)}


def print_run(label: str, r: dict[str, Any]) -> None:
    nv, pp = r["naive"], r["pipeline"]
    print(f"{label}: pipeline device {pp['device']}")
    print(f"{'':>10} {'process wall s':>15} {'run wall s':>11} {'CPU s':>7} {'CPU s/scan':>10} {'scans/s':>8} "
          f"{'peak PSS MB':>11} {'load avg':>12}")
    for name, side in (("naive", nv), ("pipeline", pp)):
        load = "{:.1f}->{:.1f}".format(*side["load_avg"])
        print(f"{name:>10} {side['process_wall_s']:>15.2f} {side['run_wall_s']:>11.2f} {side['cpu_s']:>7.1f} "
              f"{side['cpu_s_per_scan']:>10.3f} {side['scans_per_s']:>8.3f} {side['peak_pss_mb'] or '-':>11} "
              f"{load:>12}")
    print(f"pipeline stages: {pp['stages']}")
    print(f"speed-up: {r['speedup_process']:.2f}x (process wall), {r['speedup_run']:.2f}x (run wall)")
    if "relevance_l1_rel_diff" in r:
        print(f"same relevance both ways: sum |difference| / sum |relevance| <= {r['relevance_l1_rel_diff']:.1e}")
    print("naive stage seconds:    " + ", ".join(f"{k} {v:.2f}" for k, v in nv["stage_s"].items()))
    print("pipeline stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in pp["stage_s"].items())
          + "  (summed over workers/threads; they overlap)")
    if pp["device_busy_fraction"] is not None and "cuda" in pp["device"]:
        print(f"device busy: {100 * pp['device_busy_fraction']:.0f}% of the pipeline's run wall")


def scan_costs(data: Path, checkpoint: Path, repeats: int = 5) -> dict[str, float]:
    """CPU milliseconds of each piece of one scan's work, in this process on one torch thread, best of
    ``repeats`` (thread CPU time, so other load on the machine matters little)."""
    from mri_lrp import outputs, regions, render
    from mri_lrp.lrp import Explainer
    from mri_lrp.model.checkpoint import load_checkpoint
    from mri_lrp.model.transform import to_scan
    from mri_lrp.pipeline.batch import Explained
    from mri_lrp.pipeline.read import prepare
    from mri_lrp.pipeline.write import ScanWriter, WriteJob
    from mri_lrp.scans import discover
    from mri_lrp.settings import Settings

    torch.set_num_threads(1)
    loaded = load_checkpoint(checkpoint)
    explainer = Explainer(loaded.model, rule="alphabeta", alpha=2.0, beta=1.0)
    refs, _ = discover([str(data)], volume=None)
    ref = refs[min(1, len(refs) - 1)]
    p = prepare(ref, loaded.input_spec)
    x = torch.stack([p.model_input.tensor] * 2)
    e = explainer(x, target=None, init="prob", class_names=loaded.class_names)
    job = WriteJob.of(Explained(p, e.relevance.detach()[0:1], e.probs[0].double().numpy(), [int(e.target[0])],
                                [float(e.output_relevance[0])], [float(e.absorbed[0])],
                                [float(e.output_relevance_abs[0])], 0.0))
    scan = p.scan
    rel = to_scan(torch.from_numpy(job.relevance[0]), job.space).astype(np.float32)
    overlay = render.compose_overlay(scan.data, rel, scan.affine, title="t")

    def cost(fn: Any, n: int = repeats) -> float:
        best = float("inf")
        for _ in range(n):
            t0 = time.thread_time()
            fn()
            best = min(best, time.thread_time() - t0)
        return round(best * 1000, 1)

    with tempfile.TemporaryDirectory() as tmp:
        writer = ScanWriter(Path(tmp), Settings(), loaded.class_names, 3, "x")
        partition = cost(lambda: regions.builtin_partition(scan))
        costs = {
            "read + preprocess": cost(lambda: prepare(ref, loaded.input_spec)),
            "explain (batch 2, per scan)": cost(lambda: explainer(x, target=None, init="prob"), 3) / 2,
            "map back (to_scan)": cost(lambda: to_scan(torch.from_numpy(job.relevance[0]), job.space)),
            "built-in regions (partition)": partition,
            "region sums (one labelled pass)": round(cost(lambda: regions.region_rows(
                "s", rel, regions.builtin_partition(scan), 0.003)) - partition, 1),
            "overlay (compose)": cost(lambda: render.compose_overlay(scan.data, rel, scan.affine, title="t")),
            "overlay (PNG)": cost(lambda: render.png_bytes(overlay.rgb)),
            "relevance .nii.gz": cost(lambda: outputs.save_nifti(Path(tmp) / "r.nii.gz", rel, scan.affine)),
            "ScanWriter.write (all outputs)": cost(lambda: writer.write(job)),
        }
    return costs


def memory_runs(counts: list[int], root: Path, args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    """The pipeline alone over ``counts`` scans each: peak PSS of its process tree and the wall time."""
    checkpoint = root / f"cnn3d_{args.model_grid}.pt"
    make_checkpoint(checkpoint, args.size, args.model_grid)
    rows = []
    for n in counts:
        scans = root / f"scans_{n}x{args.size}"
        make_scans(scans, n, args.size)
        pipe = run_pipeline(scans, checkpoint, root / f"out_memory_{n}", args, env)
        seconds = pipe["run_json"]["seconds"]
        rows.append({"scans": n, "peak_pss_mb": pipe["peak_pss_mb"], "process_wall_s": round(pipe["process_wall"], 2),
                     "scans_per_s": round(n / pipe["process_wall"], 3), "cpu_s_per_scan": round(pipe["cpu"] / n, 3),
                     "stage_s": seconds, "stages": pipe["run_json"].get("stages")})
        print(f"pipeline alone, {n} scans: peak PSS {pipe['peak_pss_mb']} MB, "
              f"process wall {pipe['process_wall']:.1f} s "
              f"({n / pipe['process_wall']:.2f} scans/s), {pipe['cpu'] / n:.3f} CPU s/scan, main thread on the "
              f"device {seconds.get('device_busy_fraction')} of the run; stages {pipe['run_json'].get('stages')}",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (both sides)")
    parser.add_argument("--n", type=int, default=16, help="number of scans")
    parser.add_argument("--size", type=int, default=128, help="scan grid size per axis (1.5 mm voxels)")
    parser.add_argument("--model-grid", type=int, default=64, help="model input size per axis (same field of view)")
    parser.add_argument("--workers", type=int, default=None, help="pipeline worker processes (default: its own)")
    parser.add_argument("--batch-size", default="auto", help="pipeline batch size: auto | N")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both sides (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=1, help="naive/pipeline pairs, alternating; best is kept")
    parser.add_argument("--data", type=Path, default=None, help="keep scans, checkpoint and outputs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    parser.add_argument("--memory", default=None, help="only the pipeline, at these scan counts (e.g. 16,64)")
    parser.add_argument("--costs", action="store_true", help="only the per-scan CPU cost of each piece")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.size < 8 or args.model_grid < 16:
        parser.error("--n and --repeats must be >= 1, --size >= 8 and --model-grid >= 16")

    with tempfile.TemporaryDirectory(prefix="mri-lrp-bench-") as tmp:
        root = args.data or Path(tmp)
        env = dict(os.environ, MPLBACKEND="Agg")
        if args.memory or args.costs:
            extra: dict[str, Any] = {}
            if args.costs:
                scans = root / f"scans_{min(args.n, 4)}x{args.size}"
                make_scans(scans, min(args.n, 4), args.size)
                make_checkpoint(root / f"cnn3d_{args.model_grid}.pt", args.size, args.model_grid)
                extra["cpu_ms_per_scan"] = scan_costs(scans, root / f"cnn3d_{args.model_grid}.pt")
                for name, ms in extra["cpu_ms_per_scan"].items():
                    print(f"{name:>34}: {ms:7.1f} CPU ms")
            if args.memory:
                extra["memory"] = memory_runs([int(v) for v in args.memory.split(",")], root, args, env)
            if args.json:
                args.json.write_text(json.dumps(extra, indent=2))
            return 0
        t0 = time.perf_counter()
        scans = root / f"scans_{args.n}x{args.size}"
        files = make_scans(scans, args.n, args.size)
        checkpoint = root / f"cnn3d_{args.model_grid}.pt"
        spec = make_checkpoint(checkpoint, args.size, args.model_grid)
        print(f"data: {args.n} x {args.size}^3 at {SPACING_MM} mm in {scans} ({time.perf_counter() - t0:.1f} s); "
              f"model input {list(spec.shape or ())} at {spec.spacing[0] if spec.spacing else '-'} mm", flush=True)
        if args.torch_threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.torch_threads)
        runs = []
        for i in range(args.repeats):
            naive = run_naive(scans, checkpoint, root / "out_naive", args.device, env)
            pipe = run_pipeline(scans, checkpoint, root / "out_pipeline", args, env)
            runs.append(side_numbers(args.n, naive, pipe))
            diff = relevance_difference(root / "out_naive", root / "out_pipeline", files)
            runs[-1]["relevance_l1_rel_diff"] = diff
            print_run(f"run {i + 1}/{args.repeats}", runs[-1])
            if diff > 1e-2:
                raise SystemExit(f"the two sides computed different relevance (relative difference {diff:.1e})")
        result = {"scans": args.n, "pipeline_command": pipe["command"], "runs": runs,
                  "setup": {"size": args.size, "spacing_mm": SPACING_MM, "model_grid": args.model_grid,
                            "model_spacing_mm": spec.spacing[0] if spec.spacing else None,
                            "cpu_count": os.cpu_count(), "torch_threads": args.torch_threads}}
        if args.repeats > 1:
            result["best"] = best_of(runs)
            print_run(f"best of {args.repeats}", result["best"])
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
