"""Curve plots for `evaluate`: mean perturbation curves per rule, and similarity along the randomisation cascade."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mri_lrp.outputs import atomic_path

ORDER_STYLE = {"morf": ("MoRF", "tab:red"), "lerf": ("LeRF", "tab:blue"), "random": ("random", "0.5")}


def plot_curves(path: Path, rows: list[dict[str, Any]], rules: tuple[str, ...]) -> None:
    """One panel per rule: target probability against the replaced share, mean over scans, per order."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rules), figsize=(3.2 * len(rules), 3.0), squeeze=False, sharey=True)
    for ax, rule in zip(axes[0], rules, strict=True):
        for order, (label, colour) in ORDER_STYLE.items():
            by_step: dict[int, list[float]] = defaultdict(list)
            fraction: dict[int, float] = {}
            for r in rows:
                if r["rule"] == rule and r["order"] == order:
                    by_step[r["step"]].append(r["score"])
                    fraction[r["step"]] = r["fraction"]
            steps = sorted(by_step)
            ax.plot([fraction[s] for s in steps], [np.mean(by_step[s]) for s in steps], color=colour, label=label)
        ax.set_title(rule, fontsize=9)
        ax.set_xlabel("share of cubes replaced")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("target probability")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def plot_sanity(path: Path, rows: list[dict[str, Any]], rules: tuple[str, ...]) -> None:
    """Rank correlation of |R| with the trained model's map as more layers are randomised, per rule."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for rule in rules:
        by_count: dict[int, list[float]] = defaultdict(list)
        for r in rows:
            if r["rule"] == rule:
                by_count[r["layers_randomised"]].append(r["spearman_abs"])
        counts = sorted(by_count)
        ax.plot(counts, [np.mean(by_count[c]) for c in counts], marker="o", label=rule)
    ax.set_xlabel("layers randomised (from the output down)")
    ax.set_ylabel("Spearman ρ of |R| with the original")
    ax.set_ylim(-0.1, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
