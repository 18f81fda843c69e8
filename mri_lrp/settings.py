"""One frozen Settings object for a run: defaults < TOML config < command line, validated before any work."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mri_lrp.errors import SettingsError
from mri_lrp.model.logits import check_selector

TARGET_KEYWORDS = ("predicted", "all")
INIT_MODES = ("prob", "logit", "sglrp")
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
LAYOUTS = ("flat", "bids")  # how explain lays out its output folder (pipeline/layout.py)

# Settings that change what is computed; the resume fingerprint covers exactly these.
RESULT_FIELDS = (
    "model", "model_kwargs", "class_names", "input_spec", "rule", "alpha", "beta", "epsilon", "gamma",
    "composite", "overrides", "target", "init", "atlas", "atlas_labels", "masks", "volume",
)


@dataclass(frozen=True)
class Settings:
    """Everything `mri-lrp explain` needs. Paths are kept as given; validation resolves and checks them."""

    scans: tuple[str, ...] = ()
    checkpoint: str | None = None
    checkpoints: tuple[str, ...] = ()  # two or more: the folds of an ensemble, explained together
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False
    model_output: str | None = None  # index or key of the logits when forward returns a tuple, list or dict
    class_names: tuple[str, ...] | None = None
    input_spec: dict[str, Any] | None = None
    rule: str = "alphabeta"
    alpha: float = 2.0
    beta: float = 1.0
    epsilon: float = 1e-6
    gamma: float = 0.25
    composite: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    target: str = "predicted"
    init: str = "prob"
    out: str = "mri-lrp-out"
    device: str = "auto"
    batch_size: str = "auto"
    workers: int = 2
    atlas: str | None = None
    atlas_labels: str | None = None
    masks: str | None = None
    shard: str | None = None
    resume: bool = True
    quiet: bool = False
    volume: int | None = None
    by_class: bool = False
    layout: str = "flat"             # flat | bids: where each scan's files go (mri_lrp.pipeline.layout)
    modality: str = "MR"             # DICOM modalities to explain (comma list, or 'any'); others are skipped
    include: tuple[str, ...] = ()    # globs on paths relative to the input root: only these
    exclude: tuple[str, ...] = ()    # globs on paths relative to the input root: not these
    series: str | None = None        # regex on SeriesDescription (DICOM) or the file name
    keep_derived: bool = False       # also derived, localizer-like and under-3-slice DICOM (dcm2niix -i n)
    derivatives: bool = False        # also walk a BIDS dataset's derivatives/ folder
    keep_uids: bool = False          # add study_uid / series_uid to the tables
    save_model_input: bool = False   # also write scans/<id>/model_input.nii.gz (what the network saw)
    reference: str | None = None     # input-fitness envelope (.npz from `mri-lrp calibrate`)
    reference_any_model: bool = False  # accept an envelope made with another checkpoint
    skip_unfit: bool = False         # leave scans whose fitness is "out" unexplained (listed as skipped)

    def fingerprint(self, checkpoint_sha256: str) -> str:
        """A short hash of everything that changes results: a resumed run redoes a scan when it differs.

        The relevance rules' version is part of it, so an upgrade that changes the maps redoes the scans."""
        from mri_lrp.lrp.rules import RULES_VERSION  # here: reading settings does not load torch

        payload = {name: _jsonable(getattr(self, name)) for name in RESULT_FIELDS}
        payload["checkpoint_sha256"] = checkpoint_sha256
        payload["rules_version"] = RULES_VERSION
        if self.layout != "flat":  # files elsewhere: a flat result is not done for BIDS (flat hashes unchanged)
            payload["layout"] = self.layout
        if self.keep_uids:  # rows with UID columns (hashes without them unchanged)
            payload["keep_uids"] = True
        if self.save_model_input:  # one more file per scan: a done scan without it is not done
            payload["save_model_input"] = True
        if self.model_output is not None:  # another output explained (hashes without it unchanged)
            payload["model_output"] = self.model_output
        if self.reference:  # fitness columns; a scan it left unexplained is not done
            stamp = "batch" if self.reference == "batch" else _file_stamp(self.reference)
            payload["reference"] = [stamp, self.skip_unfit]
        for name in ("atlas", "atlas_labels"):
            if payload[name]:
                payload[name + "_stat"] = _file_stamp(payload[name])
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        out = {k: _jsonable(v) for k, v in asdict(self).items()}
        if not self.checkpoints:  # a one-checkpoint run records its settings as before folds existed
            out.pop("checkpoints")
        return out

    @property
    def batch_size_value(self) -> int | None:
        """The fixed batch size, or None for automatic."""
        return None if self.batch_size == "auto" else int(self.batch_size)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{int(st.st_mtime)}"


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config into option names (dashes or underscores accepted)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"{p}: config file not found") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{p}: not a valid TOML config ({e})") from None
    known = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise SettingsError(f"{p}: unknown option '{key}' (known: {', '.join(sorted(known))})")
        out[name] = _check_config_type(p, key, name, value)
    try:
        if "input_spec" in out:
            _validate_input_spec(out["input_spec"])
        if "overrides" in out:
            _validate_overrides(out["overrides"])
    except SettingsError as e:
        raise SettingsError(f"{p}: {e}") from None
    # Relative paths in a config file are relative to the file, so a config works from any directory.
    for name in ("checkpoint", "out", "atlas", "atlas_labels", "masks", "reference"):
        if isinstance(out.get(name), str) and not os.path.isabs(out[name]) and out[name] != "batch":
            out[name] = str((p.parent / out[name]).resolve())
    if "checkpoints" in out:  # paths or globs, relative to the file too
        out["checkpoints"] = [c if os.path.isabs(c) else str(p.parent / c) for c in out["checkpoints"]]
    if isinstance(out.get("scans"), str):
        out["scans"] = [out["scans"]]
    if "scans" in out:
        out["scans"] = [s if os.path.isabs(s) else str((p.parent / s).resolve()) for s in out["scans"]]
    return out


