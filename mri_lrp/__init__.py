"""mri-lrp: Layer-wise Relevance Propagation for MRI classifiers, from scan folders to heatmaps and tables."""

__version__ = "0.1.0"
