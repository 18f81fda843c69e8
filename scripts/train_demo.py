"""Train the demo models that ship inside the package: compact 3D CNNs on synthetic heads of real anatomy.

The heads are ``mri_lrp.mni_heads`` subjects (the MNI152 template, deformed and imaged per subject). Every
head goes through ``mri_lrp.model.transform.to_model`` with the model's input spec, exactly as a scan does at
explanation time, so training and explanation see the same input. Heads come in matched sets: one seed gives
the same head (anatomy, contrast, noise) once per class, so the lesion is the only thing that tells the
classes apart and the model cannot learn a shortcut. Evaluation and the sample scans use other seeds.

    python scripts/train_demo.py                           # the T1ce model: mri_lrp/data/demo_model.pt (+ .json)
    python scripts/train_demo.py --model multiseq          # four sequences: mri_lrp/data/demo_multiseq.pt
    python scripts/train_demo.py --model t1ce --fold 1     # fold 1 of 3: mri_lrp/data/demo_fold1.pt
    python scripts/train_demo.py --smoke                   # seconds: tiny data, one epoch, to a temp folder

Preprocessed tensors are cached (``--cache``), keyed by the generator and transform sources and the spec.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mri_lrp.mni_heads as heads_module
import mri_lrp.model.transform as transform_module
from mri_lrp.mni_heads import LABELS, SEQUENCES, Head, generate_head
from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import to_model
from mri_lrp.model.zoo import build_model
from mri_lrp.scans.scan import Scan

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "mri_lrp" / "data"
CLASS_NAMES: list[str] = list(LABELS)  # fixed order: the model's output index i is CLASS_NAMES[i]
ARCHITECTURE = "cnn3d"
TRAIN_SEED_BASE = 0          # training heads: seeds 0 .. heads-1
EVAL_SEED_BASE = 500_000     # held-out heads: 500 000 and up (sample scans use 900 000 and up)
FOLDS = 3                    # fold k trains on the training heads whose index modulo FOLDS is not k - 1


@dataclass(frozen=True)
class Recipe:
    """One shipped demo model: what it sees and where it is written."""

    name: str
    sequences: tuple[str, ...]
    file: str

    @property
    def spec(self) -> InputSpec:
        """The demo grid (one resampling step centred on the scan, anti-aliased, edge-padded), per channel."""
        names = self.sequences if len(self.sequences) > 1 else ()
        return InputSpec(dims=3, channels=len(self.sequences), shape=(56, 64, 56), spacing=(3.5, 3.5, 3.5),
                         orientation="RAS", normalization="zscore", align="centre", padding="edge",
                         antialias=True, channel_names=names)

    def kwargs(self, pool: str = "avg") -> dict[str, int | str]:
        return {"in_channels": len(self.sequences), "num_classes": len(CLASS_NAMES), "width": 8, "depth": 4,
                "pool": pool}


RECIPES: dict[str, Recipe] = {
    "t1ce": Recipe("t1ce", ("t1ce",), "demo_model.pt"),
    "multiseq": Recipe("multiseq", SEQUENCES, "demo_multiseq.pt"),
}


def head_scan(head: Head) -> Scan:
    """The head as a Scan, the value every reader produces (a multi-channel case for several sequences)."""
    names = tuple(head.volumes)
    data = head.volume if len(names) == 1 else np.stack([head.volumes[n] for n in names])
    return Scan(scan_id=f"head-{head.seed}-{head.label}", source=f"head:{head.seed}", kind="nifti", data=data,
                affine=head.affine, channels=names if len(names) > 1 else ())


def _model_tensor(job: tuple[int, str, tuple[str, ...], dict]) -> np.ndarray:
    """One head through ``to_model`` (run in a worker process; one thread each)."""
    seed, label, sequences, spec = job
    torch.set_num_threads(1)
    head = generate_head(seed, label, sequences=sequences, spacing_range=(1.8, 3.2))
    return to_model(head_scan(head), InputSpec.from_dict(spec)).tensor.numpy()


def build_dataset(seeds: list[int], recipe: Recipe, cache: Path | None,
                  workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Model tensors (float16, N x C x X x Y x Z) and labels for every seed x class, from cache when there."""
    spec = recipe.spec
    jobs = [(seed, label, recipe.sequences, spec.to_dict()) for seed in seeds for label in CLASS_NAMES]
    labels = np.array([CLASS_NAMES.index(label) for _, label, _, _ in jobs], dtype=np.int64)
    path = None
    if cache is not None:
        key = hashlib.sha256()
        for module in (heads_module, transform_module):
            key.update(Path(module.__file__).read_bytes())  # type: ignore[arg-type]
        key.update(json.dumps([spec.to_dict(), seeds, CLASS_NAMES, recipe.sequences]).encode())
        path = cache / f"heads-{key.hexdigest()[:16]}.npy"
        if path.is_file():
            return np.load(path), labels
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            tensors = list(pool.map(_model_tensor, jobs, chunksize=4))
    else:
        tensors = [_model_tensor(job) for job in jobs]
    data = np.stack(tensors).astype(np.float16)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, data)
    return data, labels