#: What each option's value in a TOML file must be (TOML is typed: `resume = "no"` is a string, not false).
_CONFIG_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    **{n: ("a string", (str,)) for n in ("checkpoint", "model", "rule", "composite", "init", "out", "device",
                                         "atlas", "atlas_labels", "masks", "shard", "layout", "modality",
                                         "series")},
    **{n: ("a glob or a list of globs", (str, list)) for n in ("include", "exclude")},
    **{n: ("a number", (int, float)) for n in ("alpha", "beta", "epsilon", "gamma")},
    **{n: ("true or false", (bool,)) for n in ("trust_checkpoint", "resume", "quiet", "by_class", "keep_derived",
                                               "derivatives", "keep_uids", "save_model_input")},
    **{n: ("a table", (dict,)) for n in ("model_kwargs", "overrides", "input_spec")},
    "workers": ("a whole number", (int,)), "volume": ("a whole number", (int,)),
    "target": ("a class name or index", (str, int)), "model_output": ("an index or a key", (str, int)),
    "batch_size": ("'auto' or a whole number", (str, int)),
    "scans": ("a path or a list of paths", (str, list)), "class_names": ("a list of names", (list,)),
    "checkpoints": ("a list of paths or globs", (list,)),
}


def _check_config_type(path: Path, key: str, name: str, value: Any) -> Any:
    """Refuse a config value of the wrong TOML type with a message naming the file and option."""
    expected, types = _CONFIG_TYPES[name]
    wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    if name in ("scans", "class_names", "include", "exclude", "checkpoints") and isinstance(value, list):
        wrong = not all(isinstance(v, str) for v in value)
    if wrong:
        raise SettingsError(f"{path}: option '{key}' must be {expected}, got {value!r}")
    return str(value) if name in ("target", "model_output") else value


def build_settings(cli: dict[str, Any], config_path: str | None = None,
                   input_spec: dict[str, Any] | None = None) -> Settings:
    """Merge defaults < config < command line (None on the command line means 'not given').

    ``input_spec`` holds single spec keys given as options (``--input-shape``): they update the config's
    ``[input_spec]`` key by key instead of replacing it.
    """
    values: dict[str, Any] = {}
    if config_path:
        values.update(load_config(config_path))
    values.update({k: v for k, v in cli.items() if v is not None and not (k == "scans" and not v)})
    _checkpoint_list(values, from_cli=cli.get("checkpoint") is not None)
    if input_spec:
        values["input_spec"] = {**(values.get("input_spec") or {}), **input_spec}
    for name in ("scans", "class_names", "include", "exclude"):
        if isinstance(values.get(name), str) and name in ("include", "exclude"):
            values[name] = (values[name],)
        if values.get(name) is not None:
            values[name] = tuple(str(v) for v in values[name])
    if "batch_size" in values:
        values["batch_size"] = str(values["batch_size"])
    try:
        settings = replace(Settings(), **values)
    except TypeError as e:
        raise SettingsError(f"bad option: {e}") from None
    validate(settings)
    return settings


