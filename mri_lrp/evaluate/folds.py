"""`evaluate` with a fold ensemble: how far each rule's maps agree across the folds on the same scans.

Perturbation and the randomisation test score fold 0 (they ask whether a map is faithful to one network);
``fold_stability`` asks whether the rule gives the same map when only the training fold changes: the mean
pairwise correlation of the folds' maps for the same scan and class (the ensemble's), in the model's grid.
A rule whose maps disagree across folds ranks below those that agree (``UNSTABLE_BELOW``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mri_lrp.folds import map_agreement
from mri_lrp.lrp import Explainer

#: Rules whose mean fold stability is below this rank after the stable ones.
UNSTABLE_BELOW = 0.5


def ensemble_target(explainers: Sequence[Explainer], batch: torch.Tensor, dims: int) -> int:
    """The ensemble's class for one scan: the argmax of the folds' mean probability (slice models: and slices)."""
    probs = torch.stack([torch.softmax(e.logits(batch).double(), dim=1) for e in explainers]).mean(0)
    return int(probs.mean(0).argmax()) if dims == 2 else int(probs[0].argmax())


def fold_stability(maps: Sequence[torch.Tensor]) -> float:
    """The mean pairwise correlation of one scan's maps from every fold (same rule, same class)."""
    return map_agreement(torch.stack([m.detach().double().cpu() for m in maps]).numpy())


def unstable(row: Mapping[str, Any]) -> bool:
    """Whether a ranking row's rule gives maps that disagree across folds (False without folds)."""
    value = row.get("fold_stability", "")
    return value != "" and value < UNSTABLE_BELOW
