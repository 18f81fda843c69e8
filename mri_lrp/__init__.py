"""mri-lrp: Layer-wise Relevance Propagation for MRI classifiers, from scan folders to heatmaps and tables."""

from mri_lrp.lrp import Explainer, Explanation, explain

__version__ = "0.1.0"
__all__ = ["Explainer", "Explanation", "explain", "__version__"]
