"""Train the demo model that ships inside the package: a compact 3D CNN on synthetic head phantoms.

Every phantom goes through ``mri_lrp.model.transform.to_model`` with the demo input spec, exactly as a scan
does at explanation time, so training and explanation see the same input. Heads come in matched sets: one
seed gives the same head (anatomy, contrast, noise) once per class, so the lesion is the only thing that
tells the classes apart and the model cannot learn a shortcut. Evaluation uses separately seeded phantoms.

    python scripts/train_demo.py                 # writes mri_lrp/data/demo_model.pt and demo_model.json
    python scripts/train_demo.py --smoke         # seconds: tiny data, one epoch, output to a temp folder

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
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from torch import nn

import mri_lrp.model.transform as transform_module
import mri_lrp.phantoms as phantoms_module
from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.transform import to_model
from mri_lrp.model.zoo import build_model
from mri_lrp.phantoms import LABELS, Phantom, generate_phantom
from mri_lrp.scans.scan import Scan

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "mri_lrp" / "data"
CLASS_NAMES: list[str] = list(LABELS)  # fixed order: the model's output index i is CLASS_NAMES[i]
# The demo's grid: one resampling step centred on the scan, anti-aliased, edge-padded (what the shipped
# checkpoint, written before these keys existed, means).
DEMO_SPEC = InputSpec(dims=3, channels=1, shape=(56, 64, 56), spacing=(3.5, 3.5, 3.5), orientation="RAS",
                      normalization="zscore", align="centre", padding="edge", antialias=True)
ARCHITECTURE = "cnn3d"
MODEL_KWARGS: dict[str, int] = {"in_channels": 1, "num_classes": len(CLASS_NAMES), "width": 8, "depth": 4}
TRAIN_SEED_BASE = 0          # training heads: seeds 0 .. heads-1
EVAL_SEED_BASE = 500_000     # held-out phantoms: 500 000 and up (sample scans use 900 000 and up)


def phantom_scan(phantom: Phantom) -> Scan:
    """The phantom as a Scan, the value every reader produces."""
    return Scan(scan_id=f"phantom-{phantom.seed}-{phantom.label}", source=f"phantom:{phantom.seed}",
                kind="nifti", data=phantom.volume, affine=phantom.affine)


def _model_tensor(job: tuple[int, str, dict]) -> np.ndarray:
    """One phantom through ``to_model`` (run in a worker process; one thread each)."""
    seed, label, spec = job
    torch.set_num_threads(1)
    return to_model(phantom_scan(generate_phantom(seed, label)), InputSpec.from_dict(spec)).tensor.numpy()


def build_dataset(seeds: list[int], spec: InputSpec, cache: Path | None,
                  workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Model tensors (float16, N x C x X x Y x Z) and labels for every seed x class, from cache when there."""
    jobs = [(seed, label, spec.to_dict()) for seed in seeds for label in CLASS_NAMES]
    labels = np.array([CLASS_NAMES.index(label) for _, label, _ in jobs], dtype=np.int64)
    path = None
    if cache is not None:
        key = hashlib.sha256()
        for module in (phantoms_module, transform_module):
            key.update(Path(module.__file__).read_bytes())  # type: ignore[arg-type]
        key.update(json.dumps([spec.to_dict(), seeds, CLASS_NAMES]).encode())
        path = cache / f"phantoms-{key.hexdigest()[:16]}.npy"
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
          seed: int, log=print) -> list[float]:
    """AdamW, one-cycle schedule, random left-right flips; each batch holds whole matched sets.

    ``data`` comes in sets of one head per class (see ``build_dataset``). Keeping a set together in a batch
    makes every step contrast the same head with and without each lesion, so features that fire on normal
    anatomy (ventricles, skull) earn nothing and the model learns the lesions themselves.
    """
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
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(index)
            seen += len(index)
        losses.append(total / seen)
        log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - started:.1f} s)",
            flush=True)
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
    parser.add_argument("--heads", type=int, default=150, help="training heads (one scan per class each)")
    parser.add_argument("--eval-heads", type=int, default=50, help="held-out heads for the accuracy check")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation and batch order")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes making phantoms")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mri-lrp" / "demo-phantoms")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint (default mri_lrp/data/demo_model.pt; with --smoke a temp folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run: 1 head, 1 epoch, no cache, one process")
    args = parser.parse_args(argv)
    if args.smoke:
        args.heads, args.eval_heads, args.epochs, args.no_cache, args.workers = 1, 1, 1, True, 1
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="mri-lrp-smoke-")) / "demo_model.pt"
    if args.out is None:
        args.out = DATA_DIR / "demo_model.pt"
    cache = None if args.no_cache else args.cache

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    train_seeds = list(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + args.heads))
    eval_seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.eval_heads))
    x_train, y_train = build_dataset(train_seeds, DEMO_SPEC, cache, args.workers)
    x_eval, y_eval = build_dataset(eval_seeds, DEMO_SPEC, cache, args.workers)
    prepared = time.perf_counter() - started
    print(f"data: {len(x_train)} training, {len(x_eval)} held-out phantoms ({prepared:.0f} s)")

    model = build_model(ARCHITECTURE, **MODEL_KWARGS)
    fit_started = time.perf_counter()
    losses = train(model, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed)
    fit_seconds = time.perf_counter() - fit_started
    model.eval()
    heldout = accuracy_report(predict(model, x_eval), y_eval)
    training = accuracy_report(predict(model, x_train), y_train)
    print(f"held-out accuracy {heldout['accuracy']:.3f} on {heldout['samples']} phantoms; "
          f"training accuracy {training['accuracy']:.3f}")

    record = {
        "architecture": ARCHITECTURE, "kwargs": MODEL_KWARGS, "class_names": CLASS_NAMES,
        "input_spec": DEMO_SPEC.to_dict(), "seed": args.seed,
        "data": {"generator": "mri_lrp.phantoms.generate_phantom", "train_heads": args.heads,
                 "train_samples": len(x_train), "train_seeds": [train_seeds[0], train_seeds[-1]],
                 "heldout_samples": len(x_eval), "heldout_seeds": [eval_seeds[0], eval_seeds[-1]],
                 "matched_classes": True},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "optimiser": "AdamW",
                     "schedule": "one-cycle", "augmentation": "left-right flip",
                     "batches": "whole matched sets (each head with every class)", "final_loss": losses[-1],
                     "train_accuracy": training["accuracy"], "seconds_data": round(prepared, 1),
                     "seconds_fit": round(fit_seconds, 1), "torch_threads": torch.get_num_threads(),
                     "device": "cpu"},
        "heldout": heldout,
    }
    save_checkpoint(args.out, model, architecture=ARCHITECTURE, kwargs=MODEL_KWARGS, class_names=CLASS_NAMES,
                    input_spec=DEMO_SPEC, extra={"trained_on": "synthetic phantoms (mri_lrp.phantoms)",
                                                 "heldout_accuracy": heldout["accuracy"]})
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
