"""mri-lrp: Layer-wise Relevance Propagation for MRI classifiers, from scan folders to heatmaps and tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"  # the one place the version is stated (pyproject.toml reads it)

__all__ = ["Explainer", "Explanation", "ScanExplanation", "explain", "explain_scan", "__version__"]

if TYPE_CHECKING:
    from mri_lrp.api import ScanExplanation, explain_scan
    from mri_lrp.lrp import Explainer, Explanation, explain

# Imported on first use, so that `mri-lrp` can start its worker server before torch is imported.
_LAZY = {"ScanExplanation": "mri_lrp.api", "explain_scan": "mri_lrp.api", "Explainer": "mri_lrp.lrp",
         "Explanation": "mri_lrp.lrp", "explain": "mri_lrp.lrp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mri_lrp' has no attribute {name!r}")
