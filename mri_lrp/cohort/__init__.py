"""What the model looks at across a whole run: spectral relevance analysis per class, shortcut flags, group maps.

``mri-lrp cohort OUT`` reads what ``explain`` wrote (each scan's relevance on the model grid, its shortcut
probes and acquisition metadata) and writes ``OUT/cohort/``. The explain-time parts (``probes``, ``scanfacts``)
need only numpy and scipy; the analysis (``run``) imports scikit-learn when it runs.
"""
