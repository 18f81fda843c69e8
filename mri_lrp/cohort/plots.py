"""The cohort's pictures: the eigengap per class, the 2D layout by cluster, a cluster's mean map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mri_lrp.outputs import atomic_path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_eigengap(path: Path, classes: list[tuple[str, np.ndarray, int, str]]) -> None:
    """Per class (name, eigenvalues, k, how k was chosen): the smallest eigenvalues with the chosen k marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(classes)), figsize=(3.4 * max(1, len(classes)), 3.0), squeeze=False)
    for ax, (name, values, k, how) in zip(axes[0], classes, strict=False):
        if len(values):
            ax.plot(np.arange(1, len(values) + 1), values, "o-", ms=3, color="tab:blue")
            ax.axvline(k + 0.5, color="tab:red", ls="--", lw=1)
        ax.set_title(f"{name}: k = {k} ({how})", fontsize=9)
        ax.set_xlabel("eigenvalue index")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised Laplacian eigenvalue")
    _save(fig, path)


def plot_embedding(path: Path, classes: list[tuple[str, np.ndarray, np.ndarray, list[str], set[str]]]) -> None:
    """Per class (name, layout, labels, cluster names, flagged names): the t-SNE layout coloured by cluster;
    flagged clusters drawn with a black edge and a star in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(classes)), figsize=(3.8 * max(1, len(classes)), 3.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, layout, labels, names, flagged) in zip(axes[0], classes, strict=False):
        for c, cluster in enumerate(names):
            at = labels == c
            mark = cluster in flagged
            ax.scatter(layout[at, 0], layout[at, 1], s=14, color=cmap(c % 10),
                       edgecolors="black" if mark else "none", linewidths=0.8,
                       label=f"{cluster}{' *' if mark else ''} ({int(at.sum())})")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("t-SNE of the spectral embedding (* flagged: a candidate to look at)", fontsize=9)
    _save(fig, path)


def plot_mean(path: Path, volume: np.ndarray, title: str) -> None:
    """Three orthogonal slices through the voxel of highest mean relevance, signed colours around 0."""
    import matplotlib.pyplot as plt

    peak = np.unravel_index(int(np.argmax(volume)), volume.shape)
    vmax = float(np.abs(volume).max()) or 1.0
    views = [(volume[peak[0], :, :], "x"), (volume[:, peak[1], :], "y"), (volume[:, :, peak[2]], "z")]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.2))
    for ax, (plane, axis) in zip(axes, views, strict=True):
        image = ax.imshow(plane.T, origin="lower", cmap="seismic", vmin=-vmax, vmax=vmax)
        ax.set_title(f"{axis} = {peak['xyz'.index(axis)]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean normalised relevance")
    fig.suptitle(f"{title} (model grid, slices through the peak voxel {tuple(int(i) for i in peak)})", fontsize=9)
    _save(fig, path)
