"""The streaming run behind `mri-lrp explain`: read -> batch -> explain -> write, with resume and shards.

The stages, one module each: `workers` (where reader and writer processes come from), `read` (workers read
and preprocess a bounded number of scans ahead), `batch` (device batches through the explainer), `write`
(per-scan files in writer processes, the done marker last), `resume` (which scans are already done),
`manifest` (counts, timings, run.json), `signals` (a clean stop on SIGINT/SIGTERM), and `run` which wires them.
A scan counts as done only when its marker file exists with the run's fingerprint, so a kill at any point loses
at most the scans in flight, and the next run redoes exactly those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["run_explain"]

if TYPE_CHECKING:
    from mri_lrp.pipeline.run import run_explain


def __getattr__(name: str) -> Any:
    if name == "run_explain":  # on first use: `pipeline.workers` must import without torch
        from mri_lrp.pipeline.run import run_explain

        return run_explain
    raise AttributeError(f"module 'mri_lrp.pipeline' has no attribute {name!r}")
