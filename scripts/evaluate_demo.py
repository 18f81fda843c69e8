"""Evaluate the demo models on held-out heads: accuracy, and whether LRP points at the tumour.

For every held-out head the scan goes through ``to_model``, the model classifies it, and for tumour classes
LRP (output relevance = probability of the true class) gives relevance that ``to_scan`` maps back onto the
scan's own grid. There it is scored against the true lesion mask:

* relevance mass accuracy: positive relevance inside the mask / all positive relevance (Arras et al. 2022);
* pointing game: whether the voxel of largest relevance lies inside the mask;
* chance level: what relevance spread evenly over the head would score (mask volume / head volume), so the
  mass accuracy can be read against it.

The default rule (alpha-beta, alpha 2, beta 1) is scored with every other rule and composite listed in
``RULES``. A fold ensemble is scored as ``mri-lrp explain`` runs it: the mean of the folds' probabilities picks
the class, and the map is the mean of the folds' maps. Results go into each model's JSON record and into
benchmarks/DEMO.md.

    python scripts/evaluate_demo.py [--model t1ce|multiseq|folds] [--heads 25]
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
from mri_lrp.mni_heads import LABELS, TISSUES, generate_head
from mri_lrp.model.checkpoint import load_checkpoint
from mri_lrp.model.transform import to_model, to_scan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo import DATA_DIR, EVAL_SEED_BASE, FOLDS, RECIPES, ROOT, head_scan  # noqa: E402

# name shown -> Explainer arguments; the first is the tool's default rule.
RULES: dict[str, dict] = {
    "alphabeta (a2 b1)": {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0},
    "alphabeta (a1 b0)": {"rule": "alphabeta", "alpha": 1.0, "beta": 0.0},
    "zplus": {"rule": "zplus"},
    "epsilon": {"rule": "epsilon"},
    "epsilon-plus-flat": {"rule": "epsilon", "composite": "epsilon-plus-flat"},
    "epsilon-gamma-box": {"rule": "epsilon", "composite": "epsilon-gamma-box"},
    "epsilon-alpha2-beta1-flat": {"rule": "epsilon", "composite": "epsilon-alpha2-beta1-flat"},
}
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


def evaluate(checkpoints: list[Path | None], sequences: tuple[str, ...], heads: int, seed_base: int,
             rules: dict[str, dict], log=print) -> dict:
    """Classify ``heads`` x 4 held-out heads and score each rule's relevance on the tumour ones."""
    loaded = [load_checkpoint(c) for c in checkpoints]
    spec, names = loaded[0].input_spec, loaded[0].class_names
    models = [entry.model.eval() for entry in loaded]
    explainers = {name: [Explainer(m, **args) for m in models] for name, args in rules.items()}
    rows: dict[str, list[dict]] = {name: [] for name in rules}
    started = time.perf_counter()
    for seed in range(seed_base, seed_base + heads):
        for label in LABELS:
            head = generate_head(seed, label, sequences=sequences)
            ctx = to_model(head_scan(head), spec)
            x = ctx.tensor.unsqueeze(0)
            with torch.no_grad():
                probs = torch.stack([m(x).softmax(1)[0] for m in models]).mean(0)
            predicted = names[int(probs.argmax())]
            if label == "no_tumour":
                for name in rules:
                    rows[name].append({"seed": seed, "label": label, "predicted": predicted})
                continue
            mask = head.mask > 0
            steps = int(np.ceil(max(spec.spacing or (0.0,)) / min(head.spacing)))
            near, air = dilate(mask, steps), head.tissues == TISSUES["background"]
            chance = float(mask.sum() / np.count_nonzero(~air))
            for name, fold_explainers in explainers.items():
                results = [e(x, target=names.index(label), init="prob") for e in fold_explainers]
                relevance = to_scan(torch.stack([r.relevance[0] for r in results]).mean(0), ctx)
                row = {"seed": seed, "label": label, "predicted": predicted, "chance": chance,
                       "prob": float(probs[names.index(label)]),
                       "conservation_error": max(float(r.conservation_error[0]) for r in results)}
                row.update(score(relevance, mask, near, air))
                rows[name].append(row)
        first = rows[next(iter(rules))][-len(LABELS):]
        log(f"seed {seed}: " + ", ".join(f"{r['label']}->{r['predicted']} {r.get('mass_accuracy', 0):.2f}"
                                         for r in first), flush=True)
    seconds = time.perf_counter() - started
    return {name: summarise(mine, names, seconds) for name, mine in rows.items()}


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
    "## What keeps the relevance on the tumour",
    "",
    "Measured during development on 10 held-out subjects (seeds 510000-510009), default rule, T1ce model;",
    "accuracy on the 160 held-out scans of `train_demo.py` (seeds 500000-500039):",
    "",
    "| model | mass accuracy | accuracy |",
    "|---|---|---|",
    "| 0.2's demo: cartoon phantoms, global average pooling, no penalty (its own held-out phantoms) | 0.426 | 0.970 |",
    "| MNI152 heads, global average pooling, sparsity 0.05 | 0.694 | 0.994 |",
    "| MNI152 heads, global average pooling, sparsity 0.2 | 0.681 | 0.988 |",
    "| MNI152 heads, global max pooling, sparsity 0.05 (shipped) | 0.707 | 1.000 |",
    "",
    "The pooling was chosen on those ten subjects, which are also the first ten of the tables above. On twelve",
    "subjects no choice was made on (seeds 520000-520011), the T1ce model scores 0.683 and the folds' mean 0.770",
    "(accuracy 1.000 for both): the single T1ce model sits at the goal, not clearly above it.",
    "",
    "- *Matched sets.* Every training subject appears once per class with the same anatomy, grid and noise, and",
    "  each batch holds whole sets, so only the lesion (and the anatomy it pushes aside, within twice its radius)",
    "  tells the classes apart.",
    "- *A sparsity penalty* on the last feature map (its mean activation, weighted 0.05, added to the loss) keeps",
    "  the features silent on normal anatomy. A stronger penalty (0.2) did not help further. The same model",
    "  without the penalty was not trained for lack of time, so its share is not measured apart.",
    "- *Global max pooling* takes each feature where it is strongest, so the class evidence comes from one",
    "  place: the lesion. It raised the mass accuracy a little over average pooling and the accuracy to 1.",
    "- *Where the rest goes.* About 0.05 lies within one model voxel (3.5 mm) of the mask: the model grid is",
    "  coarser than the scans and `to_scan` spreads each model voxel over the scan voxels it was sampled",
    "  from. About 0.05 lies in the air around the head. The rest, about 0.2, is spread thinly over the head:",
    "  alpha-beta with alpha 2 hands positive relevance to every input that feeds a positive activation.",
    "  Small lesions lose the largest share at their border, so pituitary adenomas score lowest.",
    "- *Folds.* The mean of three folds' maps keeps more on the lesion than one model's map: what the folds",
    "  agree on is the lesion, and the thin spread elsewhere differs between them and averages out.",
    "- *Four sequences* make every lesion stand out in more than one image (oedema on T2 and FLAIR, the",
    "  enhancing rim on T1ce), and the four-sequence model keeps more of its relevance on the lesion with",
    "  average pooling than the T1ce model does with max pooling.",
    "- *Rules.* alpha-beta with alpha 2, beta 1 does best: the beta term takes relevance away from inputs that",
    "  argue against the class, which is what keeps the maps tight. z+ (= alpha 1, beta 0) and the composites",
    "  with flat at the first layer spread relevance over the receptive field and into the air.",
    "- *No tumour.* A `no_tumour` prediction rests on the absence of lesion features, so its map has nothing to",
    "  point at: 40-50% of its positive relevance lands in the air, and `mri-lrp explain` warns about such maps.",
]

