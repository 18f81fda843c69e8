"""mri-lrp: Layer-wise Relevance Propagation for MRI classifiers, from scan folders to heatmaps and tables."""

__version__ = "0.2.0"  # the one place the version is stated (pyproject.toml reads it)

from mri_lrp.api import ScanExplanation, explain_scan  # noqa: E402 - after __version__, which modules import
from mri_lrp.lrp import Explainer, Explanation, explain  # noqa: E402

__all__ = ["Explainer", "Explanation", "ScanExplanation", "explain", "explain_scan", "__version__"]
