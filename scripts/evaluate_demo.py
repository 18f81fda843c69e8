"""Evaluate the demo model on held-out phantoms: accuracy, and whether LRP points at the tumour.

For every held-out phantom the scan goes through ``to_model``, the model classifies it, and for tumour
classes LRP alpha-beta (alpha 2, beta 1, output relevance = probability of the true class) gives relevance
that ``to_scan`` maps back onto the scan's own grid. There it is scored against the true lesion mask:

* relevance mass accuracy: positive relevance inside the mask / all positive relevance (Arras et al. 2022);
* pointing game: whether the voxel of largest relevance lies inside the mask;
* chance level: what relevance spread evenly over the head would score (mask volume / head volume), so the
  mass accuracy can be read against it.

Results go into the model's JSON record and into benchmarks/DEMO.md.

    python scripts/evaluate_demo.py [--checkpoint mri_lrp/data/demo_model.pt] [--heads 25]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.transform import to_model, to_scan
from mri_lrp.phantoms import LABELS, TISSUES, generate_phantom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo import DATA_DIR, EVAL_SEED_BASE, ROOT, phantom_scan  # noqa: E402

SCORES = ("mass_accuracy", "pointing", "chance", "near_mask", "air")


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` voxels (6-neighbourhood)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        for axis in range(3):
            src, dst = np.moveaxis(out, axis, 0), np.moveaxis(grown, axis, 0)
            dst[1:] |= src[:-1]
            dst[:-1] |= src[1:]
        out = grown
    return out


def score(relevance: np.ndarray, mask: np.ndarray, near: np.ndarray | None = None,
          air: np.ndarray | None = None) -> dict[str, float]:
    """Mass accuracy and pointing game of one relevance map against one binary mask (same grid).

    With ``near`` (the mask grown by about one model voxel) and ``air`` (outside the head), also the share of
    positive relevance near the mask and in the air: where the mass that misses the mask goes.
    """
    positive = np.clip(relevance, 0.0, None)
    total = float(positive.sum()) or 1.0
    peak = np.unravel_index(int(np.argmax(relevance)), relevance.shape)
    out = {"mass_accuracy": float(positive[mask].sum()) / total, "pointing": float(mask[peak])}
    if near is not None:
        out["near_mask"] = float(positive[near].sum()) / total
    if air is not None:
        out["air"] = float(positive[air].sum()) / total
    return out


def evaluate(checkpoint: Path | None, heads: int, seed_base: int, alpha: float, beta: float,
             log=print) -> dict:
    """Classify ``heads`` x 4 held-out phantoms and score the relevance of the tumour ones."""
    loaded = load_checkpoint(checkpoint)
    model, spec, names = loaded.model.eval(), loaded.input_spec, loaded.class_names
    explainer = Explainer(model, rule="alphabeta", alpha=alpha, beta=beta)
    rows = []
    started = time.perf_counter()
    for seed in range(seed_base, seed_base + heads):
        for label in LABELS:
            phantom = generate_phantom(seed, label)
            ctx = to_model(phantom_scan(phantom), spec)
            x = ctx.tensor.unsqueeze(0)
            row: dict = {"seed": seed, "label": label}
            if label == "no_tumour":
                with torch.no_grad():
                    row["predicted"] = names[int(model(x).argmax(1))]
                rows.append(row)
                continue
            result = explainer(x, target=names.index(label), init="prob")
            row["predicted"] = names[int(result.logits.argmax(1))]
            row["prob"] = float(result.probs[0, names.index(label)])
            relevance = to_scan(result.relevance[0], ctx)
            mask = phantom.mask > 0
            steps = int(np.ceil(max(spec.spacing or (0.0,)) / min(phantom.spacing)))
            row.update(score(relevance, mask, dilate(mask, steps), phantom.tissues == TISSUES["background"]))
            row["chance"] = float(mask.sum() / np.count_nonzero(phantom.tissues != TISSUES["background"]))
            row["conservation_error"] = float(result.conservation_error[0])
            rows.append(row)
        log(f"seed {seed}: " + ", ".join(f"{r['label']}->{r['predicted']} {r.get('mass_accuracy', 0):.2f}"
                                         for r in rows[-len(LABELS):]))
    return summarise(rows, names, time.perf_counter() - started)


def summarise(rows: list[dict], names: list[str], seconds: float) -> dict:
    """Accuracy over all rows; relevance scores per tumour class and over all tumour rows."""
    correct = [r["predicted"] == r["label"] for r in rows]
    out: dict = {"samples": len(rows), "accuracy": float(np.mean(correct)), "seconds": round(seconds, 1),
                 "per_class": {}}
    for label in LABELS:
        mine = [r for r in rows if r["label"] == label]
        entry = {"samples": len(mine), "accuracy": float(np.mean([r["predicted"] == label for r in mine]))}
        if label != "no_tumour":
            for key in SCORES:
                entry[key] = float(np.mean([r[key] for r in mine]))
        out["per_class"][label] = entry
    tumour = [r for r in rows if r["label"] != "no_tumour"]
    for key in SCORES:
        out[key] = float(np.mean([r[key] for r in tumour]))
    out["mass_accuracy_median"] = float(np.median([r["mass_accuracy"] for r in tumour]))
    hits = [r for r in tumour if r["predicted"] == r["label"]]
    out["mass_accuracy_correct_only"] = float(np.mean([r["mass_accuracy"] for r in hits])) if hits else 0.0
    out["max_conservation_error"] = float(max(r["conservation_error"] for r in tumour))
    return out


NOTES = [
    "## Reading the numbers, and why mass accuracy is below the 0.7 goal",
    "",
    "Relevance finds the lesion (pointing game, and a mass accuracy far above chance) but does not stay",
    "inside it. Where the rest goes, measured on held-out phantoms during development:",
    "",
    "- *The lesion's edge.* 'Within 1 model voxel' counts the mask grown by one model voxel (3.5 mm): it adds",
    "  about 0.1 for every class. The model grid is coarser than the scans and `to_scan` spreads each model",
    "  voxel's relevance over the scan voxels it was sampled from, so small lesions (pituitary, meningioma",
    "  domes) lose a large share at their border.",
    "- *The air and the rest of the head.* About 0.1 of the positive relevance lies outside the head and",
    "  0.15-0.25 in white matter far from the lesion: alpha-beta with alpha 2 hands positive relevance to",
    "  every input that feeds a positive activation, and with a class probability as output relevance there",
    "  is no contrast against the other classes. alpha 1, beta 0 is worse (mass accuracy 0.11-0.20, a",
    "  quarter of the relevance in the air), so the beta term is what keeps the maps as focused as they are.",
    "- *Not a shortcut.* Every training head appears once per class with identical anatomy and noise and",
    "  each batch holds whole sets, so nothing but the lesion separates the classes. The first model, trained",
    "  on shuffled batches, had learnt 'dark blob' features that fired on the ventricles as well as on the",
    "  glioma's necrotic core: glioma recall 0.74 and glioma mass accuracy 0.11. Matched-set batches and a",
    "  brighter enhancing rim raised glioma recall to 0.92 and its mass accuracy to 0.26.",
    "- *Not the normalisation.* Percentile normalisation to [0, 1] instead of z-score (air no longer negative)",
    "  left the air's share at 0.11 and lowered meningioma mass accuracy to 0.25, so z-score stayed.",
    "",
    "What would likely raise it (not done): a finer model grid (3 mm or less) for the edge loss, and a",
    "contrastive output relevance (`--init sglrp`) or a composite with a bounded-input rule at the first",
    "layer for the diffuse part.",
]


def demo_markdown(record: dict) -> str:
    """benchmarks/DEMO.md: how the demo model was made and how well it does, from its JSON record."""
    t, d, e = record["training"], record["data"], record["evaluation"]
    spec = record["input_spec"]
    lines = [
        "# Demo model: training and evaluation",
        "",
        "The model shipped as `mri_lrp/data/demo_model.pt` (record: `mri_lrp/data/demo_model.json`) is the",
        f"zoo's `{record['architecture']}` ({record['kwargs']}) trained by `scripts/train_demo.py` on",
        "synthetic head phantoms (`mri_lrp.phantoms`) and scored by `scripts/evaluate_demo.py`. Each",
        "training head appears once per class with identical anatomy and noise, so the lesion is the only",
        "difference between classes.",
        "",
        f"- Input spec: {spec['dims']}D, shape {spec['shape']}, spacing {spec['spacing']} mm, "
        f"orientation {spec['orientation']}, {spec['normalization']} normalisation.",
        f"- Training data: {d['train_samples']} phantoms ({d['train_heads']} heads x 4 classes, seeds "
        f"{d['train_seeds'][0]}-{d['train_seeds'][1]}); {t['epochs']} epochs, batch {t['batch_size']}, "
        f"{t['optimiser']} lr {t['lr']} ({t['schedule']}), {t['augmentation']}.",
        f"- Time on CPU ({t['torch_threads']} threads): {t['seconds_data']:.0f} s to make and preprocess the "
        f"phantoms, {t['seconds_fit']:.0f} s to train.",
        "",
        "## Held-out phantoms",
        "",
        f"{e['samples']} phantoms from seeds the model never saw "
        f"({e['seed_range'][0]}-{e['seed_range'][1]}). Relevance: LRP alpha-beta (alpha {e['alpha']},",
        f"beta {e['beta']}) on every conv/linear layer, output relevance = probability of the true class,",
        "mapped back to the scan grid; scored against the lesion mask (glioma: the whole lesion including",
        "oedema). Chance = mask volume / head volume, the mass accuracy of relevance spread evenly over the",
        "head.",
        "",
        f"**Accuracy {e['accuracy']:.3f}** · **relevance mass accuracy {e['mass_accuracy']:.3f}** "
        f"(median {e['mass_accuracy_median']:.3f}; correctly classified only "
        f"{e['mass_accuracy_correct_only']:.3f}) · **pointing game {e['pointing']:.3f}** · "
        f"chance {e['chance']:.3f}",
        "",
        "| class | samples | accuracy | mass accuracy | pointing game | chance | within 1 model voxel | in air |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, c in e["per_class"].items():
        if "mass_accuracy" in c:
            lines.append(f"| {label} | {c['samples']} | {c['accuracy']:.3f} | {c['mass_accuracy']:.3f} | "
                         f"{c['pointing']:.3f} | {c['chance']:.3f} | {c['near_mask']:.3f} | {c['air']:.3f} |")
        else:
            lines.append(f"| {label} | {c['samples']} | {c['accuracy']:.3f} | - | - | - | - | - |")
    lines += ["", f"Largest conservation error over the explained scans: {e['max_conservation_error']:.2e}.",
              "", *NOTES, "", "Reproduce: `python scripts/train_demo.py && python scripts/evaluate_demo.py`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DATA_DIR / "demo_model.pt")
    parser.add_argument("--heads", type=int, default=25, help="held-out heads (one phantom per class each)")
    parser.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE + 10_000,
                        help="first held-out seed (apart from the seeds training used for its own check)")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "DEMO.md",
                        help="where to write the report ('-' for none)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = evaluate(args.checkpoint, args.heads, args.seed_base, args.alpha, args.beta)
    result.update({"alpha": args.alpha, "beta": args.beta, "init": "prob", "target": "true class",
                   "seed_range": [args.seed_base, args.seed_base + args.heads - 1]})
    print(json.dumps(result, indent=2))
    record_path = args.checkpoint.with_suffix(".json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        record["evaluation"] = result
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        if str(args.markdown) != "-":
            args.markdown.parent.mkdir(parents=True, exist_ok=True)
            args.markdown.write_text(demo_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
