"""Counts, stage timings and the run manifest (run.json)."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mri_lrp import __version__
from mri_lrp.model.checkpoint import LoadedModel
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
    stage_seconds: dict[str, float] = field(default_factory=lambda: {
        "read": 0.0, "transfer": 0.0, "explain": 0.0, "write": 0.0})

    def add(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds




def run_manifest(settings: Settings, loaded: LoadedModel, device: torch.device, stats: RunStats,
                 wall: float, shard: Shard | None, fingerprint: str) -> dict[str, Any]:
    import nibabel
    import pydicom

    busy = stats.stage_seconds["explain"] + stats.stage_seconds["transfer"]
    return {
        "tool": "mri-lrp", "version": __version__,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "nibabel": nibabel.__version__, "pydicom": pydicom.__version__},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - wall)),
        "settings": settings.to_json(),
        "fingerprint": fingerprint,
        "checkpoint": {"path": str(loaded.path), "sha256": loaded.sha256, "architecture": loaded.architecture,
                       "classes": loaded.class_names, "input_spec": loaded.input_spec.to_dict()},
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "counts": {"found": stats.found, "in_shard": stats.in_shard, "done": stats.done,
                   "resumed": stats.resumed, "failed": stats.failed, "skipped_files": stats.skipped_files},
        "interrupted": stats.interrupted,
        "seconds": {"wall": round(wall, 3), **{k: round(v, 3) for k, v in stats.stage_seconds.items()},
                    "device_busy_fraction": round(busy / wall, 3) if wall > 0 else None},
    }

