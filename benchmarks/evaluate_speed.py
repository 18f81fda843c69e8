"""Batched region perturbation vs the one-forward-per-step loop, on the same scans, model, relevance and steps.

    python benchmarks/evaluate_speed.py [--device cpu|cuda] [--scans 2] [--steps 20] [--cube 4] [--batch 16]
                                        [--json OUT]

The loop is what a user writes today (Quantus-style): copy the input, replace the next cubes one by one in
Python, one forward per step, MoRF then LeRF. The batched path (what `mri-lrp evaluate` runs) builds every
step of every order from one rank map and scores them in device batches. Both produce the same MoRF and LeRF
curves (checked here to 1e-5); the batched path also scores the random order, which is not counted in its
favour: the speed-up reported is per curve. Model: the shipped demo model on the shipped sample scans.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mri_lrp.evaluate.perturb import perturbation_curves, perturbation_curves_loop
from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.pipeline.read import prepare
from mri_lrp.scans import discover

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scans", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cube", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)

    loaded = load_checkpoint(None)
    model = loaded.model.to(device)
    explainer = Explainer(model, rule="alphabeta", alpha=2.0, beta=1.0)
    refs, _ = discover([str(ROOT / "sample_scans" / "t1")])
    refs = [r for r in refs if r.kind == "nifti"][:args.scans]
    cube = (args.cube,) * 3
    kwargs = {"cube": cube, "steps": args.steps, "fraction": args.fraction, "baseline": "blur"}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    batched_s = loop_s = 0.0
    worst = 0.0
    for ref in refs:
        x = prepare(ref, loaded.input_spec).model_input.tensor.to(device)
        exp = explainer(x.unsqueeze(0))
        target = int(exp.target[0])
        relevance = exp.relevance[0]

        def scorer(v: torch.Tensor, target: int = target) -> torch.Tensor:
            return torch.softmax(explainer.logits(v).double(), dim=1)[:, target]

        perturbation_curves(x, relevance, scorer, batch_size=args.batch, random_repeats=1, **kwargs)  # warm-up
        sync()
        t0 = time.perf_counter()
        batched = perturbation_curves(x, relevance, scorer, batch_size=args.batch, random_repeats=1, **kwargs)
        sync()
        batched_s += (time.perf_counter() - t0) / 3  # three curves: MoRF, LeRF, random
        t0 = time.perf_counter()
        loop = perturbation_curves_loop(x, relevance, scorer, **kwargs)
        sync()
        loop_s += (time.perf_counter() - t0) / 2     # two curves: MoRF, LeRF
        for order in ("morf", "lerf"):
            worst = max(worst, float((batched.scores[order].cpu() - torch.tensor(loop[order])).abs().max()))
    result = {
        "device": str(device), "scans": len(refs), "steps": args.steps, "cube": args.cube, "batch": args.batch,
        "model_input": list(loaded.input_spec.shape or []),
        "batched_s_per_curve": round(batched_s / len(refs), 4), "loop_s_per_curve": round(loop_s / len(refs), 4),
        "speedup": round(loop_s / batched_s, 2), "max_curve_difference": worst,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if worst > 1e-5:
        raise SystemExit(f"batched and loop curves differ by {worst:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
