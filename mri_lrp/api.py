"""`explain_scan`: one scan or case explained from Python, through the same stages as `mri-lrp explain`.

Settings are built as the command line builds them (same names, defaults, config files and validation); the
scan is found, read and prepared by the pipeline's reader, explained by its batch job and written by its scan
writer into a private folder, from which the result is read back. So what a notebook sees is, file for file,
what `mri-lrp explain` writes for that scan.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.outputs import DONE_MARKER
from mri_lrp.settings import INPUT_SPEC_OPTIONS, Settings, build_settings, input_spec_options

#: The summary columns of a fold ensemble's agreement (``ScanExplanation.agreement``).
FOLD_SUMMARY_COLUMNS = ("folds", "fold_vote", "prob_std", "map_agreement", "region_agreement", "outlier_fold")

#: `explain` options that belong to a batch run, not to one scan.
RUN_OPTIONS = ("scans", "out", "shard", "resume", "quiet", "workers", "by_class", "layout")


@dataclass
class ScanExplanation:
    """One explained scan: relevance on the scan's own voxel grid, probabilities, regions and the overlay."""

    scan_id: str
    source: str
    relevance: np.ndarray              # float32, the scan's grid; 4D (..., class) with target="all"
    affine: np.ndarray                 # the scan's voxel -> world (RAS mm) matrix
    probs: dict[str, float]            # class name -> probability, in the model's class order
    predicted_class: str
    targets: list[str]                 # the class each relevance map explains
    summary: dict[str, Any]            # the scan's row of summary.csv
    region_rows: list[dict[str, Any]]  # the scan's rows of regions.csv, numbers as numbers
    overlays: list[Path]               # overlay PNG per target, as `explain` wrote them
    folder: Path                       # the private folder holding the scan's files
    _tmp: tempfile.TemporaryDirectory = field(repr=False)
    # A fold ensemble (checkpoint=[...]): relevance is the folds' mean; each fold's map, its folds.csv row
    # and the agreement columns of the summary row (folds, fold_vote, prob_std, map_agreement, ...).
    fold_relevance: np.ndarray | None = None   # float32 (k, *relevance.shape)
    folds: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def regions(self) -> Any:
        """The region table: a pandas DataFrame when pandas is installed, else a list of dicts."""
        try:
            import pandas as pd
        except ImportError:
            return [dict(row) for row in self.region_rows]
        return pd.DataFrame(self.region_rows)

    def plot(self, target: str | None = None) -> Any:
        """The overlay `explain` draws (scan in grey, signed relevance on top) as a matplotlib Figure.

        ``target``: with target="all", the class whose map to show (default: the predicted class).
        """
        from matplotlib.figure import Figure
        from matplotlib.image import imread

        wanted = target or (self.predicted_class if self.predicted_class in self.targets else self.targets[0])
        if wanted not in self.targets:
            raise SettingsError(f"plot: no relevance map for class '{wanted}' (maps: {', '.join(self.targets)})")
        picture = imread(self.overlays[self.targets.index(wanted)])
        height, width = picture.shape[:2]
        fig = Figure(figsize=(width / 100, height / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(picture)
        ax.set_axis_off()
        return fig

    def save(self, folder: str | Path) -> Path:
        """Copy the scan's files (relevance.nii.gz, overlay, regions.csv, ...) into ``folder``; returns it."""
        target = Path(folder)
        shutil.copytree(self.folder, target, dirs_exist_ok=True)
        return target


def explain_scan(path: str | Path, checkpoint: str | Path | list[str | Path] | None = None,
                 **options: Any) -> ScanExplanation:
    """Explain one scan or case (a NIfTI file, a DICOM series folder) as `mri-lrp explain` would.

    ``checkpoint`` may be a list (or a glob) of fold checkpoints: the result is then the ensemble's, with
    ``fold_relevance``, ``folds`` and ``agreement`` filled in.

    ``options`` are explain's options by their Python names (``rule="epsilon"``, ``target="all"``,
    ``masks="masks/"``, ``input_shape=(96, 96, 96)``, ``config="my.toml"``, ...), with the same defaults.
    Raises ``SettingsError``/``CheckpointError`` for bad options or models and ``ScanError`` when the scan
    cannot be read or explained.
    """
    from mri_lrp.lrp import Explainer
    from mri_lrp.model.folds import ensemble_sha256
    from mri_lrp.pipeline.batch import Job
    from mri_lrp.pipeline.folds import FoldJob
    from mri_lrp.pipeline.manifest import RunStats
    from mri_lrp.pipeline.read import prepare
    from mri_lrp.pipeline.run import (
        find_scans,
        load_ensemble,
        load_model,
        model_notices,
        resolve_device,
        resolve_target,
        rule_params,
        scan_writer,
    )
    from mri_lrp.pipeline.write import WriteJob
    from mri_lrp.progress import Reporter

    run_only = sorted(set(options) & set(RUN_OPTIONS))
    if run_only:
        raise SettingsError(f"explain_scan: {', '.join(run_only)}: options of a batch run (mri-lrp explain), "
                            "not of one scan")
    known = {f.name for f in fields(Settings)} | set(INPUT_SPEC_OPTIONS) | {"config"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SettingsError(f"explain_scan: unknown option(s) {', '.join(unknown)} (known: "
                            f"{', '.join(sorted(known - set(RUN_OPTIONS)))})")
    config = options.pop("config", None)
    spec = input_spec_options(**{k: options.pop(k) for k in list(options) if k in INPUT_SPEC_OPTIONS})
    tmp = tempfile.TemporaryDirectory(prefix="mri-lrp-")
    given = None if checkpoint is None else [str(c) for c in
                                             (checkpoint if isinstance(checkpoint, (list, tuple)) else [checkpoint])]
    cli = {**options, "scans": [str(path)], "checkpoint": given,
           "out": tmp.name, "workers": 0, "quiet": True, "resume": False}
    settings = build_settings(cli, None if config is None else str(config), input_spec=spec)

    folds = load_ensemble(settings) if settings.checkpoints else []
    loaded = folds[0] if folds else load_model(settings)
    for note in model_notices(loaded):  # the demo model, an assumed input spec: as the run's log says
        warnings.warn(note.removeprefix("warning: "), UserWarning, stacklevel=2)
    refs, _ = find_scans(settings, loaded)
    if len(refs) != 1:
        found = f"{len(refs)} scans ({', '.join(r.scan_id for r in refs[:5])}{', ...' if len(refs) > 5 else ''})"
        raise SettingsError(f"{path}: explain_scan explains one scan or case and found "
                            f"{found if refs else 'none'}; pick one (volume= for a 4D file) or use mri-lrp explain")
    target = resolve_target(settings.target, loaded.class_names)
    device = resolve_device(settings.device)
    explainer = Explainer(loaded.model.to(device), **rule_params(settings))
    fingerprint = settings.fingerprint(ensemble_sha256(folds) if folds else loaded.sha256)
    writer = scan_writer(Path(tmp.name), settings, loaded, fingerprint)
    failures: list[dict[str, Any]] = []
    job_args = (settings, loaded, explainer, target, device, Reporter(quiet=True, stream=io.StringIO()),
                RunStats(), writer, failures)
    explainers = [explainer, *(Explainer(f.model.to(device), **rule_params(settings)) for f in folds[1:])]
    job = FoldJob(folds, explainers, *job_args) if folds else Job(*job_args)

    prepared = prepare(refs[0], loaded.input_spec)
    explained = job.explain_one(prepared)
    if explained is None:
        failure = failures[-1]
        raise ScanError(failure["source"], failure["error"], stage=failure["stage"])
    writer.write(WriteJob.of(explained))
    return _read_back(Path(tmp.name), prepared.scan, explained, loaded.class_names, tmp)


def _read_back(out: Path, scan: Any, explained: Any, class_names: list[str],
               tmp: tempfile.TemporaryDirectory) -> ScanExplanation:
    """The result from the files the writer made (so it is what the command line writes)."""
    import nibabel as nib

    folder = out / "scans" / scan.scan_id
    marker = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    relevance = np.asarray(nib.load(folder / "relevance.nii.gz").dataobj, dtype=np.float32)
    with (folder / "regions.csv").open(newline="", encoding="utf-8") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    overlays = [folder / name for name in marker["files"] if Path(name).name.startswith("overlay")
                and name.endswith(".png")]
    probs = {name: float(p) for name, p in zip(class_names, explained.probs, strict=True)}
    fold_maps = None
    if explained.folds is not None:
        fold_maps = np.stack([np.asarray(nib.load(folder / f"relevance_fold{k}.nii.gz").dataobj, dtype=np.float32)
                              for k in range(len(explained.folds.sources))])
    agreement = {k: marker["summary"][k] for k in FOLD_SUMMARY_COLUMNS if k in marker["summary"]}
    return ScanExplanation(
        scan_id=scan.scan_id, source=scan.source, relevance=relevance, affine=np.array(scan.affine, dtype=float),
        probs=probs, predicted_class=class_names[int(np.argmax(explained.probs))],
        targets=[class_names[t] for t in explained.targets], summary=marker["summary"], region_rows=rows,
        overlays=overlays, folder=folder, _tmp=tmp, fold_relevance=fold_maps, folds=marker.get("folds", []),
        agreement=agreement)


def _number(text: str) -> Any:
    """A CSV cell as int or float when it is one (region ids, sums), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
