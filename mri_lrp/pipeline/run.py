"""`mri-lrp explain` from settings to exit code: load, discover, shard, resume, run the job, write the tables."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mri_lrp import __version__
from mri_lrp.errors import DiskFullError, SettingsError, is_disk_full
from mri_lrp.fitness.calibrate import calibrate
from mri_lrp.fitness.envelope import MIN_BATCH, MIN_REFERENCE, Envelope
from mri_lrp.fitness.score import OUT_FACTOR, FitnessCheck, fitness_counts
from mri_lrp.hints import no_scans_hint
from mri_lrp.lrp import Explainer
from mri_lrp.model.checkpoint import DEMO_NOTICE, LoadedModel, load_checkpoint
from mri_lrp.model.folds import ensemble_sha256, fold_manifest, load_folds
from mri_lrp.outputs import (
    DONE_MARKER,
    FAILURE_COLUMNS,
    SKIPPED_COLUMNS,
    atomic_write_json,
    atomic_write_text,
    summary_columns,
    write_csv,
)
from mri_lrp.pipeline.batch import Job
from mri_lrp.pipeline.fold_outputs import FOLD_COLUMNS
from mri_lrp.pipeline.folds import FoldJob, fold_rows
from mri_lrp.pipeline.layout import Layout, write_bids_root
from mri_lrp.pipeline.lock import acquire as acquire_lock
from mri_lrp.pipeline.manifest import RunStats, history_path, run_manifest
from mri_lrp.pipeline.resume import collect_results, input_identity, is_done, outdated, stale_marker
from mri_lrp.pipeline.signals import StopOnSignal
from mri_lrp.pipeline.workers import start_worker_server
from mri_lrp.pipeline.write import ScanWriter, cached_atlas
from mri_lrp.progress import Reporter
from mri_lrp.regions import BY_CLASS_COLUMNS, REGION_COLUMNS, by_class_table
from mri_lrp.scans import ScanRef, Skipped, discover
from mri_lrp.scans.cases import ChannelPlan
from mri_lrp.scans.filters import ScanFilter, apply_filter, why_skipped
from mri_lrp.settings import Settings
from mri_lrp.shard import Shard, assign, local_device_from_env, shard_from_env

EXIT_OK, EXIT_SOME_FAILED, EXIT_NO_SCANS = 0, 3, 4


def run_explain(settings: Settings, reporter: Reporter) -> int:
    """Run the whole job; returns the exit code. Setup errors raise (the CLI maps them to exit 2).

    The log starts with the version and settings (also under --quiet: a cron log must say what ran), and
    the output folder is locked for the run: a second run on the same --out (or shard) is refused.
    """
    reporter.note(start_line(settings), always=True)
    out = Path(settings.out)
    shard = Shard.parse(settings.shard) if settings.shard else shard_from_env(os.environ)
    tables = out / "parts" / f"shard-{shard.index}-of-{shard.count}" if shard else out
    setup = prepare(settings, reporter)  # every usage error before --out exists: none leaves a folder behind
    stats = RunStats()
    created = not out.exists()
    try:
        with acquire_lock(out, tables, time.strftime("%Y-%m-%dT%H:%M:%S%z")) as lock:
            for note in lock.notes:
                reporter.note(f"warning: {note}", always=True)
            return _run_locked(settings, reporter, setup, stats)
    except BaseException as e:
        reporter.stop()
        if created:
            remove_empty_folders(out)
        if is_disk_full(e):
            raise DiskFullError(str(out), stats.written) from None
        raise


@dataclass
class Setup:
    """What a run needs before it touches --out: the model, the class it explains, the device, the rules."""

    loaded: LoadedModel
    target: int | str | None
    device: torch.device
    explainer: Explainer
    fitness: FitnessCheck | None = None  # None until --reference batch has read the run's scans
    folds: list[LoadedModel] = field(default_factory=list)   # a fold ensemble: every fold (loaded is fold 0)
    explainers: list[Explainer] = field(default_factory=list)  # one per fold (explainer is fold 0's)


def prepare(settings: Settings, reporter: Reporter) -> Setup:
    """Load and check everything a usage error can lie in (checkpoint, target, device, rules, atlas)."""
    if settings.workers > 0:  # already running when started by the console entry point
        start_worker_server()  # its imports overlap loading the model and finding the scans
    folds = load_ensemble(settings) if settings.checkpoints else []
    loaded = folds[0] if folds else load_model(settings)
    for note in model_notices(loaded):
        reporter.note(note, always=True)
    target = resolve_target(settings.target, loaded.class_names)
    device = resolve_device(settings.device)
    model = loaded.model.to(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(model, **rule_params(settings))
        explainers = [explainer, *(Explainer(f.model.to(device), **rule_params(settings)) for f in folds[1:])]
    for message in dict.fromkeys(str(w.message) for w in caught):  # once, not once per fold
        reporter.note(f"warning: {message}", always=True)
    if explainer.output_choice:
        reporter.note(f"model output explained: {explainer.output_choice}", always=True)
    if settings.atlas:
        cached_atlas(settings.atlas, settings.atlas_labels)  # a bad atlas is a setup error, before any scan
    # A bad or foreign envelope too; --reference batch is built from the scans, inside the run.
    fitness = None if settings.reference == "batch" else fitness_check(settings, loaded, explainer)
    return Setup(loaded, target, device, explainer, fitness, folds, explainers)


def remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders under it when they hold no file (a run that stopped before writing)."""
    if not top.is_dir():
        return
    for folder, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(folder)
        except OSError:  # holds a file: kept
            pass


