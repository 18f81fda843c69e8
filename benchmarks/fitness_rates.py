"""Input fitness: how often each kind of unfit input is flagged, and what the checks cost per scan.

Part 1 (rates): the tiny CNN of the tests (tests/fitness_factory.py) trained on --train phantoms, an envelope
of those training scans, then held-out phantoms and each distortion, --per-kind scans each, assessed exactly as
explain does. Besides the kinds the tests require, a few it is not built to catch, to say so.
Part 2 (cost): the demo model on full-size phantoms: the LRP pass per scan against the checks' own time
(raw value statistics in the reader, geometry, head mask, intensity profile, distances).

    .venv/bin/python benchmarks/fitness_rates.py --train 60 --per-kind 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fitness_factory as ff  # noqa: E402

from mri_lrp.phantoms import TISSUES, generate_phantom  # noqa: E402
from mri_lrp.pipeline.run import calibrate_scans  # noqa: E402
from mri_lrp.settings import Settings  # noqa: E402


def _skull_stripped(seed: int) -> tuple[np.ndarray, np.ndarray]:
    p = generate_phantom(seed, spacing=ff.SPACING)
    keep = ~np.isin(p.tissues, [TISSUES["scalp"], TISSUES["skull"], TISSUES["soft_tissue"]])
    return np.where(keep, p.volume, 0.0), p.affine


EXTRA = {  # kinds the checks are not designed to catch, measured to say so
    "intensity x3": lambda v, a, rng: (3.0 * v, a),
    "left-right flip": lambda v, a, rng: (v[::-1].copy(), a),
    "blurred (box 3)": lambda v, a, rng: (_box3(v), a),
}


def _box3(v: np.ndarray) -> np.ndarray:
    out = v.copy()
    for axis in range(3):
        out = (np.roll(out, 1, axis) + out + np.roll(out, -1, axis)) / 3.0
    return out


def rates(work: Path, train: int, per_kind: int) -> list[tuple[str, int, float, float]]:
    checkpoint = ff.train_model(work / "model.pt", range(train))
    calibrate_scans(Settings(scans=(str(work / "train"),), checkpoint=str(checkpoint)), work / "env.npz",
                    lambda _: None)
    seeds = range(10_000, 10_000 + per_kind)
    rows = []
    kinds = {"held-out (in distribution)": "normal", **{k: k for k in ff.KINDS}}
    for label, kind in kinds.items():
        found = ff.assess(checkpoint, work / "env.npz", ff.write_phantoms(work / kind, seeds, kind))
        rows.append(_rate(label, found))
    for label, fn in EXTRA.items():
        paths = []
        for s in seeds:
            v, a = ff.phantom(s)
            paths.append(ff.save(work / "extra" / label.replace(" ", "_") / f"{s}.nii.gz",
                                 *fn(v, a, np.random.default_rng(s))))
        rows.append(_rate(label, ff.assess(checkpoint, work / "env.npz", paths)))
    paths = [ff.save(work / "stripped" / f"{s}.nii.gz", *_skull_stripped(s)) for s in seeds]
    rows.append(_rate("skull-stripped", ff.assess(checkpoint, work / "env.npz", paths)))
    return rows


def _rate(label: str, found: list[dict]) -> tuple[str, int, float, float]:
    n = len(found)
    out = sum(r["fitness"] in ("out", "failed") for r in found) / n
    flagged = sum(r["fitness"] != "ok" for r in found) / n
    return label, n, out, flagged


def cost(work: Path, scans: int) -> tuple[float, float, float]:
    """Seconds per scan: the LRP pass (demo model, alpha-beta) and the fitness checks with a reference."""
    import torch

    from mri_lrp.fitness.checks import raw_stats
    from mri_lrp.fitness.envelope import Envelope
    from mri_lrp.fitness.score import FitnessCheck
    from mri_lrp.lrp import Explainer
    from mri_lrp.model.checkpoint import load_checkpoint
    from mri_lrp.pipeline.read import prepare
    from mri_lrp.scans import discover

    folder = work / "demo"
    for s in range(scans + 24):
        p = generate_phantom(s)
        ff.save(folder / ("ref" if s >= scans else "run") / f"p{s:03d}.nii.gz", p.volume, p.affine)
    calibrate_scans(Settings(scans=(str(folder / "ref"),)), work / "demo_env.npz", lambda _: None)
    loaded = load_checkpoint(None)
    explainer = Explainer(loaded.model)
    check = FitnessCheck(loaded.model, explainer, Envelope.load(work / "demo_env.npz"))
    refs, _ = discover([str(folder / "run")])
    t_lrp = t_fit = 0.0
    for ref in refs:
        p = prepare(ref, loaded.input_spec)
        x = p.model_input.tensor.unsqueeze(0)
        t0 = time.perf_counter()
        explainer(x)
        t1 = time.perf_counter()
        raw = raw_stats(p.scan.data)
        check.refuse(p.model_input)
        feats = check.features(1)
        check.assess(p.model_input, raw, feats[0])
        t2 = time.perf_counter()
        t_lrp, t_fit = t_lrp + t1 - t0, t_fit + t2 - t1
    return t_lrp / len(refs), t_fit / len(refs), torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--cost-scans", type=int, default=10)
    parser.add_argument("--cost-only", action="store_true", help="Only part 2 (the cost per scan).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.cost_only:
            print("| input | scans | out (or refused) | flagged (out or doubtful) |\n|---|---|---|---|")
            for label, n, out, flagged in rates(work, args.train, args.per_kind):
                print(f"| {label} | {n} | {out:.0%} | {flagged:.0%} |")
        lrp, fit, threads = cost(work, args.cost_scans)
        print(f"\ncost per scan ({threads} torch threads): LRP pass {lrp * 1000:.0f} ms, fitness checks "
              f"{fit * 1000:.1f} ms ({fit / lrp:.1%} of the LRP pass)")


if __name__ == "__main__":
    main()