def _checkpoint_list(values: dict[str, Any], from_cli: bool) -> None:
    """``--checkpoint`` (repeatable, globs) and ``checkpoints = [...]`` become one ``checkpoint``, or two or more
    ``checkpoints`` (the folds of an ensemble). The command line's checkpoints replace the config's."""
    import glob

    if from_cli:
        values.pop("checkpoints", None)
    given = values.pop("checkpoint", None)
    items = [given] if isinstance(given, str) else list(given or [])
    items += list(values.pop("checkpoints", None) or [])
    paths: list[str] = []
    for item in items:
        item = str(item)
        found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not found:
            raise SettingsError(f"--checkpoint {item}: no file matches this pattern")
        for path in found:
            if path in paths:
                raise SettingsError(f"--checkpoint {path}: given twice (each fold once)")
            paths.append(path)
    if len(paths) == 1:
        values["checkpoint"] = paths[0]
    elif paths:
        values["checkpoints"] = tuple(paths)


#: Options that set one key of the input spec each (``--input-shape``, ``input_shape=`` in Python).
INPUT_SPEC_OPTIONS = {"input_shape": "shape", "input_spacing": "spacing", "resize": "resize",
                      "normalization": "normalization"}


def input_spec_options(**given: Any) -> dict[str, Any]:
    """The input-spec keys given as options ('96,96,96' or a sequence -> [96, 96, 96]); None means not given.

    They are checked with the whole spec when the model is loaded.
    """
    spec: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        key = INPUT_SPEC_OPTIONS[name]
        if key in ("shape", "spacing"):
            kind = int if key == "shape" else float
            items = value.replace("x", ",").split(",") if isinstance(value, str) else value
            try:
                value = [kind(v) for v in items]
            except (TypeError, ValueError):
                what = "whole numbers" if kind is int else "numbers"
                raise SettingsError(f"--{name.replace('_', '-')}: expected {what} separated by commas "
                                    f"(e.g. {'96,96,96' if kind is int else '1,1,1'}), got {value!r}") from None
        spec[key] = value
    return spec