def train(model: nn.Module, data: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int, lr: float,
          seed: int, sparsity: float = 0.0, log=print) -> list[float]:
    """AdamW, one-cycle schedule, random left-right flips; each batch holds whole matched sets.

    ``data`` comes in sets of one head per class (see ``build_dataset``). Keeping a set together in a batch
    makes every step contrast the same head with and without each lesion, so features that fire on normal
    anatomy (ventricles, skull) earn nothing and the model learns the lesions themselves. ``sparsity`` weighs
    an L1 penalty on the last feature map (the mean activation before global pooling): features that stay
    silent on normal anatomy make the class evidence, and so the relevance, local to the lesion.
    """
    features: list[torch.Tensor] = []
    hook = model.features.register_forward_hook(lambda _m, _i, out: features.append(out))
    group = len(CLASS_NAMES)
    heads = len(data) // group
    per_batch = max(1, batch_size // group)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(heads / per_batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(heads, generator=generator)
        total, seen, started = 0.0, 0, time.perf_counter()
        for start in range(0, heads, per_batch):
            chosen = order[start:start + per_batch].numpy()
            index = (chosen[:, None] * group + np.arange(group)[None, :]).ravel()
            x = torch.from_numpy(data[index].astype(np.float32))
            flip = (torch.rand(len(chosen), generator=generator) < 0.5).repeat_interleave(group)
            x[flip] = x[flip].flip(2)  # axis 2 of (N, C, X, Y, Z) is R-L in the RAS model grid
            y = torch.from_numpy(labels[index])
            features.clear()
            loss = loss_fn(model(x), y)
            if sparsity:
                loss = loss + sparsity * features[0].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
            seen += len(index)
        losses.append(total / seen)
        log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - started:.1f} s)",
            flush=True)
    hook.remove()
    return losses


@torch.no_grad()
def predict(model: nn.Module, data: np.ndarray, batch_size: int = 16) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(data[i:i + batch_size].astype(np.float32))).argmax(1)
           for i in range(0, len(data), batch_size)]
    return torch.cat(out).numpy()


