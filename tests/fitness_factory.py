"""A small trained model, its reference scans and inputs it was not trained on, for the input-fitness tests
and benchmark.

The model is a tiny 3D CNN trained in seconds on head phantoms (``mri_lrp.phantoms``) at 6 mm, read by the
model on an 8 mm grid of 24x28x24. The "unfit" kinds are made from held-out phantoms: the same head with its
contrast inverted, a volume of noise on its grid, a crop of a small box, a slab of a few slices, a constant
volume, and the head's intensities mapped to a CT-like range (air at -1000, tissue 0..80).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import cnn3d
from mri_lrp.phantoms import LABELS, generate_phantom
from mri_lrp.pipeline.read import prepare
from mri_lrp.scans import discover

SPEC = InputSpec(dims=3, channels=1, shape=(24, 28, 24), spacing=(8.0, 8.0, 8.0), orientation="RAS",
                 normalization="zscore")
SPACING = (6.0, 6.0, 6.0)
KWARGS = {"in_channels": 1, "num_classes": 4, "width": 4, "depth": 2}


class WideFirstLayer(nn.Module):
    """A 7-voxel first convolution and a 3-voxel stride-2 pooling, as MONAI's resnet10 by default: its first
    layers read 9 voxels per axis."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 7, padding=3)
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        self.head = nn.Linear(2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).mean(dim=(2, 3, 4)))


def phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    p = generate_phantom(seed, spacing=SPACING)
    return p.volume, p.affine


def save(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), path)
    return path


def write_phantoms(folder: Path, seeds: range, kind: str = "normal") -> list[Path]:
    """One NIfTI per seed, distorted by ``kind`` (a key of KINDS, or "normal")."""
    paths = []
    for seed in seeds:
        volume, affine = phantom(seed)
        if kind != "normal":
            volume, affine = KINDS[kind](volume, affine, np.random.default_rng(seed))
        paths.append(save(folder / f"{kind}_{seed:05d}.nii.gz", volume, affine))
    return paths


def train_model(path: Path, seeds: range, epochs: int = 12) -> Path:
    """Train the tiny CNN on phantoms of ``seeds`` (read and preprocessed by the run's own code) and save it
    in mri-lrp's checkpoint format."""
    torch.manual_seed(0)
    folder = path.parent / "train"
    refs, _ = discover([str(p) for p in write_phantoms(folder, seeds)])
    x = torch.stack([prepare(r, SPEC).model_input.tensor for r in refs])
    labels = torch.tensor([LABELS.index(generate_phantom(s, spacing=(24.0, 24.0, 24.0)).label) for s in seeds])
    model = cnn3d(**KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), labels[batch]).backward()
            opt.step()
    model.eval()
    save_checkpoint(path, model, architecture="cnn3d", kwargs=KWARGS, class_names=list(LABELS), input_spec=SPEC)
    return path


def _inverted(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return float(v.max()) - v, a


def _noise(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return np.abs(rng.normal(0.0, float(v.std()), v.shape) + 1j * rng.normal(0.0, float(v.std()), v.shape)), a


def _crop(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A box of 40% of each axis (6.4% of the field of view) around a random point inside the head."""
    size = [max(1, int(0.4 * n)) for n in v.shape]
    start = [int(rng.integers(n // 4, n - n // 4 - s + 1)) if n - n // 4 - s >= n // 4 else 0
             for n, s in zip(v.shape, size, strict=True)]
    box = tuple(slice(b, b + s) for b, s in zip(start, size, strict=True))
    shift = a.copy()
    shift[:3, 3] = a[:3, :3] @ np.array(start, dtype=float) + a[:3, 3]
    return v[box], shift


def _slab(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Four consecutive slices along the stored third axis, near the middle."""
    k = int(rng.integers(v.shape[2] // 3, 2 * v.shape[2] // 3))
    shift = a.copy()
    shift[:3, 3] = a[:3, :3] @ np.array([0.0, 0.0, k]) + a[:3, 3]
    return v[:, :, k:k + 4], shift


def _constant(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return np.full(v.shape, float(rng.uniform(0, 1000)), dtype=np.float32), a


def _ct_like(v: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background at -1000 (air), the head's intensities scaled into 0..80 (soft tissue in HU)."""
    top = float(np.percentile(v, 99))
    head = v > 0.1 * top
    return np.where(head, np.clip(v / top, 0, 1) * 80.0, -1000.0), a


KINDS: dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "inverted": _inverted, "noise": _noise, "crop": _crop, "slab": _slab, "constant": _constant,
    "ct_like": _ct_like,
}


def assess(checkpoint: Path, envelope: Path | None, paths: list[Path]) -> list[dict]:
    """Each file's fitness columns as explain computes them (read, model-free refusal, the LRP pass whose
    forward gives the features, assessment), without writing outputs; a refused scan's row is
    ``{"fitness": "failed", "fitness_reasons": why}``."""
    from mri_lrp.fitness.envelope import Envelope
    from mri_lrp.fitness.score import FitnessCheck
    from mri_lrp.lrp import Explainer
    from mri_lrp.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    explainer = Explainer(loaded.model)
    check = FitnessCheck(loaded.model, explainer, Envelope.load(envelope) if envelope else None)
    rows = []
    refs, _ = discover([str(p) for p in paths])
    for ref in refs:
        p = prepare(ref, loaded.input_spec)
        why = check.refuse(p.model_input)
        if why:
            rows.append({"fitness": "failed", "fitness_reasons": why})
            continue
        explainer(p.model_input.tensor.unsqueeze(0))
        feats = check.features(1)
        rows.append(check.assess(p.model_input, p.raw, None if feats is None else feats[0]))
    return rows
