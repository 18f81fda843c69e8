"""Evidence for choosing a rule: region perturbation (MoRF/LeRF/random, AOPC) and the cascading randomisation
test, batched on the user's own model and scans."""

from typing import Any

__all__ = ["EvaluateOptions", "run_evaluate"]


def __getattr__(name: str) -> Any:
    # Lazy: the command line reads perturb's choices for its help without loading the whole run.
    if name in __all__:
        from mri_lrp.evaluate import run

        return getattr(run, name)
    raise AttributeError(f"module 'mri_lrp.evaluate' has no attribute {name!r}")