def accuracy_report(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """Overall and per-class accuracy, and the confusion matrix (rows: truth, columns: predicted)."""
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES)), dtype=int)
    for t, p in zip(labels, predicted, strict=True):
        confusion[t, p] += 1
    per_class = {name: float(confusion[i, i] / max(confusion[i].sum(), 1))
                 for i, name in enumerate(CLASS_NAMES)}
    return {"accuracy": float(np.mean(predicted == labels)), "per_class": per_class,
            "confusion": confusion.tolist(), "samples": int(len(labels))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RECIPES), default="t1ce", help="which demo model")
    parser.add_argument("--fold", type=int, default=0, help=f"train fold 1..{FOLDS} (2/3 of the heads); 0: all")
    parser.add_argument("--heads", type=int, default=150, help="training heads (one scan per class each)")
    parser.add_argument("--eval-heads", type=int, default=40, help="held-out heads for the accuracy check")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--sparsity", type=float, default=0.05,
                        help="weight of the L1 penalty on the last feature map (0: none)")
    parser.add_argument("--pool", choices=["avg", "max"], default="max", help="global pooling before the classifier")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation and batch order")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making heads")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mri-lrp" / "demo-heads")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint (default mri_lrp/data/<model>.pt; "
                        "with --smoke a temp folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run: 1 head, 1 epoch, no cache, one process")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.model]
    if not 0 <= args.fold <= FOLDS:
        parser.error(f"--fold must be 0..{FOLDS}")
    if args.smoke:
        args.heads, args.eval_heads, args.epochs, args.no_cache, args.workers = 1, 1, 1, True, 1
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="mri-lrp-smoke-")) / "demo_model.pt"
    if args.out is None:
        args.out = DATA_DIR / (f"demo_fold{args.fold}.pt" if args.fold else recipe.file)
    cache = None if args.no_cache else args.cache

    torch.manual_seed(args.seed + args.fold)
    started = time.perf_counter()
    all_seeds = list(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.heads))
    train_seeds = [s for i, s in enumerate(all_seeds) if not args.fold or i % FOLDS != args.fold - 1]
    eval_seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_heads))
    x_all, y_all = build_dataset(all_seeds, recipe, cache, args.workers)
    keep = np.repeat(np.isin(all_seeds, train_seeds), len(CLASS_NAMES))
    x_train, y_train = x_all[keep], y_all[keep]
    x_eval, y_eval = build_dataset(eval_seeds, recipe, cache, args.workers)
    prepared = time.perf_counter() - started
    print(f"data: {len(x_train)} training, {len(x_eval)} held-out heads ({prepared:.0f} s)")

    kwargs = recipe.kwargs(args.pool)
    model = build_model(ARCHITECTURE, **kwargs)
    fit_started = time.perf_counter()
    losses = train(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed + args.fold, sparsity=args.sparsity)
    fit_seconds = time.perf_counter() - fit_started
    model.eval()
    heldout = accuracy_report(predict(model, x_eval), y_eval)
    training = accuracy_report(predict(model, x_train), y_train)
    print(f"held-out accuracy {heldout['accuracy']:.3f} on {heldout['samples']} heads; "
          f"training accuracy {training['accuracy']:.3f}")

    spec = recipe.spec
    record = {
        "model": recipe.name, "fold": args.fold, "folds": FOLDS if args.fold else 0,
        "architecture": ARCHITECTURE, "kwargs": kwargs, "class_names": CLASS_NAMES,
        "input_spec": spec.to_dict(), "seed": args.seed + args.fold,
        "data": {"generator": "mri_lrp.mni_heads.generate_head", "sequences": list(recipe.sequences),
                 "train_heads": len(train_seeds), "train_samples": len(x_train),
                 "train_seeds": [train_seeds[0], train_seeds[-1]],
                 "heldout_samples": len(x_eval), "heldout_seeds": [eval_seeds[0], eval_seeds[-1]],
                 "matched_classes": True},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "optimiser": "AdamW", "sparsity": args.sparsity,
                     "schedule": "one-cycle", "augmentation": "left-right flip",
                     "batches": "whole matched sets (each head with every class)", "final_loss": losses[-1],
                     "train_accuracy": training["accuracy"], "seconds_data": round(prepared, 1),
                     "seconds_fit": round(fit_seconds, 1), "torch_threads": torch.get_num_threads(),
                     "device": "cpu"},
        "heldout": heldout,
    }
    save_checkpoint(args.out, model, architecture=ARCHITECTURE, kwargs=kwargs, class_names=CLASS_NAMES,
                    input_spec=spec, extra={"trained_on": "synthetic heads on the MNI152 template "
                                                          "(mri_lrp.mni_heads)",
                                            "heldout_accuracy": heldout["accuracy"]})
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
