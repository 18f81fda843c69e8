"""Find the scans under the given files and folders: NIfTI by extension, DICOM by content, grouped into series.

Only headers are read here. A file that claims to be a scan (a NIfTI or DICOM extension, or the DICOM 'DICM'
marker) but cannot be read still becomes a ScanRef, so reading it fails as that one scan and the user sees it
among the failures; anything else that is not a scan is reported as Skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mri_lrp.scans.cases import ChannelPlan, Item, build_cases
from mri_lrp.scans.dicom import DicomHeader, read_header, split_series
from mri_lrp.scans.ids import NIFTI_SUFFIXES, file_scan_id, make_unique, printable, series_scan_id, short_hash
from mri_lrp.scans.image2d import IMAGE_SUFFIXES, image_ref
from mri_lrp.scans.labels import label_file_reason
from mri_lrp.scans.nifti import probe_nifti
from mri_lrp.scans.refs import ScanRef, Skipped

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass(frozen=True)
class _Found:
    """A file met during the walk: where it is, and how the user reaches it."""

    abs_path: str
    rel: str            # relative to its root
    display: str        # the given path joined with rel
    root_index: int
    display_root: str


def _walk(paths: Sequence[str | Path], skipped: list[Skipped], derivatives: bool = False) -> list[_Found]:
    """Every file under the given paths, each once, folders in sorted order, symlinked folders not followed.

    A DICOMDIR named as a path stands for its folder: the user means the images it indexes.
    """
    found: list[_Found] = []
    seen: set[str] = set()

    def add(abs_path: str, rel: str, display: str, root_index: int, display_root: str) -> None:
        real = os.path.realpath(abs_path)
        if real not in seen:
            seen.add(real)  # names for people and tables are printable; abs_path keeps the bytes to open
            found.append(_Found(abs_path, printable(rel), printable(display), root_index, printable(display_root)))

    for root_index, given in enumerate(paths):
        given = str(given)
        if os.path.basename(given).upper() == "DICOMDIR" and os.path.isfile(given):
            given = os.path.dirname(given) or "."  # a DICOMDIR given by name: read the images it indexes
        if os.path.isdir(given):
            root = os.path.abspath(given)

            def on_error(e: OSError) -> None:
                skipped.append(Skipped(str(e.filename), f"cannot list folder: {e.strerror}"))

            for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
                dirnames.sort()
                if dirpath != root and _is_run_output(dirpath, filenames):  # the root may be this run's --out
                    dirnames.clear()
                    where = os.path.normpath(os.path.join(given, os.path.relpath(dirpath, root)))
                    skipped.append(Skipped(where, "output folder of an explain run (its run.json), not scans"))
                    continue
                if not derivatives and "derivatives" in dirnames \
                        and os.path.isfile(os.path.join(dirpath, "dataset_description.json")):
                    dirnames.remove("derivatives")  # a BIDS dataset's pipeline outputs, not its raw scans
                    where = os.path.normpath(os.path.join(given, os.path.relpath(dirpath, root), "derivatives"))
                    skipped.append(Skipped(where, "BIDS derivatives folder (pipeline outputs) not read; "
                                                  "--derivatives reads it"))
                for name in sorted(filenames):
                    abs_path = os.path.join(dirpath, name)
                    rel = os.path.relpath(abs_path, root)
                    if os.path.isfile(abs_path):  # never open pipes or devices: reading one can block
                        add(abs_path, rel, os.path.join(given, rel), root_index, given)
                    else:
                        reason = "broken symbolic link" if os.path.islink(abs_path) else "not a regular file"
                        skipped.append(Skipped(os.path.join(given, rel), reason))
        elif os.path.isfile(given):
            abs_path = os.path.abspath(given)
            add(abs_path, os.path.basename(abs_path), given, root_index, os.path.dirname(given) or ".")
        elif os.path.lexists(given):
            skipped.append(Skipped(given, "not a regular file or folder"))
        else:
            skipped.append(Skipped(given, "no such file or folder"))
    return found


def _probe_dicom(f: _Found) -> DicomHeader | str | Exception:
    """The DICOM header of a file, a reason it is no scan (str), or the error of a claimed-but-broken file."""
    claimed = f.rel.lower().endswith(DICOM_SUFFIXES)
    try:
        with open(f.abs_path, "rb") as fh:
            head = fh.read(352)
    except OSError as e:
        return e if claimed else f"cannot open: {e.strerror}"
    if not head:
        return ValueError("empty file") if claimed else "empty file"
    if head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] == b"n+2\0":  # NIfTI-1 / NIfTI-2 magic
        return "a NIfTI file without a .nii name: rename it (add .nii) to have it read"
    marked = head[128:132] == b"DICM"
    # Without the 'DICM' marker, only try a forced parse when the bytes start like a DICOM element (group
    # 0x0002 or 0x0008, little endian): a forced parse of arbitrary data is slow and can misread it.
    raw = head[:2] in (b"\x02\x00", b"\x08\x00")
    if not (marked or raw or claimed):
        return "not a DICOM or NIfTI file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_header(f.abs_path, force=not marked)
    except Exception as e:  # pydicom raises many types for data it cannot parse
        return e if (marked or claimed) else "not a DICOM or NIfTI file"


def _is_run_output(folder: str, filenames: list[str]) -> bool:
    """A folder an earlier `explain` wrote (its run.json names the tool): its maps, model inputs and tables would
    otherwise be walked file by file, and a model input or relevance map could pass for a scan."""
    if "run.json" not in filenames:
        return False
    try:
        with open(os.path.join(folder, "run.json"), encoding="utf-8") as f:
            return json.load(f).get("tool") == "mri-lrp"
    except (OSError, ValueError, AttributeError):
        return False


def _is_relevance_output(path: str) -> bool:
    """A relevance volume (or the --save-model-input volume, a 4D stack that would pass for an MSD case) in a
    scan folder of an earlier run's output (its --out may differ from this run's)."""
    folder, name = os.path.split(path)
    if not name.lstrip(".").startswith(("relevance", "model_input", "model_relevance")):  # or a killed run's temporary
        return False
    try:
        siblings = os.listdir(folder)
    except OSError:
        return False
    return any(n in ("result.json", "regions.csv") or (n.startswith("overlay") and n.endswith(".png"))
               for n in siblings)


def _nifti_refs(f: _Found, volume: int | None, volumes: int | None) -> list[tuple[_Found, ScanRef]]:
    base = file_scan_id(f.rel)
    ref = ScanRef(kind="nifti", source=f.rel, scan_id=base, paths=(f.abs_path,), location=f.display)
    if volumes is None or volumes == 1:
        return [(f, ref)]
    chosen = range(volumes) if volume is None else [volume]
    return [(f, replace(ref, scan_id=f"{base}_vol{v:04d}", volume=v)) for v in chosen]


def _series_folder(files: list[_Found]) -> str:
    """The series' folder relative to the first file's root (the deepest folder holding all its files)."""
    first = files[0]
    dirs = [os.path.dirname(f.rel) or "." for f in files if f.root_index == first.root_index]
    try:
        common = os.path.commonpath(dirs)
    except ValueError:
        common = os.path.dirname(first.rel)
    return common or "."


def _dicom_refs(series: dict[str, list[tuple[_Found, DicomHeader]]],
                skipped: list[Skipped]) -> list[tuple[_Found, ScanRef]]:
    """One ScanRef per stackable part of each series; localizers become Skipped notes."""
    folders = {uid: _series_folder([f for f, _ in members]) for uid, members in series.items()}
    taken: dict[tuple[str, str], int] = {}
    for uid, members in series.items():
        key = (folders[uid], str(members[0][1].series_number))
        taken[key] = taken.get(key, 0) + 1

    out = []
    for uid, members in series.items():
        first, header = members[0]
        folder = folders[uid]
        label = f"s{header.series_number}" if header.series_number is not None else "s"
        if header.series_number is None or taken[(folder, str(header.series_number))] > 1:
            label = f"{label}_{short_hash(uid)}"
        series_location = first.display_root if folder == "." else os.path.join(first.display_root, folder)
        stacks = split_series([(n, h) for n, (_, h) in enumerate(members)])
        for stack in stacks:
            name = f"{label}_{stack.label}" if stack.label else label
            file_keys = list(dict.fromkeys(key for key, _ in stack.members))
            # One file split off a series (a screenshot filed under an MR series' UID) is named by its file:
            # the series' folder would not tell which of its files was dropped, or failed.
            location = members[file_keys[0]][0].display if len(stacks) > 1 and len(file_keys) == 1 \
                else series_location
            if stack.localizer:
                count = f"{len(stack.members)} image{'s' if len(stack.members) > 1 else ''}"
                skipped.append(Skipped(location, f"localizer series {name} ({count}) dropped"))
                continue
            index = {key: i for i, key in enumerate(file_keys)}
            frames = tuple((index[key], frame) for key, frame in stack.members if frame is not None)
            out.append((first, ScanRef(
                kind="dicom", source=folder, scan_id=series_scan_id(folder, name),
                paths=tuple(members[key][0].abs_path for key in file_keys), location=location,
                frames=frames, series_description=header.description,
                dicom=_dicom_facts(uid, header, members[stack.members[0][0]][1], len(stack.members)))))
    return out


def _dicom_facts(uid: str, header: DicomHeader, first: DicomHeader, slices: int) -> dict[str, str]:
    """The series' header facts that filters and the summary table use (no patient data)."""
    image_type = first.slices[0].image_type if first.slices else ()
    mosaic = first.slices[0].mosaic if first.slices else ""
    return {"modality": header.modality, "series_number": "" if header.series_number is None
            else str(header.series_number), "protocol": header.protocol, "study_uid": header.study_uid,
            "series_uid": "" if uid.startswith("no-series-uid") else uid,
            "derived": "yes" if image_type and image_type[0].upper() == "DERIVED" else "",
            "slices": str(slices), "mosaic": mosaic}


