"""`explain --dry-run`: what a run would do, from the run's own loading, discovery, shard and rule steps.

Only headers are read and the model is loaded on the CPU; nothing is written, so a config can be checked on a
login node before a job is queued.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from mri_lrp.model.checkpoint import describe_model
from mri_lrp.pipeline.run import find_scans, load_model, model_notices, resolve_target, rule_params, select_shard
from mri_lrp.scans import ScanRef, Skipped
from mri_lrp.scans.cases import channel_files_text
from mri_lrp.settings import Settings
from mri_lrp.shard import Shard

_LISTED = 50  # scans and skipped paths listed one per line; the rest are counted


@dataclass
class Plan:
    """The scans a run would explain, the ones it would skip, and the model and rules it would use."""

    settings: Settings
    found: int
    refs: list[ScanRef]
    skipped: list[Skipped]
    shard: Shard | None
    model: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        s, m = self.settings, self.model
        out = [f"plan (dry run: nothing is explained or written; output would go to {s.out})",
               f"scans: {self.found} found, {len(self.skipped)} skipped"]
        if self.shard is not None:
            out.append(f"shard: {self.shard.index}/{self.shard.count}: {len(self.refs)} of {self.found} scans")
        for ref in self.refs[:_LISTED]:
            channels = f"  channels {channel_files_text(ref) or ', '.join(ref.channels)}" \
                if getattr(ref, "channels", ()) else ""
            fails = f"  will fail: {ref.error}" if getattr(ref, "error", "") else ""
            out.append(f"  {ref.scan_id}\t{ref.kind}\t{ref.location}{channels}{fails}")
            out += [f"    {note}" for note in getattr(ref, "notes", ())]  # e.g. dataset.json contradicts the model
        if len(self.refs) > _LISTED:
            out.append(f"  ... and {len(self.refs) - _LISTED} more")
        for item in self.skipped[:_LISTED]:
            out.append(f"  skipped {item.path}: {item.reason}")
        if len(self.skipped) > _LISTED:
            out.append(f"  ... and {len(self.skipped) - _LISTED} more skipped")
        spec = ", ".join(f"{k}={v}" for k, v in m["input_spec"].items())
        out += [f"model: {m['path']} ({m['architecture']}, {m['parameters']:,} parameters, sha256 "
                f"{m['sha256'][:12]})",
                *([f"fold ensemble: {len(s.checkpoints)} checkpoints, loaded and agreeing on the input spec and "
                   f"classes (the model shown is fold 0): {', '.join(s.checkpoints)}"] if s.checkpoints else []),
                f"classes: {', '.join(m['classes'])}",
                *(f"warning: {w}" for w in self.warnings),
                f"input spec: {spec}",
                f"target: {s.target} · init: {s.init} · resume: {'on' if s.resume else 'off'}",
                "rule per layer:"]
        out += [f"  {layer['name']}\t{layer['type']}\t{layer['rule']}" for layer in m["layers"]]
        return out


def make_plan(settings: Settings) -> Plan:
    """Everything `explain` decides before its first scan is read, for these settings."""
    loaded = load_model(settings)
    resolve_target(settings.target, loaded.class_names)  # a bad --target fails here as it would in the run
    params = {k: v for k, v in rule_params(settings).items() if k not in ("rule", "composite")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = describe_model(loaded, rule=settings.rule, composite=settings.composite, **params)
    refs, skipped = find_scans(settings, loaded)
    found = len(refs)
    shard, refs = select_shard(refs, settings)
    notices = [note.removeprefix("warning: ") for note in model_notices(loaded)]
    return Plan(settings, found, refs, skipped, shard, model, [*notices, *(str(w.message) for w in caught)])