def start_line(settings: Settings) -> str:
    """`mri-lrp VERSION explain` and every setting that differs from the default, on one line."""
    defaults = Settings().to_json()
    given = {k: v for k, v in settings.to_json().items() if v != defaults.get(k) or k in ("scans", "out")}
    return f"mri-lrp {__version__} explain: " + " ".join(f"{k}={json.dumps(v)}" for k, v in given.items())


def model_notices(loaded: LoadedModel) -> list[str]:
    """What the user must know about the model before reading any result: the demo model, assumed specs."""
    notes = []
    if loaded.is_demo:
        notes.append(f"warning: {DEMO_NOTICE} [{loaded.path}]")
    if loaded.assumed:
        notes.append(f"warning: {loaded.assumed}")
    return notes


def scan_writer(out: Path, settings: Settings, loaded: LoadedModel, fingerprint: str,
                layout: Layout | None = None) -> ScanWriter:
    """The writer of every scan's files (the run's and explain_scan's)."""
    return ScanWriter(out, settings, loaded.class_names, loaded.input_spec.dims, fingerprint,
                      layout=layout, model_sha256=loaded.sha256, stamp=DEMO_NOTICE if loaded.is_demo else "")


def _run_locked(settings: Settings, reporter: Reporter, setup: Setup, stats: RunStats) -> int:
    t_start = time.time()
    loaded, target, device, explainer = setup.loaded, setup.target, setup.device, setup.explainer
    folds, explainers = setup.folds, setup.explainers
    fitness = setup.fitness or fitness_check(settings, loaded, explainer, reporter)  # --reference batch
    fingerprint = settings.fingerprint(ensemble_sha256(folds) if folds else loaded.sha256)
    if folds:
        reporter.note(f"fold ensemble: {len(folds)} checkpoints, each scan read once and explained by every fold")

    refs, skipped = find_scans(settings, loaded)
    stats.found, stats.skipped_files = len(refs), len(skipped)
    reporter.skipped(skipped)
    if not refs:
        reporter.note(no_scans_hint(settings.scans, skipped), always=True)
    # Planned over every scan before sharding, so all shards give a scan the same BIDS name.
    layout = Layout.plan(settings.layout, [(r.scan_id, r.source, r.volume) for r in refs])
    shard, refs = select_shard(refs, settings)
    if shard is not None:
        reporter.note(f"shard {shard.index}/{shard.count}: {len(refs)} of {stats.found} scans")
    stats.in_shard = len(refs)

    out = Path(settings.out)
    tables_dir = out / "parts" / f"shard-{shard.index}-of-{shard.count}" if shard else out
    tables_dir.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        atomic_write_text(tables_dir / "plan.txt", "".join(f"{r.scan_id}\n" for r in refs))
    if layout.kind == "bids":
        write_bids_root(out, settings)

    refs = [replace(r, identity=tuple(input_identity(r.paths))) for r in refs]
    for r in refs:  # a result made from files since replaced must never be served, even if the redo fails
        if stale_marker(out / "scans" / r.scan_id, fingerprint, list(r.identity)):
            (out / "scans" / r.scan_id / DONE_MARKER).unlink(missing_ok=True)
            reporter.note(f"{r.scan_id}: input files changed since it was explained: redone")
    todo = [r for r in refs if not (settings.resume and is_done(out / "scans" / r.scan_id, fingerprint,
                                                                list(r.identity)))]
    if settings.resume:  # say why finished-looking scans are explained again (one line per reason)
        for why, count in Counter(filter(None, (outdated(out / "scans" / r.scan_id, fingerprint)
                                                for r in todo))).items():
            reporter.note(f"resume: {count} scan(s) {why}: explained again")
    stats.resumed = len(refs) - len(todo)
    if stats.resumed:
        reporter.note(f"resume: {stats.resumed} scans already done with these settings")

    failures: list[dict[str, Any]] = []
    writer = scan_writer(out, settings, loaded, fingerprint, layout)
    job_args = (settings, loaded, explainer, target, device, reporter, stats, writer, failures, fitness)
    job = FoldJob(folds, explainers, *job_args) if folds else Job(*job_args)
    with StopOnSignal() as stop:
        job.stop = stop
        job.run(todo)
    if job.disk_full:  # the tables would fail alike; a rerun resumes from the scans written
        raise DiskFullError(str(out), stats.written)

    skipped = [*skipped, *(Skipped(r.source, f"not explained (--skip-unfit): {why}") for r, why in job.unfit)]
    stats.skipped_files += len(job.unfit)
    summary, regions = collect_results(out, refs, fingerprint)
    write_csv(tables_dir / "summary.csv", summary, summary_columns(loaded.input_spec.channel_names))
    write_csv(tables_dir / "regions.csv", regions, [*REGION_COLUMNS, "target_class"])
    write_csv(tables_dir / "failures.csv", failures, FAILURE_COLUMNS)
    write_csv(tables_dir / "skipped.csv", [{"path": s.path, "reason": s.reason} for s in skipped], SKIPPED_COLUMNS)
    if folds:
        write_csv(tables_dir / "folds.csv", fold_rows(out, refs, fingerprint), FOLD_COLUMNS)
    if settings.by_class:
        write_csv(tables_dir / "regions_by_class.csv", by_class_table(summary, regions), BY_CLASS_COLUMNS)
    stats.done = len(summary)
    wall = time.time() - t_start
    manifest = run_manifest(settings, loaded, device, stats, wall, shard, fingerprint, skipped=skipped)
    manifest["fitness"] = fitness_counts(summary, len(job.unfit))
    if folds:
        manifest["folds"] = fold_manifest(folds)
    atomic_write_json(tables_dir / "run.json", manifest)
    atomic_write_json(history_path(tables_dir, t_start), manifest)
    if shard is None:  # a shard's tables are a part: the merge writes the report
        write_report_or_warn(out, reporter)
    reporter.finish(stats, wall)
    if stats.interrupted:
        return 128 + (signal.SIGTERM if stats.interrupted == "SIGTERM" else signal.SIGINT)
    if not refs or (stats.done == 0 and stats.failed and all(f["stage"] == "read" for f in failures)):
        return EXIT_NO_SCANS
    return EXIT_SOME_FAILED if failures else EXIT_OK


