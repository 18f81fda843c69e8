"""Counts, stage timings and the run manifest (run.json, and one copy per run under runs/ as history)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri_lrp import __version__
from mri_lrp.model.checkpoint import LoadedModel
from mri_lrp.scans.ids import printable
from mri_lrp.scans.refs import Skipped
from mri_lrp.settings import Settings
from mri_lrp.shard import Shard


@dataclass
class RunStats:
    """Counts and stage timings of one run (what run.json and the closing summary report)."""

    found: int = 0
    in_shard: int = 0
    done: int = 0
    resumed: int = 0
    failed: int = 0
    skipped_files: int = 0
    interrupted: str | None = None
    written: int = 0             # scans whose files this run wrote (a full disk's message counts them)
    stages: dict[str, int] = field(default_factory=dict)  # processes and threads per stage (stages.StagePlan)
    stage_seconds: dict[str, float] = field(default_factory=lambda: {
        "read": 0.0, "transfer": 0.0, "explain": 0.0, "write": 0.0})

    def add(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds


def history_path(tables_dir: Path, started: float) -> Path:
    """runs/<start time>.json: a new name per run (a second run within the same second gets its pid)."""
    stamp = time.strftime("%Y-%m-%dT%H%M%S", time.localtime(started))
    path = tables_dir / "runs" / f"{stamp}.json"
    return path.with_name(f"{stamp}_{os.getpid()}.json") if path.exists() else path


def run_manifest(settings: Settings, loaded: LoadedModel, device: torch.device, stats: RunStats,
                 wall: float, shard: Shard | None, fingerprint: str,
                 skipped: Sequence[Skipped] = ()) -> dict[str, Any]:
    """What ran, on what, and what came of it. ``roots`` traces each scan's ``source`` (relative to its root)
    back to a folder; ``skipped`` lists every input that was not explained, with the reason."""
    import nibabel
    import pydicom

    busy = stats.stage_seconds["explain"] + stats.stage_seconds["transfer"]
    return {
        "tool": "mri-lrp", "version": __version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "nibabel": nibabel.__version__, "pydicom": pydicom.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
        "settings": settings.to_json(),
        "roots": [{"given": printable(str(p)), "resolved": printable(os.path.realpath(p))} for p in settings.scans],
        "fingerprint": fingerprint,
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "architecture": loaded.architecture,
                       "classes": loaded.class_names, "input_spec": loaded.input_spec.to_dict(),
                       "demo": loaded.is_demo, "assumed": loaded.assumed},
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "counts": {"found": stats.found, "in_shard": stats.in_shard, "done": stats.done,
                   "resumed": stats.resumed, "failed": stats.failed, "skipped_files": stats.skipped_files},
        "interrupted": stats.interrupted,
        "stages": stats.stages,
        "skipped": [{"path": printable(item.path), "reason": item.reason} for item in skipped],
        "seconds": {"wall": round(wall, 3), **{k: round(v, 3) for k, v in stats.stage_seconds.items()},
                    "device_busy_fraction": round(busy / wall, 3) if wall > 0 else None},
    }

