"""A fold ensemble in one run against as many one-checkpoint runs, on the same generated scans.

    python benchmarks/folds_speed.py [--n 32] [--size 128] [--model-grid 48] [--width 4] [--depth 3]
                                     [--folds 3,5] [--repeats 3] [--data DIR] [--json OUT]

Writes ``--n`` phantom heads of ``--size``³ at 1.5 mm (as ``pipeline_speed.py`` does) and k checkpoints of the
zoo's ``cnn3d`` (``--width``, ``--depth``; one seeded network with a small seeded change per fold, as retrained
folds would differ). For each k: ``mri-lrp explain --checkpoint f0 ... --checkpoint f{k-1}`` once, against k separate
``mri-lrp explain --checkpoint fi --target <the ensemble's class>`` runs one after the other (the same maps:
a fold run explains the ensemble's class). Every run is its own cold process with the default workers; the
wall is from start to exit (interpreter, imports, model loading, worker processes included), best of
``--repeats``. The explanations themselves cannot be shared; reading, preprocessing, start-up and the shared
outputs can. The fold run also writes more (each fold's map, the spread, each fold's region rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from pipeline_speed import CLASSES, benchmark_spec, make_scans, seeded_network

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.zoo import build_model


def make_folds(folder: Path, k: int, size: int, grid: int, width: int, depth: int) -> list[Path]:
    """k fold checkpoints: one seeded network, each fold's weights changed by 5 % noise of its own seed."""
    kwargs = {"num_classes": len(CLASSES), "width": width, "depth": depth}
    base, spec = seeded_network(**kwargs), benchmark_spec(size, grid)
    paths = []
    for f in range(k):
        path = folder / f"fold_{f}.pt"
        if not path.exists():
            net = build_model("cnn3d", **kwargs)
            net.load_state_dict(base.state_dict())
            g = torch.Generator().manual_seed(f + 1)
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
            save_checkpoint(path, net.eval(), architecture="cnn3d", kwargs=kwargs,
                            class_names=CLASSES, input_spec=spec)
        paths.append(path)
    return paths


def explain(scans: Path, out: Path, checkpoints: list[Path], *extra: str) -> float:
    """One cold `mri-lrp explain` process; its wall seconds."""
    args = [a for c in checkpoints for a in ("--checkpoint", str(c))]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mri_lrp.cli", "explain", str(scans), *args, "--out", str(out),
                           "--no-resume", "--quiet", *extra], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"explain failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def stage_seconds(out: Path) -> dict[str, float]:
    return json.loads((out / "run.json").read_text())["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--model-grid", type=int, default=48)
    ap.add_argument("--width", type=int, default=4, help="cnn3d channels of the first block")
    ap.add_argument("--depth", type=int, default=3, help="cnn3d blocks")
    ap.add_argument("--folds", default="3,5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="keep the scans and checkpoints here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    counts = [int(k) for k in args.folds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        scans = data / f"scans_{args.size}"
        make_scans(scans, args.n, args.size)
        folds = make_folds(data / f"folds_{args.size}_{args.model_grid}_{args.width}_{args.depth}", max(counts),
                           args.size, args.model_grid, args.width, args.depth)
        results = []
        for k in counts:
            one, separate = [], []
            for r in range(args.repeats):
                out = Path(tmp) / f"ens_{k}_{r}"
                one.append(explain(scans, out, folds[:k]))
                stages = stage_seconds(out)
                with (out / "summary.csv").open() as f:
                    targets = {row["predicted_class"] for row in csv.DictReader(f)}
                target = targets.pop() if len(targets) == 1 else None  # else: each fold explains its own class
                walls = [explain(scans, Path(tmp) / f"one_{k}_{r}_{f}", [folds[f]],
                                 *(["--target", target] if target else [])) for f in range(k)]
                separate.append(sum(walls))
                print(f"folds {k} repeat {r}: one run {one[-1]:.1f} s, {k} runs {separate[-1]:.1f} s "
                      f"({one[-1] / separate[-1]:.2f}x); one run's stages {stages}", flush=True)
            best_one, best_sep = min(one), min(separate)
            results.append({"folds": k, "scans": args.n, "size": args.size, "model_grid": args.model_grid,
                            "width": args.width, "depth": args.depth,
                            "one_run_s": [round(v, 2) for v in one], "separate_runs_s": [round(v, 2) for v in separate],
                            "best_one_run_s": round(best_one, 2), "best_separate_s": round(best_sep, 2),
                            "ratio": round(best_one / best_sep, 3)})
            print(f"folds {k}: best one run {best_one:.1f} s, best {k} runs {best_sep:.1f} s, "
                  f"ratio {best_one / best_sep:.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
