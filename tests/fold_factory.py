"""Small fold ensembles on real files: tiny 3D CNN checkpoints that agree (one network plus small weight
changes, as retrained folds would) or one re-drawn, and tiny RAS NIfTI scans whose grid is the model's."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model

CLASSES = ["a", "b", "c"]
KWARGS = {"num_classes": 3, "width": 4, "depth": 2}


def base_net(seed: int = 0, architecture: str = "cnn3d") -> nn.Module:
    torch.manual_seed(seed)
    net = build_model(architecture, **KWARGS)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so merging them is exercised
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def fold_net(base: nn.Module, k: int, noise: float = 0.05, architecture: str = "cnn3d") -> nn.Module:
    """Fold k: the base network's weights with a small seeded change, like a retrained fold that agrees."""
    net = build_model(architecture, **KWARGS)
    net.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "features" in name and p.dim() > 1 or "classifier.weight" in name:
                p.add_(noise * p.abs().mean() * torch.randn(p.shape, generator=g))
    return net.eval()


def save_fold(path: Path, net: nn.Module, class_names: list[str] | None = None,
              spec: InputSpec | None = None, architecture: str = "cnn3d") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, net, architecture=architecture, kwargs=KWARGS, class_names=class_names or CLASSES,
                    input_spec=spec or InputSpec(dims=3, orientation="RAS"))
    return path


def make_folds(folder: Path, k: int = 3, redrawn: int | None = None, architecture: str = "cnn3d",
               **save: Any) -> list[Path]:
    """k fold checkpoints under folder/fold_<k>/model.pt; ``redrawn`` gets freshly drawn weights."""
    base = base_net(architecture=architecture)
    paths = []
    for f in range(k):
        net = base_net(1000 + f, architecture) if f == redrawn else fold_net(base, f, architecture=architecture)
        paths.append(save_fold(folder / f"fold_{f}" / "model.pt", net, architecture=architecture, **save))
    return paths


def make_scans(folder: Path, n: int = 2, size: int = 8) -> Path:
    """n RAS NIfTI scans of size³ 1 mm voxels: a bright blob at a different place in each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1)
    for i in range(n):
        centre = rng.uniform(2, size - 2, size=3)
        data = 100 * np.exp(-((grid - centre) ** 2).sum(-1) / 4.0) + rng.uniform(5, 15, (size,) * 3)
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), folder / f"scan{i}.nii.gz")
    return folder


def run(scans: Path, out: Path, checkpoint: list[str] | str, **options: Any) -> int:
    """`mri-lrp explain` in this process (the same settings and run as the command line), quiet; on the CPU, where
    the float64 reference's tolerance holds (a GPU may run convolutions in TF32)."""
    from mri_lrp.pipeline import run_explain
    from mri_lrp.progress import Reporter
    from mri_lrp.settings import build_settings

    settings = build_settings({"scans": [str(scans)], "checkpoint": checkpoint, "out": str(out), "workers": 0,
                               "device": "cpu", **options})
    return run_explain(settings, Reporter(quiet=True, stream=io.StringIO()))


def volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def as_sequential(net: nn.Module) -> nn.Sequential:
    """The zoo CNN as the reference's plain layer list: each conv and its BatchNorm as one affine block."""
    f = list(net.features)
    layers: list[nn.Module] = []
    for i in range(0, len(f), 4):
        layers += [nn.Sequential(f[i], f[i + 1]), f[i + 2], f[i + 3]]
    return nn.Sequential(*layers, net.pool, net.flatten, net.classifier).eval()
