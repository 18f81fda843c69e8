"""`mri-lrp calibrate`: read reference scans exactly as `explain` would and write their envelope.

The scans are found and filtered by the run's own code (pipeline.run.calibrate_scans) and preprocessed here
as `explain` does, and the features come from the same rewritten graph `explain` runs (one forward pass per
scan, without relevance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.fitness import checks, intensity
from mri_lrp.fitness.envelope import MIN_REFERENCE, Envelope
from mri_lrp.fitness.features import FeatureTap
from mri_lrp.fitness.score import input_profile
from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import LoadedModel
from mri_lrp.pipeline.read import prepare_or_error
from mri_lrp.scans import ScanRef


def calibrate(loaded: LoadedModel, refs: list[ScanRef], out: str | Path, note: Callable[[str], None] = print,
              minimum: int = MIN_REFERENCE, trim: float | None = None) -> Envelope:
    """Build and write the envelope of the reference scans ``refs``; scans that cannot be read or are out by
    the model-free checks are left out, named in a note. Fewer than ``minimum`` usable scans is a
    SettingsError. ``trim``: leave out the scans that stand apart from the rest (Envelope.trimmed), for a
    batch that is its own reference."""
    model = loaded.model.to("cpu")
    explainer = Explainer(model)  # the forward values do not depend on the rule
    tap = FeatureTap(explainer, model)
    need = checks.input_need(model)
    ids, geometry, profiles, features = [], [], [], []
    for ref in refs:
        prepared = prepare_or_error(ref, loaded.input_spec)
        if isinstance(prepared, ScanError):
            note(f"left out {ref.location}: {prepared.reason}")
            continue
        mi = prepared.model_input
        why = checks.too_small(checks.geometry(mi.space), need)
        prof = input_profile(mi)
        unfit = [why] if why else []
        unfit += checks.value_reasons(checks.raw_stats(prepared.scan.data)) + checks.head_reasons(prof.head_share)
        unfit += checks.geometry_reasons(prof.geometry)[0]
        if unfit:
            note(f"left out {ref.location}: {'; '.join(unfit)}")
            continue
        x = mi.tensor
        samples = x.shape[0] if loaded.input_spec.dims == 2 else 1
        explainer.logits(x if samples > 1 else x.unsqueeze(0))
        got = tap.take(samples)
        if got is None:
            raise SettingsError(f"{ref.location}: no classifier-head features were produced by the forward pass")
        ids.append(ref.scan_id)
        geometry.append(prof.geometry_row())
        profiles.append(prof.intensity)
        features.append(got.mean(dim=0).numpy())
    channels = loaded.input_spec.channels
    env = Envelope.build(loaded.sha256, ids, np.array(geometry).reshape(-1, 7), np.array(profiles),
                         intensity.feature_names(channels), np.array(features), tap.layer, minimum=minimum)
    if trim is not None:
        env = env.trimmed(trim, minimum)
    env.save(out)
    note(f"envelope of {env.count} reference scans written to {out}" +
         (f" ({len(ids) - env.count} standing apart left out)" if env.count < len(ids) else ""))
    return env
