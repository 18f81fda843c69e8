"""The checkpoints of a fold ensemble: loaded one by one, and refused before any scan is read when they disagree.

The folds of one cross-validation share the network's input and output contract, and one read of a scan feeds
them all; a fold trained on another grid, normalisation or class list would get an input or a class index that
means something else to it. So every fold's input spec and class names must equal fold 0's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mri_lrp.errors import CheckpointError
from mri_lrp.model.checkpoint import LoadedModel


@dataclass(frozen=True)
class FoldSource:
    """Where one fold came from: what folds.csv and the writers need of it (small: sent with every scan)."""

    index: int
    path: str
    sha256: str


def load_folds(paths: Sequence[str], load: Callable[[str], LoadedModel]) -> list[LoadedModel]:
    """Every fold, loaded by ``load`` (the run's loader, so --model, class names and [input_spec] apply to
    each), checked against fold 0."""
    folds = [load(path) for path in paths]
    check_folds(folds)
    return folds


def check_folds(folds: Sequence[LoadedModel]) -> None:
    """Refuse folds whose class names or input spec differ from fold 0's, naming the fold and the difference."""
    first = folds[0]
    for k, fold in enumerate(folds[1:], start=1):
        if fold.class_names != first.class_names:
            raise CheckpointError(str(fold.path), f"fold {k}: class names {fold.class_names} differ from fold 0's "
                                                  f"{first.class_names} ({first.path})")
        ours, theirs = first.input_spec.to_dict(), fold.input_spec.to_dict()
        differ = [f"{key} {_shown(theirs.get(key))} (fold 0: {_shown(ours.get(key))})"
                  for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
        if differ:
            raise CheckpointError(str(fold.path), f"fold {k}: input spec differs from fold 0's ({first.path}): "
                                                  + ", ".join(differ))


def _shown(value: Any) -> str:
    """A spec value as a config would spell it (lists, not tuples; 'none' when unset)."""
    return "none" if value is None else json.dumps(value, default=str)


def fold_sources(folds: Sequence[LoadedModel]) -> tuple[FoldSource, ...]:
    return tuple(FoldSource(k, str(f.path), f.sha256) for k, f in enumerate(folds))


def ensemble_sha256(folds: Sequence[LoadedModel]) -> str:
    """One digest of the folds in their order: a resumed run redoes every scan when any fold changed."""
    text = "folds:" + ",".join(f.sha256 for f in folds)
    return hashlib.sha256(text.encode()).hexdigest()


def fold_manifest(folds: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """run.json's record of the folds: path, sha256 and architecture of each."""
    return [{"fold": k, "path": str(f.path), "sha256": f.sha256, "architecture": f.architecture}
            for k, f in enumerate(folds)]
