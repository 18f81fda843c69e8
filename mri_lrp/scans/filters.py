"""Which discovered scans a run explains: modality, path globs, series names, and no derived or pilot images.

A PACS export holds radiographs, CT, reformats and pilots next to the MR series a brain classifier was trained
on. Explaining them gives confident nonsense, and failing them makes every night exit 3; so they are skipped,
each with its reason, and listed with the other skipped inputs. NIfTI and other non-DICOM files carry no
modality tag and pass the modality filter.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from mri_lrp.errors import SettingsError
from mri_lrp.scans.refs import ScanRef, Skipped

ANY_MODALITY = ("any", "all", "*")
MIN_VOLUME_SLICES = 3  # fewer DICOM slices than this are a pilot or a single image, not a volume (as dcm2niix -i y)
# BIDS suffixes of images that are no structural scan: functional, diffusion, field maps, perfusion. Each volume
# of a BOLD run would otherwise be "explained" by a structural classifier, hundreds per subject.
_BIDS_NOT_STRUCTURAL = re.compile(r"_(bold|cbv|sbref|dwi|phasediff|phase[12]|magnitude[12]?|fieldmap|epi|asl|"
                                  r"m0scan)\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ScanFilter:
    """The user's choice of scans; ``volume_model`` is whether the model takes 3D input."""

    modality: str = "MR"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    series: str | None = None
    keep_derived: bool = False
    volume_model: bool = True

    @property
    def modalities(self) -> set[str] | None:
        """The accepted modalities (upper case), or None for any."""
        wanted = {m.strip().upper() for m in self.modality.split(",") if m.strip()}
        return None if not wanted or wanted & {m.upper() for m in ANY_MODALITY} else wanted

    def pattern(self) -> re.Pattern[str] | None:
        if not self.series:
            return None
        try:
            return re.compile(self.series, re.IGNORECASE)
        except re.error as e:
            raise SettingsError(f"--series: not a valid regular expression ({e})") from None


def _posix(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path or "."


def _matches(rel: str, globs: tuple[str, ...]) -> str | None:
    """The first glob that matches the relative path or one of its parent folders ('*' also crosses '/')."""
    rel = _posix(rel)
    parents = [rel]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    return next((g for g in globs if any(fnmatch.fnmatchcase(p, _posix(g)) for p in parents)), None)


def why_skipped(ref: ScanRef, f: ScanFilter) -> str | None:
    """The reason this scan is not explained under ``f``, or None to explain it."""
    if ref.parts or ref.channels:  # a multi-channel case: its files were filtered one by one before grouping
        return None
    facts = ref.dicom
    wanted = f.modalities
    modality = facts.get("modality", "").upper()
    if wanted is not None and modality and modality not in wanted:
        return f"modality {modality}, not {','.join(sorted(wanted))} (--modality)"
    if f.include and _matches(ref.source, f.include) is None:
        return "not matched by --include"
    if f.exclude:
        glob = _matches(ref.source, f.exclude)
        if glob is not None:
            return f"matched by --exclude {glob}"
    bids = _BIDS_NOT_STRUCTURAL.search(ref.source) if ref.kind == "nifti" and not f.include else None
    if bids:
        suffix = bids.group(1).lower()
        kind = {"bold": "functional", "cbv": "functional", "sbref": "functional", "dwi": "diffusion", "asl":
                "perfusion", "m0scan": "perfusion"}.get(suffix, "field map")
        return f"BIDS _{suffix} image ({kind}), not a structural scan; --include it to read it"
    pattern = f.pattern()
    if pattern is not None:
        name = ref.series_description if ref.kind == "dicom" else _posix(ref.source).rsplit("/", 1)[-1]
        if not pattern.search(name):
            what = "SeriesDescription" if ref.kind == "dicom" else "file name"
            return f"{what} {name!r} does not match --series {f.series}"
    if ref.kind == "dicom" and facts.get("mosaic"):  # no number of slices or derivation applies to it
        return (f"Siemens MOSAIC image ({facts['mosaic']}: many slices tiled in one image), which is not read: "
                "convert the series to NIfTI first (e.g. with dcm2niix)")
    if ref.kind == "dicom" and not f.keep_derived:
        if facts.get("derived"):
            return "derived image (ImageType DERIVED: a reformat, map or projection); --keep-derived reads it"
        slices = int(facts.get("slices") or 0)
        if f.volume_model and 0 < slices < MIN_VOLUME_SLICES:
            return (f"{slices} slice{'s' if slices > 1 else ''}: a pilot or a single image, not a volume for a "
                    "3D model; --keep-derived reads it")
    return None


def apply_filter(refs: list[ScanRef], f: ScanFilter) -> tuple[list[ScanRef], list[Skipped]]:
    """The scans to explain, and the others as Skipped with their reason."""
    f.pattern()  # a bad regex is a setup error even when no scan would reach it
    kept, skipped = [], []
    for ref in refs:
        why = why_skipped(ref, f)
        if why is None:
            kept.append(ref)
        elif ref.volume is None or Skipped(ref.location, why) not in skipped:  # a 4D file's volumes: one line
            skipped.append(Skipped(ref.location, why))
    return kept, skipped