def discover(paths: Sequence[str | Path], volume: int | None = None, derivatives: bool = False,
             channels: ChannelPlan | None = None,
             pre_filter: Callable[[ScanRef], str | None] | None = None) -> tuple[list[ScanRef], list[Skipped]]:
    """The scans under ``paths`` (files or folders, recursively), in a deterministic order, and what was skipped.

    ``volume`` picks one 0-based volume of every 4D NIfTI (None: each volume is its own scan); a BIDS
    dataset's ``derivatives/`` folder is only walked when ``derivatives`` is true. For a multi-channel model,
    ``channels`` groups the images into cases, one per model input (mri_lrp/scans/cases.py); ``pre_filter``
    (the reason to leave an image out, or None) is then applied to each image before the grouping, so that
    filters pick a case's files rather than drop whole cases.
    """
    skipped: list[Skipped] = []
    found = _walk(paths, skipped, derivatives)
    refs: list[tuple[_Found, ScanRef]] = []
    series: dict[str, list[tuple[_Found, DicomHeader]]] = {}
    for f in found:
        name = os.path.basename(f.rel)
        if name.lower().endswith(NIFTI_SUFFIXES):
            if _is_relevance_output(f.abs_path):
                what = "model input" if "model_input" in name else "relevance map"
                skipped.append(Skipped(f.display, f"{what} written by an earlier explain run, not a scan"))
                continue
            volumes, is_label = probe_nifti(f.abs_path)
            named_label = label_file_reason(f.rel)
            if is_label:
                skipped.append(Skipped(f.display, "NIfTI label image (intent 'label'): a mask or atlas, not a scan"))
            elif named_label:
                skipped.append(Skipped(f.display, named_label))
            else:
                refs.extend(_nifti_refs(f, volume, volumes))
        elif name.upper() == "DICOMDIR":
            skipped.append(Skipped(f.display, "DICOMDIR index file (the images it lists are read directly)"))
        elif name.lower().endswith(IMAGE_SUFFIXES):
            entry = image_ref(f.rel, f.abs_path, f.display)
            if isinstance(entry, Skipped):
                skipped.append(entry)
            else:
                refs.append((f, entry))
        elif name.lower().endswith(".img") and os.path.isfile(f.abs_path[:-4] + ".hdr"):
            skipped.append(Skipped(f.display, "voxel data of a .hdr/.img pair (read through its .hdr)"))
        else:
            probe = _probe_dicom(f)
            if isinstance(probe, DicomHeader):
                series.setdefault(probe.series_uid, []).append((f, probe))
            elif isinstance(probe, str):
                skipped.append(Skipped(f.display, probe))
            else:  # a file that claims to be DICOM but is broken: reading it will fail with the reason
                refs.append((f, ScanRef(kind="dicom", source=f.rel, scan_id=file_scan_id(f.rel),
                                        paths=(f.abs_path,), location=f.display)))
    refs.extend(_dicom_refs(series, skipped))
    if channels is not None:
        if pre_filter is not None:
            reasons = [pre_filter(ref) for _, ref in refs]
            skipped.extend(dict.fromkeys(Skipped(ref.location, why) for (_, ref), why  # a 4D file's volumes: once
                                         in zip(refs, reasons, strict=True) if why))
            refs = [item for item, why in zip(refs, reasons, strict=True) if not why]
        cases = build_cases([Item(f.root_index, f.display_root, ref) for f, ref in refs], channels, skipped)
        refs = [(refs[n][0], ref) for n, ref in cases]
    if volume is None:  # a 4D file split into scans (an MSD stack for a 1-channel model, say): say so on each
        refs = [(f, replace(ref, notes=(*ref.notes, f"volume {ref.volume} of a 4D file, explained as a scan of its "
                                                    "own (--volume N explains only that one)")))
                if ref.volume is not None and not ref.channels else (f, ref) for f, ref in refs]
    refs.sort(key=lambda item: (item[0].root_index, item[1].source, item[1].scan_id))
    # Repeated ids get their '_2', '_3' in the order of the files' absolute paths, not of the roots: the same
    # folders given in another order must give every file the same id (resume trusts ids to name files).
    by_path = sorted(range(len(refs)), key=lambda n: (refs[n][1].scan_id, refs[n][1].paths, refs[n][1].volume or 0))
    unique = dict(zip(by_path, make_unique([refs[n][1].scan_id for n in by_path]), strict=True))
    return [replace(ref, scan_id=unique[n]) for n, (_, ref) in enumerate(refs)], skipped
