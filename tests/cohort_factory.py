"""A tiny BIDS dataset with a planted shortcut and a tiny 3D model trained on it, for the cohort tests.

Heads are ellipsoids on a 24^3 grid of 4 mm voxels; class "tumour" has a bright blob inside the head, class
"healthy" none. Two sites (participants.tsv ``site``, sidecar ``Manufacturer``). With ``shortcut``, every
tumour scan of site 1 also carries a bright cube in the air above the head (a burned-in marker): the model
can learn it as a cue for the class there.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mri_lrp.model.checkpoint import save_checkpoint
from mri_lrp.model.spec import InputSpec
from mri_lrp.model.zoo import build_model

GRID = 24
SPACING = 4.0
MARKER = (slice(3, 6), slice(3, 6), slice(18, 21))   # in the air: the head spans about 4..20 on each axis
MARKER_CENTRE = (4, 4, 19)
CLASSES = ["tumour", "healthy"]
KWARGS = {"in_channels": 1, "num_classes": 2, "width": 4, "depth": 2}
PER_GROUP = 12   # scans per (class, site)


def head(rng: np.random.Generator, tumour: bool, marker: bool) -> np.ndarray:
    i, j, k = np.meshgrid(*(np.arange(GRID, dtype=np.float32),) * 3, indexing="ij")
    c = GRID / 2 - 0.5 + rng.uniform(-0.5, 0.5, 3)
    inside = ((i - c[0]) / 7.5) ** 2 + ((j - c[1]) / 8.0) ** 2 + ((k - c[2]) / 7.0) ** 2 <= 1.0
    volume = np.where(inside, 1.0 + 0.05 * rng.standard_normal(inside.shape), 0.0).astype(np.float32)
    if tumour:
        t = c + rng.uniform(-2.0, 2.0, 3)
        volume[(i - t[0]) ** 2 + (j - t[1]) ** 2 + (k - t[2]) ** 2 <= 3.0**2] += 1.5
    if marker:
        volume[MARKER] = 3.0
    return volume


def make_dataset(root: Path, shortcut: bool, seed: int = 0) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Write the dataset under ``root``; return its volumes, labels and the ids of the marked scans."""
    rng = np.random.default_rng(seed)
    volumes, labels, marked, participants = [], [], [], ["participant_id\tsite\tage"]
    n = 0
    for site in (1, 2):
        for label, name in enumerate(CLASSES):
            for _ in range(PER_GROUP):
                n += 1
                sub = f"{n:03d}"
                mark = shortcut and site == 1 and name == "tumour"
                volume = head(rng, name == "tumour", mark)
                folder = root / f"sub-{sub}" / "anat"
                folder.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(volume, np.diag([SPACING, SPACING, SPACING, 1.0])),
                         folder / f"sub-{sub}_T1w.nii.gz")
                (folder / f"sub-{sub}_T1w.json").write_text(json.dumps(
                    {"Manufacturer": f"Vendor{site}", "MagneticFieldStrength": 1.5 * site}))
                participants.append(f"sub-{sub}\tsite{site}\t{40 + n}")
                volumes.append(volume)
                labels.append(label)
                if mark:
                    marked.append(f"sub-{sub}__anat__sub-{sub}_T1w")
    (root / "participants.tsv").write_text("\n".join(participants) + "\n")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "planted", "BIDSVersion": "1.9.0"}))
    return volumes, labels, marked


def train(path: Path, volumes: list[np.ndarray], labels: list[int], epochs: int = 30) -> Path:
    """A tiny cnn3d fitted to the volumes (full batch, one thread: a few seconds), saved in our format.

    The batch-norm statistics are then taken over the whole training set in one pass, so the model in eval
    mode computes what it was trained to."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: more threads only contend
    try:
        model = build_model("cnn3d", **KWARGS)
        x = torch.from_numpy(np.stack(volumes))[:, None]
        y = torch.tensor(labels)
        optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimiser.step()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.reset_running_stats()
                module.momentum = None
        with torch.no_grad():
            model(x)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    spec = InputSpec(dims=3, channels=1, shape=(GRID, GRID, GRID), orientation="RAS", normalization="none")
    save_checkpoint(path, model, architecture="cnn3d", kwargs=KWARGS, class_names=CLASSES, input_spec=spec)
    return path
