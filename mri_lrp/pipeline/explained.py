"""The value the device stage hands to the writers: one scan's model-space relevance and its numbers.

It lives below both stages so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mri_lrp.folds import FoldMaps
from mri_lrp.pipeline.read import Prepared


@dataclass
class Explained:
    """One scan's model-space relevance (one map per target) and its numbers, ready to be written."""

    prepared: Prepared
    relevance: torch.Tensor            # (T, *model sample shape) or (T, S, ...) for slice models; on CPU
    probs: np.ndarray                  # (K,) scan-level class probabilities
    targets: list[int]
    output_relevance: list[float]
    absorbed: list[float]
    output_abs: list[float]            # Σ |R_out| per target: the conservation error's scale
    seconds: float
    fitness: dict[str, Any] = field(default_factory=dict)  # fitness.score.FITNESS_COLUMNS of the scan
    folds: FoldMaps | None = None      # a fold ensemble: each fold's maps; relevance and probs are their means