def write_report_or_warn(out: Path, reporter: Reporter) -> None:
    """Write OUT/report.html; a report that cannot be built costs a warning, never the run's results."""
    from mri_lrp.report import write_report

    try:
        write_report(out)
    except Exception as e:  # noqa: BLE001 - the tables are written; the page is a view of them
        if is_disk_full(e):  # not the report's fault: the run says so, as for any other file
            raise
        reporter.note(f"warning: report.html not written ({type(e).__name__}: {e}); "
                      f"try `mri-lrp report {out}`", always=True)


def calibrate_scans(settings: Settings, out: str | Path, note: Callable[[str], None],
                    minimum: int = MIN_REFERENCE, trim: float | None = None) -> Envelope:
    """The envelope of the scans the settings name, found and filtered as explain finds them
    (`mri-lrp calibrate`, and `--reference batch`)."""
    loaded = load_model(settings)
    refs, skipped = find_scans(settings, loaded)
    for s in skipped:
        note(f"skipped {s.path}: {s.reason}")
    return calibrate(loaded, refs, out, note, minimum=minimum, trim=trim)


def fitness_check(settings: Settings, loaded: LoadedModel, explainer: Explainer,
                  reporter: Reporter | None = None) -> FitnessCheck:
    """The run's fitness checks, with the --reference envelope when given (refused when made for another
    checkpoint, unless --reference-any-model). ``--reference batch`` first calibrates on the run's own scans
    (at least MIN_BATCH of them; one extra read and forward pass per scan) into OUT/reference_batch.npz."""
    envelope = None
    if settings.reference == "batch":
        note = (lambda line: reporter.note(f"reference batch: {line}")) if reporter else (lambda line: None)
        envelope = calibrate_scans(settings, Path(settings.out) / "reference_batch.npz", note, minimum=MIN_BATCH,
                                   trim=OUT_FACTOR)
    elif settings.reference:
        envelope = Envelope.load(settings.reference)
        envelope.check_model(settings.reference, loaded.sha256, settings.reference_any_model)
    return FitnessCheck(loaded.model, explainer, envelope)


