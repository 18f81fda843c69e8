"""Where one scan's files go: the flat layout (`scans/<scan_id>/...`) or a BIDS-derivatives dataset.

In both layouts a scan's bookkeeping (done marker, its rows of regions.csv, the report's preview data) stays in
`OUT/scans/<scan_id>/`, so resume and merge find every scan the same way; the done marker lists each file
relative to that folder. With `--layout bids` the data a BIDS tool reads — the relevance volume, its JSON
sidecar and the overlays — go under `sub-<label>/[ses-<label>/]<datatype>/` named after the source's entities
plus `desc-lrp`, and everything else is listed in `.bidsignore`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from mri_lrp import __version__
from mri_lrp.errors import SettingsError
from mri_lrp.outputs import DONE_MARKER, atomic_write_json, atomic_write_text
from mri_lrp.settings import LAYOUTS

if TYPE_CHECKING:
    from mri_lrp.settings import Settings

DESCRIPTION = "dataset_description.json"
BIDSIGNORE = ".bidsignore"
README = "README"
README_TEXT = """Relevance maps made by mri-lrp (Layer-wise Relevance Propagation over an MRI classifier).

sub-*/[ses-*/]<datatype>/<source entities>_desc-lrp_relevance.nii.gz: float32 relevance on the source scan's
grid, positive where the voxel supported the explained class; _relevance.json is its sidecar (rule, parameters,
target class, model). _desc-lrp_overlay.png shows it over the scan. Where two sources of one subject share
their entities, the source suffix is part of the label (desc-lrpT1w, desc-lrpFLAIR).

summary.csv, regions.csv, failures.csv, run.json, report.html and scans/ (per-scan bookkeeping) are the run's
tables and report, listed in .bidsignore.
"""
#: BIDS datatype folders a source may sit in; anything else is written as anat (structural MRI).
DATATYPES = ("anat", "func", "dwi", "fmap", "perf")
#: What a BIDS tool should not read as data: the run's tables, report, bookkeeping and shard parts.
IGNORED = ("*.csv", "run.json", "runs/", "scans/", "parts/", "report.html", "report/")
_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")
_SUFFIX = re.compile(r"^[a-zA-Z0-9]+$")
_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".hdr", ".img", ".dcm")


@dataclass(frozen=True)
class BidsName:
    """A source file's BIDS parts: `sub-01_ses-2_T1w.nii.gz` -> entities (sub, 01), (ses, 2) and suffix T1w."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    datatype: str

    @property
    def subject(self) -> str:
        return dict(self.entities)["sub"]

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def prefix(self) -> str:
        """`sub-01_ses-2`: the entities a derivative keeps."""
        return "_".join(f"{k}-{v}" for k, v in self.entities)

    @property
    def folder(self) -> PurePosixPath:
        ses = self.session
        return PurePosixPath(f"sub-{self.subject}", *([f"ses-{ses}"] if ses else []), self.datatype)


def parse_bids_name(source: str) -> BidsName | None:
    """The BIDS entities of a source path, or None when it names no subject.

    The file name is read first (`sub-01_T1w.nii.gz`); a DICOM series folder or a file without entities takes
    `sub-`/`ses-` from the folders above it (`sub-01/ses-2/anat/...`).
    """
    parts = PurePosixPath(source.replace(os.sep, "/")).parts
    if not parts:
        return None
    name = parts[-1]
    for ext in _IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    pieces = name.split("_")
    entities = [m.groups() for m in map(_ENTITY.match, pieces) if m]
    rest = [p for p in pieces if not _ENTITY.match(p)]
    suffix = rest[-1] if entities and rest and _SUFFIX.match(rest[-1]) else ""  # a BIDS-named file's own
    found = dict(entities)
    for folder in parts[:-1]:
        m = _ENTITY.match(folder)
        if m and m.group(1) in ("sub", "ses") and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    if "sub" not in found:
        return None
    ordered = [("sub", found["sub"]), *([("ses", found["ses"])] if "ses" in found else [])]
    ordered += [(k, v) for k, v in entities if k not in ("sub", "ses")]
    datatype = next((p for p in reversed(parts[:-1]) if p in DATATYPES), "anat")
    return BidsName(tuple(ordered), suffix, datatype)


@dataclass(frozen=True)
class ScanFiles:
    """The paths of one scan's outputs in the chosen layout."""

    folder: Path                       # OUT/scans/<scan_id>: done marker, regions.csv, preview
    bids_stem: Path | None = None      # OUT/sub-01/anat/sub-01 (BIDS layout), None for flat
    label: str = "lrp"                 # the desc- label: lrp, or lrpT1w where two sources would collide

    def relevance(self, channel: str = "") -> Path:
        if self.bids_stem is None:
            return self.folder / (f"relevance_{channel}.nii.gz" if channel else "relevance.nii.gz")
        return self._bids(_label_part(channel), "relevance.nii.gz")

    def sidecar(self) -> Path:
        """The relevance volume's JSON sidecar."""
        if self.bids_stem is None:
            return self.folder / "relevance.json"
        return self._bids("", "relevance.json")

    def overlay(self, target: str = "") -> Path:
        """The overlay PNG; ``target`` names the class with --target all (one overlay per class)."""
        if self.bids_stem is None:
            return self.folder / (f"overlay_{target}.png" if target else "overlay.png")
        return self._bids(_label_part(target), "overlay.png")

    def listed(self, path: Path) -> str:
        """``path`` as the done marker lists it: relative to the scan's folder."""
        return Path(os.path.relpath(path, self.folder)).as_posix()

    def _bids(self, extra: str, suffix: str) -> Path:
        assert self.bids_stem is not None
        return self.bids_stem.parent / f"{self.bids_stem.name}_desc-{self.label}{extra}_{suffix}"