TITLES = {"t1ce": "T1ce model", "multiseq": "Four-sequence model", "folds": "Three folds of the T1ce model"}


def _default(evaluation: dict) -> dict:
    return evaluation["rules"][next(iter(evaluation["rules"]))]


def _model_section(name: str, record: dict) -> list[str]:
    """One model: how it was trained, its default-rule scores per class, and every rule's scores."""
    t, d, e, spec = record["training"], record["data"], record["evaluation"], record["input_spec"]
    best = _default(e)
    lines = [
        f"## {TITLES[name]}",
        "",
        f"`{e['checkpoints']}`: the zoo's `{record['architecture']}` ({record['kwargs']}); input "
        f"{spec['channels']} channel(s) ({', '.join(d['sequences'])}), shape {spec['shape']}, spacing "
        f"{spec['spacing']} mm, {spec['orientation']}, {spec['normalization']} normalisation.",
        f"Trained on {d['train_samples']} heads ({d['train_heads']} subjects x 4 classes"
        f"{', two thirds of seeds 0-149: each fold leaves out another third' if name == 'folds' else ''}"
        f"{'' if name == 'folds' else ', seeds ' + str(d['train_seeds'][0]) + '-' + str(d['train_seeds'][1])}); "
        f"{t['epochs']} epochs, batch {t['batch_size']}, {t['optimiser']} lr {t['lr']} ({t['schedule']}), "
        f"{t['augmentation']}, sparsity {t['sparsity']}; {t['seconds_fit']:.0f} s on {t['torch_threads']} CPU "
        "threads.",
        "",
        f"Held out: {best['samples']} scans ({best['samples'] // len(LABELS)} subjects x {len(LABELS)} classes, seeds "
        f"{e['seed_range'][0]}-{e['seed_range'][1]}). **Accuracy "
        f"{best['accuracy']:.3f}** · **relevance mass accuracy {best['mass_accuracy']:.3f}** (default rule; "
        f"median {best['mass_accuracy_median']:.3f}) · pointing game {best['pointing']:.3f} · chance "
        f"{best['chance']:.3f} · largest conservation error {best['max_conservation_error']:.1e}",
        "",
        "| class | samples | accuracy | mass accuracy | pointing game | chance | within 1 model voxel | in air |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, c in best["per_class"].items():
        if "mass_accuracy" in c:
            lines.append(f"| {label} | {c['samples']} | {c['accuracy']:.3f} | {c['mass_accuracy']:.3f} | "
                         f"{c['pointing']:.3f} | {c['chance']:.3f} | {c['near_mask']:.3f} | {c['air']:.3f} |")
        else:
            lines.append(f"| {label} | {c['samples']} | {c['accuracy']:.3f} | - | - | - | - | - |")
    lines += ["", "| rule or composite | mass accuracy | glioma / meningioma / pituitary | pointing game | "
              "in air |", "|---|---|---|---|---|"]
    ranked = sorted(e["rules"].items(), key=lambda item: -item[1]["mass_accuracy"])
    for rule, r in ranked:
        per = " / ".join(f"{r['per_class'][c]['mass_accuracy']:.2f}" for c in LABELS if c != "no_tumour")
        mark = " (default)" if rule == next(iter(e["rules"])) else ""
        lines.append(f"| {rule}{mark} | {r['mass_accuracy']:.3f} | {per} | {r['pointing']:.3f} | {r['air']:.3f} |")
    return lines + [""]


def demo_markdown(records: dict[str, dict]) -> str:
    """benchmarks/DEMO.md: how the demo models were made and how well they do, from their JSON records."""
    lines = [
        "# Demo models: training and evaluation",
        "",
        "The demo models ship in `mri_lrp/data/` with a JSON record each. They are trained by",
        "`scripts/train_demo.py` on synthetic heads of real anatomy (`mri_lrp.mni_heads`: the MNI152 2009",
        "template deformed per subject, imaged in T1, T1ce, T2 and FLAIR, with glioma, meningioma and pituitary",
        "adenoma) and scored here by `scripts/evaluate_demo.py` on heads from seeds they never saw. Each training",
        "subject appears once per class with identical anatomy and noise, so the lesion is the only difference",
        "between classes.",
        "",
        "Relevance: output relevance = probability of the true class, mapped back to the scan grid and scored",
        "against the whole-lesion mask (glioma: including oedema). Mass accuracy = positive relevance inside the",
        "mask / all positive relevance; chance = mask volume / head volume. The goals: accuracy >= 0.95 and mass",
        "accuracy >= 0.7 with the default rule (alpha-beta, alpha 2, beta 1).",
        "",
    ]
    for name in ("t1ce", "multiseq", "folds"):
        if name in records and "evaluation" in records[name]:
            lines += _model_section(name, records[name])
    lines += [*NOTES, "", "Reproduce: `make demo-models` (about an hour on 2 CPU cores), then",
              "`python scripts/evaluate_demo.py --model t1ce` (and `multiseq`, `folds`).", ""]
    return "\n".join(lines)


def _record_paths(model: str) -> list[Path]:
    if model == "folds":
        return [DATA_DIR / f"demo_fold{k}.json" for k in range(1, FOLDS + 1)]
    return [DATA_DIR / RECIPES[model].file.replace(".pt", ".json")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["t1ce", "multiseq", "folds"], default="t1ce")
    parser.add_argument("--heads", type=int, default=25, help="held-out heads (one per class each)")
    parser.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE + 10_000,
                        help="first held-out seed (apart from the seeds training used for its own check)")
    parser.add_argument("--rules", default=None,
                        help="';'-separated names from RULES (default: every rule for t1ce, the default rule else)")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "DEMO.md",
                        help="where to write the report ('-' for none)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    names = args.rules.split(";") if args.rules else list(RULES) if args.model == "t1ce" else [next(iter(RULES))]
    chosen = {name: RULES[name] for name in names}
    records = _record_paths(args.model)
    checkpoints = [p.with_suffix(".pt") for p in records]
    sequences = RECIPES["multiseq" if args.model == "multiseq" else "t1ce"].sequences
    rules = evaluate(checkpoints, sequences, args.heads, args.seed_base, chosen)
    result = {"rules": rules, "init": "prob", "target": "true class",
              "checkpoints": ", ".join(str(p.relative_to(ROOT)) for p in checkpoints),
              "seed_range": [args.seed_base, args.seed_base + args.heads - 1]}
    print(json.dumps({name: {k: r[k] for k in ("accuracy", "mass_accuracy", "pointing", "air")}
                      for name, r in rules.items()}, indent=2))
    for path in records:
        record = json.loads(path.read_text())
        record["evaluation"] = result
        path.write_text(json.dumps(record, indent=2) + "\n")
    if str(args.markdown) != "-":
        every = {}
        for model in ("t1ce", "multiseq", "folds"):
            path = _record_paths(model)[0]
            if path.is_file():
                every[model] = json.loads(path.read_text())
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(demo_markdown(every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