def load_model(settings: Settings) -> LoadedModel:
    """The checkpoint as the settings name it (the demo model when none), in eval mode on the CPU; for a fold
    ensemble, fold 0 once every fold has loaded and agrees with it."""
    if settings.checkpoints:
        return load_ensemble(settings)[0]
    return load_checkpoint(
        settings.checkpoint, model=settings.model, model_kwargs=settings.model_kwargs or None,
        class_names=list(settings.class_names) if settings.class_names else None,
        input_spec=settings.input_spec or None, trust_checkpoint=settings.trust_checkpoint,
        model_output=settings.model_output,
    )


def load_ensemble(settings: Settings) -> list[LoadedModel]:
    """Every fold of ``checkpoints``, loaded as one checkpoint would be, refused when they disagree."""
    return load_folds(settings.checkpoints,
                      lambda path: load_model(replace(settings, checkpoint=path, checkpoints=())))


def select_shard(refs: list[ScanRef], settings: Settings) -> tuple[Shard | None, list[ScanRef]]:
    """This process's shard (``--shard``, else SLURM/torchrun variables, else none) and its scans."""
    shard = Shard.parse(settings.shard) if settings.shard else shard_from_env(os.environ)
    if shard is None:
        return None, refs
    mine = set(assign([r.scan_id for r in refs], shard))
    return shard, [r for r in refs if r.scan_id in mine]


def find_scans(settings: Settings, loaded: LoadedModel) -> tuple[list[ScanRef], list[Skipped]]:
    """The scans (or cases) the settings name, filters applied, and what was skipped; the run, --dry-run and
    explain_scan all find their scans here."""
    scan_filter = ScanFilter(settings.modality, settings.include, settings.exclude, settings.series,
                             settings.keep_derived, volume_model=loaded.input_spec.dims == 3)
    # A multi-channel model's files are filtered one by one before they are grouped into cases.
    refs, skipped = discover(list(settings.scans), volume=settings.volume, derivatives=settings.derivatives,
                             channels=ChannelPlan.of(loaded.input_spec),
                             pre_filter=lambda ref: why_skipped(ref, scan_filter))
    refs, skipped = exclude_own_files(refs, skipped, settings)
    refs, filtered = apply_filter(refs, scan_filter)
    return refs, [*skipped, *filtered]


def exclude_own_files(refs: list[ScanRef], skipped: list, settings: Settings) -> tuple[list[ScanRef], list]:
    """Masks, atlas and earlier outputs may sit inside the scanned folder: they are inputs of another kind."""
    own = [(Path(p).resolve(), why) for p, why in (
        (settings.masks, "under --masks"), (settings.out, "under --out"), (settings.atlas, "the --atlas image"))
        if p]
    kept = []
    for ref in refs:
        files = [Path(p).resolve() for p in ref.paths]
        why = next((why for root, why in own if files and all(f == root or root in f.parents for f in files)),
                   None)
        if why is None:
            kept.append(ref)
        else:
            skipped.append(Skipped(ref.source, f"{why}, not a scan"))
    return kept, skipped


def rule_params(settings: Settings) -> dict[str, Any]:
    """The Explainer's keyword arguments from the settings."""
    return {
        "rule": settings.rule, "alpha": settings.alpha, "beta": settings.beta, "epsilon": settings.epsilon,
        "gamma": settings.gamma, "composite": settings.composite, "overrides": settings.overrides or None,
        "model_output": settings.model_output,
    }


def resolve_target(target: str, class_names: list[str]) -> int | str | None:
    """'predicted' -> None, 'all' -> 'all', an index or a class name -> the class index."""
    if target == "predicted":
        return None
    if target == "all":
        return "all"
    if target in class_names:
        return class_names.index(target)
    if target.lstrip("-").isdigit():
        index = int(target)
        if 0 <= index < len(class_names):
            return index
        raise SettingsError(f"--target: class index {index} is out of range (the model has "
                            f"{len(class_names)} classes)")
    raise SettingsError(f"--target: '{target}' is not a class of this model ({', '.join(class_names)})")


def resolve_device(device: str) -> torch.device:
    """'auto' picks this rank's GPU (LOCAL_RANK), any GPU, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device(local_device_from_env(os.environ) or "cuda")
        return torch.device("cpu")
    return torch.device(device)