def _label_part(text: str) -> str:
    """A class or channel name as part of a BIDS label (letters and digits only)."""
    cleaned = re.sub(r"[^a-zA-Z0-9]", "", text)
    return cleaned[:1].upper() + cleaned[1:]


@dataclass(frozen=True)
class Layout:
    """The chosen layout and, for BIDS, the few scans whose names need more than `desc-lrp` to stay unique.

    Small on purpose: writers in other processes receive it with every scan.
    """

    kind: str = "flat"
    labels: dict[str, str] = field(default_factory=dict)   # scan_id -> desc label, only where not "lrp"

    def files(self, out: Path, scan_id: str, source: str) -> ScanFiles:
        folder = out / "scans" / scan_id
        if self.kind == "flat":
            return ScanFiles(folder)
        name = parse_bids_name(source)
        if name is None:  # plan() refuses such inputs; a caller that skipped it gets a clear error
            raise SettingsError(f"{source}: no sub-<label> in the path, so it has no place in a BIDS dataset")
        stem = out / name.folder / name.prefix
        return ScanFiles(folder, stem, self.labels.get(scan_id, "lrp"))

    @classmethod
    def plan(cls, kind: str, scans: Iterable[tuple[str, str, int | None]]) -> Layout:
        """The layout for these (scan_id, source, volume) inputs; refuses inputs BIDS cannot name.

        Two inputs with the same entities (sub-01_T1w and sub-01_FLAIR) get the source suffix in the label
        (desc-lrpT1w, desc-lrpFLAIR); volumes of one 4D file get the volume number too (desc-lrpT1wVol2).
        """
        if kind not in LAYOUTS:
            raise SettingsError(f"--layout: must be one of {', '.join(LAYOUTS)}, got '{kind}'")
        if kind == "flat":
            return cls()
        scans = list(scans)
        named: dict[str, tuple[BidsName, int | None]] = {}
        unnamed = []
        for scan_id, source, volume in scans:
            name = parse_bids_name(source)
            if name is None:
                unnamed.append(source)
            else:
                named[scan_id] = (name, volume)
        if unnamed:
            raise SettingsError(
                f"--layout bids: {len(unnamed)} input(s) have no sub-<label> in their path (e.g. {unnamed[0]}); "
                "BIDS derivatives need BIDS-named inputs: use --layout flat for these")
        keys = Counter((n.folder, n.prefix) for n, _ in named.values())
        labels: dict[str, str] = {}
        for scan_id, (n, volume) in named.items():
            if keys[(n.folder, n.prefix)] > 1:
                labels[scan_id] = "lrp" + n.suffix + (f"Vol{volume}" if volume is not None else "")
        final = Counter((n.folder, n.prefix, labels.get(s, "lrp")) for s, (n, _) in named.items())
        clash = [s for s, (n, _) in named.items() if final[(n.folder, n.prefix, labels.get(s, "lrp"))] > 1]
        if clash:
            raise SettingsError(f"--layout bids: inputs {', '.join(sorted(clash)[:4])} would get the same BIDS "
                                "name; rename them or use --layout flat")
        return cls(kind, labels)


def dataset_description(settings: Settings) -> dict[str, Any]:
    """The derivative dataset's `dataset_description.json`: what made it, with which rule."""
    rule = f"composite {settings.composite}" if settings.composite else f"rule {settings.rule}"
    params = {"alphabeta": f"alpha={settings.alpha:g}, beta={settings.beta:g}",
              "epsilon": f"epsilon={settings.epsilon:g}", "gamma": f"gamma={settings.gamma:g}"}
    detail = "" if settings.composite else params.get(settings.rule, "")
    return {
        "Name": "mri-lrp relevance maps",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "mri-lrp", "Version": __version__,
            "Description": f"Layer-wise Relevance Propagation, {rule}"
                           f"{f' ({detail})' if detail else ''}, target {settings.target}, init {settings.init}",
        }],
    }


def write_bids_root(out: Path, settings: Settings) -> None:
    """`dataset_description.json` and `.bidsignore` at the root of a BIDS-layout output."""
    atomic_write_json(out / DESCRIPTION, dataset_description(settings))
    atomic_write_text(out / BIDSIGNORE, "".join(f"{pattern}\n" for pattern in IGNORED))
    atomic_write_text(out / README, README_TEXT)


def files_outside(folder: Path, root: Path) -> list[Path]:
    """The files a scan's done marker lists outside its folder (BIDS layout), relative to the output root.

    A listed path that leaves the root is not followed: a merge copies only what belongs to the output.
    """
    try:
        marker = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = []
    base = root.resolve()
    for name in marker.get("files", []) if isinstance(marker, dict) else []:
        path = Path(os.path.normpath(folder.resolve() / name))
        if folder.resolve() in path.parents or base not in path.parents or not path.is_file():
            continue
        found.append(path.relative_to(base))
    return found
