"""Input fitness: whether a scan is the kind of input the model was trained on, before anyone reads its heatmap.

``checks`` (model-free: field-of-view coverage, resampling, value range), ``intensity`` (the head's intensity
profile), ``features`` (the classifier head's input, from LRP's own forward pass), ``envelope`` (the reference
file), ``score`` (ok / doubtful / out per scan) and ``calibrate`` (the envelope from reference scans).
"""
