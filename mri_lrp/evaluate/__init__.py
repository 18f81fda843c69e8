"""Evidence for choosing a rule: region perturbation (MoRF/LeRF/random, AOPC) and the cascading randomisation
test, batched on the user's own model and scans."""

from mri_lrp.evaluate.run import EvaluateOptions, run_evaluate

__all__ = ["EvaluateOptions", "run_evaluate"]