def validate(s: Settings) -> None:
    """Reject mistakes before any work starts, with one message naming the option."""
    from mri_lrp.lrp import COMPOSITES, RULES

    if not s.scans:
        raise SettingsError("no scans given: pass one or more files or folders")
    for path in s.scans:
        if not os.path.exists(path):
            raise SettingsError(f"{path}: no such file or folder")
    if s.rule not in RULES:
        raise SettingsError(f"--rule: unknown rule '{s.rule}' (choose from {', '.join(sorted(RULES))})")
    if s.composite is not None and s.composite not in COMPOSITES:
        raise SettingsError(
            f"--composite: unknown composite '{s.composite}' (choose from {', '.join(sorted(COMPOSITES))})")
    for name in ("alpha", "beta", "epsilon", "gamma"):
        value = getattr(s, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or value != value:
            raise SettingsError(f"--{name}: must be a number >= 0, got {value!r}")
    if s.rule == "alphabeta" and s.alpha == 0 and s.beta == 0:
        raise SettingsError("--alpha/--beta: both are 0, so every relevance would be 0")
    if s.input_spec is not None:
        _validate_input_spec(s.input_spec)
    if s.overrides:
        _validate_overrides(s.overrides)
    check_selector(s.model_output)
    if s.init not in INIT_MODES:
        raise SettingsError(f"--init: must be one of {', '.join(INIT_MODES)}, got '{s.init}'")
    if not s.target:
        raise SettingsError("--target: empty")
    if s.batch_size != "auto":
        try:
            if int(s.batch_size) < 1:
                raise ValueError
        except ValueError:
            raise SettingsError(f"--batch-size: must be 'auto' or a whole number >= 1, got '{s.batch_size}'") \
                from None
    if not isinstance(s.workers, int) or s.workers < 0:
        raise SettingsError(f"--workers: must be a whole number >= 0, got {s.workers!r}")
    _validate_device(s.device)
    for path in (s.checkpoint, *s.checkpoints):
        if path is not None and not os.path.isfile(path):
            what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "checkpoint file not found"
            raise SettingsError(f"{path}: {what}")
    if s.checkpoint is not None and s.checkpoints:
        raise SettingsError("give either one checkpoint or the folds' checkpoints, not both")
    if s.model is not None and s.checkpoint is None and not s.checkpoints:
        raise SettingsError("--model needs --checkpoint (the state_dict file to load into it)")
    if (s.atlas is None) != (s.atlas_labels is None):
        raise SettingsError("--atlas and --atlas-labels go together: give both or neither")
    for name in ("atlas", "atlas_labels"):
        path = getattr(s, name)
        if path is not None and not os.path.isfile(path):
            raise SettingsError(f"{path}: --{name.replace('_', '-')} file not found")
    if s.masks is not None and not os.path.isdir(s.masks):
        raise SettingsError(f"{s.masks}: --masks folder not found")
    if s.volume is not None and s.volume < 0:
        raise SettingsError(f"--volume: must be >= 0, got {s.volume}")
    if s.shard is not None:
        from mri_lrp.shard import Shard

        Shard.parse(s.shard)
    if s.layout not in LAYOUTS:
        raise SettingsError(f"--layout: must be one of {', '.join(LAYOUTS)}, got '{s.layout}'")
    if s.series is not None:
        import re

        try:
            re.compile(s.series)
        except re.error as e:
            raise SettingsError(f"--series: not a valid regular expression ({e})") from None
    if s.reference not in (None, "batch") and not os.path.isfile(s.reference):
        raise SettingsError(f"{s.reference}: --reference envelope not found (make one with `mri-lrp calibrate`)")
    if s.skip_unfit and s.reference is None:
        raise SettingsError("--skip-unfit needs --reference (the envelope that decides what is unfit)")
    if not s.modality.strip(" ,"):
        raise SettingsError("--modality: empty (give e.g. MR, or MR,CT, or any)")
    _validate_out(s.out)


def _validate_input_spec(spec: Any) -> None:
    """An [input_spec] that cannot build an InputSpec would fail deep in the run: name the bad key now."""
    from mri_lrp.model.spec import InputSpec

    if not isinstance(spec, dict):
        raise SettingsError(f"input_spec: must be a table like {{dims = 3, channels = 1}}, got {spec!r}")
    unknown = sorted(set(spec) - set(InputSpec.__dataclass_fields__))
    if unknown:
        raise SettingsError(f"input_spec: unknown key(s) {unknown} (known: "
                            f"{', '.join(InputSpec.__dataclass_fields__)})")
    numbers = {"dims": int, "channels": int, "shape": int, "spacing": float, "clip": float}
    for key, kind in numbers.items():
        value = spec.get(key)
        if value is None:
            continue
        items = value if key in ("shape", "spacing", "clip") else [value]
        if not isinstance(items, (list, tuple)) or not all(
                isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) for v in items):
            what = "a list of numbers" if key in ("shape", "spacing", "clip") else "a whole number"
            raise SettingsError(f"input_spec: {key} must be {what}, got {value!r}")
        if key in ("shape", "spacing") and any(v <= 0 for v in items):
            raise SettingsError(f"input_spec: {key} values must be > 0, got {value!r}")
    for key in ("orientation", "normalization", "slice_axis"):
        if key in spec and not (isinstance(spec[key], str) or (key == "orientation" and spec[key] is None)):
            raise SettingsError(f"input_spec: {key} must be a string, got {spec[key]!r}")
    if "dims" not in spec:  # partial: completed key by key from the checkpoint's spec, and checked there
        return
    try:
        InputSpec.from_dict(spec)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _validate_overrides(overrides: Any) -> None:
    from mri_lrp.lrp.composites import check_overrides

    check_overrides(overrides)


def _validate_device(device: str) -> None:
    import torch

    if device in ("auto", "cpu"):
        return
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2]
        if index and not index.isdigit():
            raise SettingsError(f"--device: bad CUDA index in '{device}'")
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {device}: CUDA is not available on this machine")
        if index and int(index) >= torch.cuda.device_count():
            raise SettingsError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return
    raise SettingsError(f"--device: must be auto, cpu, cuda or cuda:N, got '{device}'")


def _validate_out(out: str) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise SettingsError(f"{out}: --out exists and is not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SettingsError(f"{out}: --out is not writable")
