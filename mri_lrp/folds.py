"""How far the folds of an ensemble agree on one scan: prediction, relevance maps and region ranks.

Retrained copies of one network can give very different heatmaps, so agreement across folds is evidence about
whether a map can be trusted. The figures here are plain and comparable across runs:

* ``map_agreement``: the mean pairwise Pearson correlation of the folds' maps (in the model's input grid);
* ``map_correlation`` of a fold: its correlation with the mean of the *other* folds (leave-one-out);
* ``outlier_fold``: the fold of lowest leave-one-out correlation, when it lies at least ``OUTLIER_GAP`` below
  the median of the others' (three folds or more: with two, both correlations are the same number);
* ``region_agreement``: Kendall's W of the folds' region ranks (1 = every fold ranks the regions alike,
  0 = no agreement), with the correction for ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mri_lrp.model.folds import FoldSource

#: How far below the others' median leave-one-out correlation a fold's must be to stand apart.
OUTLIER_GAP = 0.3


@dataclass
class FoldMaps:
    """Each fold's model-space relevance and probabilities for one scan; ``Explained.relevance`` is their mean."""

    relevance: np.ndarray              # float32 (k, T, *model sample shape): fold k's map per target
    probs: np.ndarray                  # float64 (k, K): each fold's own class probabilities
    sources: tuple[FoldSource, ...]    # checkpoint path and sha256 per fold


def correlations(maps: np.ndarray) -> np.ndarray:
    """(k, k) Pearson correlations of k flattened maps (float64). A constant map correlates 0 with the others."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred * centred).sum(axis=1))
    safe = np.where(norms > 0, norms, 1.0)
    unit = centred / safe[:, None]
    corr = unit @ unit.T
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


def map_agreement(maps: np.ndarray) -> float:
    """The mean pairwise correlation of the folds' maps (1.0 for a single map)."""
    k = len(maps)
    if k < 2:
        return 1.0
    corr = correlations(maps)
    return float(corr[np.triu_indices(k, 1)].mean())


def leave_one_out(maps: np.ndarray) -> list[float]:
    """Each fold's correlation with the mean of the other folds' maps."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    k = len(flat)
    if k < 2:
        return [1.0] * k
    total = flat.sum(axis=0)
    out = []
    for i in range(k):
        others = (total - flat[i]) / (k - 1)
        out.append(float(correlations(np.stack([flat[i], others]))[0, 1]))
    return out


def outlier(loo: list[float]) -> int | None:
    """The fold whose map stands apart (its leave-one-out correlation ``OUTLIER_GAP`` below the others'
    median), else None; needs three folds."""
    if len(loo) < 3:
        return None
    worst = int(np.argmin(loo))
    rest = [r for i, r in enumerate(loo) if i != worst]
    return worst if float(np.median(rest)) - loo[worst] >= OUTLIER_GAP else None


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (largest first), ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def kendall_w(scores: np.ndarray) -> float:
    """Kendall's coefficient of concordance of m raters (rows) over n items (columns), tie-corrected;
    NaN when it is undefined (fewer than two items, or every rater ties every item)."""
    scores = np.asarray(scores, dtype=np.float64)
    m, n = scores.shape
    if n < 2 or m < 1:
        return float("nan")
    ranks = np.stack([average_ranks(row) for row in scores])
    totals = ranks.sum(axis=0)
    s = float(((totals - totals.mean()) ** 2).sum())
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts ** 3 - counts).sum())
    denom = m * m * (n ** 3 - n) - m * ties
    return s * 12.0 / denom if denom > 0 else float("nan")


def vote(probs: np.ndarray, ensemble_class: int) -> float:
    """The share of folds whose own prediction is the ensemble's."""
    own = np.argmax(probs, axis=1)
    return float((own == ensemble_class).mean())


def split_note(probs: np.ndarray, ensemble_class: int, class_names: list[str]) -> str:
    """A warning when the folds do not all predict the ensemble's class, naming the ones that differ."""
    own = np.argmax(probs, axis=1)
    others = [f"fold {k}: {class_names[int(c)]}" for k, c in enumerate(own) if c != ensemble_class]
    if not others:
        return ""
    agree = len(own) - len(others)
    return (f"folds split on the prediction: {agree} of {len(own)} predict {class_names[ensemble_class]} "
            f"({', '.join(others)})")


def outlier_note(fold: int, loo: list[float], source: FoldSource) -> str:
    """A warning naming the fold whose map stands apart, and its checkpoint."""
    rest = [r for i, r in enumerate(loo) if i != fold]
    return (f"fold {fold}'s relevance map stands apart from the other folds' (correlation {loo[fold]:.2f} with "
            f"their mean; theirs {float(np.median(rest)):.2f} median) [{source.path}]")
