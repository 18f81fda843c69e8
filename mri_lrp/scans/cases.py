"""Cases: the files that together make one model input, one file (or DICOM series, or 4D volume) per channel.

A multi-channel model (say T1, T1ce, T2 and FLAIR of one subject at once) needs each of its channels filled with
the right sequence. Discovery finds single images; ``case_match`` says which case and channel each one belongs
to, and this module builds the cases. A case that lacks a channel, or has two files for one, becomes one failure
row that names what was found. Other images beside a case (a study's DWI, a bias field in the case folder) are
skipped. An image that fits no case is kept as a single image with a loud warning: a model then sees one contrast
in every channel, and its relevance per sequence means nothing. Segmentations and masks are never scans
(``mri_lrp.scans.labels``), for every model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mri_lrp.scans.case_match import (
    ChannelPlan,
    Item,
    Match,
    dataset_json_labels,
    group_globbed,
    match_image,
    parent_folder,
    split_source,
)
from mri_lrp.scans.ids import join_id, short_hash
from mri_lrp.scans.refs import ScanRef, Skipped


@dataclass
class _Case:
    key: tuple
    folder: str                     # relative folder of the case ('' at the root)
    prefix: str                     # the files' common case prefix ('' for a whole folder)
    items: list[Item]
    layout: str
    members: dict[int, list[Item]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)   # channel labels a layout supplies (dataset.json)
    study: str = ""                 # DICOM: the study UID, for an id when the files sit at the root


def build_cases(items: Sequence[Item], plan: ChannelPlan,
                skipped: list[Skipped]) -> list[tuple[int, ScanRef]]:
    """Case refs and the single images that fit no case, each with the index of its first item (for order).

    Images that belong to a layout but to none of the model's channels (a T1ce for a T1/T2 model) are
    reported in ``skipped``.
    """
    cases: dict[tuple, _Case] = {}
    singles: list[tuple[int, Item]] = []
    order: dict[tuple, int] = {}
    by_file: dict[str, list[tuple[int, Item]]] = {}
    globbed: list[tuple[int, Item, Match]] = []
    for n, item in enumerate(items):
        if item.ref.volume is not None and item.ref.kind == "nifti" and not plan.files:
            by_file.setdefault(item.ref.paths[0], []).append((n, item))
            continue
        found = match_image(item.ref, plan)
        if isinstance(found, tuple) and found[0][0] == "glob":  # grouped once every file's match is known
            globbed.append((n, item, found))
            continue
        placed = _place(item, found, cases, skipped)
        if placed is None:
            singles.append((n, item))
        elif placed:
            order.setdefault(placed, n)
    for n, item, found in group_globbed(globbed):
        order.setdefault(_place(item, found, cases, skipped), n)
    out = [(n, case_ref(cases[key], plan)) for key, n in order.items()]
    for volumes in by_file.values():
        if len(volumes) == 1:  # one volume chosen with --volume: a single image
            singles.append(volumes[0])
        else:
            out.append(_stack_case(volumes, plan))
    beside = _case_places(cases)
    for n, item in singles:
        near = beside.get(_place_of(item))
        if near:  # a DWI series of the study, a bias-field map in the case folder: not a scan of its own
            skipped.append(Skipped(item.ref.location, f"beside case {near} but none of its channels "
                                                      f"({plan.listing()})"))
        else:
            out.append((n, replace(item.ref, notes=(*item.ref.notes, single_image_warning(plan)))))
    out.sort(key=lambda pair: pair[0])
    return out


def _place_of(item: Item) -> tuple:
    """Where an image sits, as cases are keyed: its DICOM study, or its folder."""
    ref = item.ref
    if ref.kind == "dicom":
        study = (getattr(ref, "dicom", None) or {}).get("study_uid", "")
        return (item.root_index, "study", study or parent_folder(ref.source.replace(os.sep, "/").strip("/")))
    return (item.root_index, "folder", split_source(ref.source)[0])


def _case_places(cases: dict[tuple, _Case]) -> dict[tuple, str]:
    """The studies and folders that hold a case, with that case's id."""
    places: dict[tuple, str] = {}
    for key, case in cases.items():
        name = case_id(_id_folder(case), case.prefix, case.study)
        if key[1] == "study":
            places[key[:3]] = name
        for item in case.items:
            places.setdefault(_place_of(item), name)
    return places


def single_image_warning(plan: ChannelPlan) -> str:
    """The note on an image that fits no case (the model input then repeats it: mri_lrp/model/transform.py)."""
    return (f"warning: this image fits no case of the model's {plan.count} channels ({plan.listing()}): no "
            "BraTS, BIDS, nnU-Net, 4D or DICOM-study layout and no [input_spec.channel_files] glob matches it, "
            "so it is read as one image and the relevance per sequence means nothing")


def channel_files_text(ref: ScanRef) -> str:
    """Which file fills each channel of a case ('t1 = a_t1.nii.gz, ...'; a 4D stack's volume as '[N]', a DICOM
    series by its description), so a listing shows the matching itself; "" for an incomplete case."""
    def part_name(part: ScanRef) -> str:
        name = part.series_description if part.kind == "dicom" and part.series_description \
            else os.path.basename(part.location.rstrip("/"))
        return f"{name}[{part.volume}]" if part.volume is not None else name
    if len(ref.parts) != len(ref.channels):
        return ""
    return ", ".join(f"{c} = {part_name(p)}" for c, p in zip(ref.channels, ref.parts, strict=True))


def _place(item: Item, found: Match | str | None, cases: dict[tuple, _Case],
           skipped: list[Skipped]) -> tuple | None:
    """Put an item into its case; returns the case key, () when it was skipped, None when it fits no case."""
    ref = item.ref
    if found is None:
        return None
    if isinstance(found, str):
        skipped.append(Skipped(ref.location, found))
        return ()
    key, folder, prefix, layout, channel, extra = found
    key = (item.root_index, *key)
    case = cases.setdefault(key, _Case(key, folder, prefix, [], layout))
    case.items.append(item)
    case.members.setdefault(channel, []).append(item)
    for note in extra.get("notes", ()):
        if note not in case.notes:
            case.notes.append(note)
    case.labels.update(extra.get("labels", {}))
    case.study = extra.get("study", case.study)
    return key


def case_id(folder: str, prefix: str, study: str = "") -> str:
    """The case's id: its folder, plus its file prefix when that is not just the folder's name again."""
    parts = [p for p in folder.split("/") if p and p != "."]
    if prefix and (not parts or prefix != parts[-1]):
        parts.append(prefix)
    if not parts:
        return join_id([f"study_{short_hash(study)}" if study else "case"])
    return join_id(parts)


def _id_folder(case: _Case) -> str:
    """The folders a case id keeps: for BIDS, those above ``sub-X/`` (the prefix already names subject and
    session), else all."""
    parts = case.folder.split("/")
    if case.layout == "BIDS" and case.prefix.split("_")[0] in parts:
        return "/".join(parts[:parts.index(case.prefix.split("_")[0])])
    return case.folder


def _case_source(case: _Case) -> str:
    parts = [p for p in case.folder.split("/") if p and p != "."]
    if case.prefix and (not parts or case.prefix != parts[-1]):
        parts.append(case.prefix)
    return "/".join(parts) or "."


def _labels(plan: ChannelPlan, supplied: dict[int, str]) -> tuple[str, ...]:
    """Channel labels for outputs: the model's names, else a layout's (dataset.json), else ch0, ch1, ..."""
    if plan.names:
        return plan.names
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", supplied.get(i, "")) for i in range(plan.count)]
    if all(safe) and len({s.lower() for s in safe}) == len(safe) and "all" not in {s.lower() for s in safe}:
        return tuple(safe)
    return tuple(plan.label(i) for i in range(plan.count))


def case_ref(case: _Case, plan: ChannelPlan) -> ScanRef:
    """The ref of one case: its parts in channel order, or an error naming what is missing or doubled."""
    first = case.items[0]
    is_study = case.key[1] == "study"
    if is_study:  # the folder the study's series share
        folders = [it.ref.source.replace(os.sep, "/").strip("/") for it in case.items]
        case.folder = "" if any(f in ("", ".") for f in folders) else os.path.commonpath(folders)
    source = _case_source(case)
    location = first.display_root if source == "." else os.path.join(first.display_root, source)
    if case.prefix and not is_study and source.rpartition("/")[2] != case.folder.rpartition("/")[2]:
        location += "*"  # a prefix, not a folder
    labels = _labels(plan, case.labels)
    found = [it for items in case.members.values() for it in items]
    paths = tuple(dict.fromkeys(p for it in found for p in it.ref.paths))
    base = ScanRef(kind="+".join(dict.fromkeys(it.ref.kind for it in found)), source=source,
                   scan_id=case_id(_id_folder(case), case.prefix, case.study), paths=paths, location=location,
                   identity=tuple(d for it in found for d in it.ref.identity), channels=labels,
                   notes=tuple(case.notes))
    error = _case_error(case, plan, labels)
    if error:
        return replace(base, error=error)
    parts = tuple(case.members[i][0].ref for i in range(plan.count))
    described = "; ".join(f"{labels[i]}: {p.series_description}" for i, p in enumerate(parts)
                          if p.series_description)
    return replace(base, parts=parts, series_description=described)


def _case_error(case: _Case, plan: ChannelPlan, labels: tuple[str, ...]) -> str:
    def name(it: Item) -> str:
        ref = it.ref
        return f"'{ref.series_description}'" if ref.kind == "dicom" else os.path.basename(ref.source)

    if -1 in case.members:
        tags = ", ".join(name(it) for it in case.members[-1])
        return (f"{case.layout} files ({tags}) name their sequence, but the model's {plan.count} channels have no "
                "names to match them to: set [input_spec] channel_names (e.g. [\"t1\", \"t1ce\", \"t2\", "
                "\"flair\"]) in the order the model was trained with")
    doubled = {i: items for i, items in case.members.items() if len(items) > 1}
    if doubled:
        listed = "; ".join(f"{labels[i]}: {', '.join(name(it) for it in items)}" for i, items in doubled.items())
        return (f"several files for one channel ({listed}): keep one, or pick with --include/--exclude, "
                "--series (a SeriesDescription or file-name regex) or [input_spec.channel_files] globs")
    missing = [labels[i] for i in range(plan.count) if i not in case.members]
    if missing:
        have = ", ".join(f"{labels[i]} = {name(items[0])}" for i, items in sorted(case.members.items()))
        return (f"{case.layout} case is missing channel(s) {', '.join(missing)} of the model's "
                f"{plan.listing()} (found: {have})")
    return ""


def _stack_case(volumes: list[tuple[int, Item]], plan: ChannelPlan) -> tuple[int, ScanRef]:
    """A 4D NIfTI as one case: volume N is channel N (the Medical Segmentation Decathlon layout)."""
    n, first = volumes[0]
    ref = first.ref
    folder, stem = split_source(ref.source)
    labels, notes = dataset_json_labels(os.path.dirname(ref.paths[0]), plan)  # MSD's dataset.json 'modality'
    base = replace(ref, scan_id=case_id(folder, stem), volume=None, channels=_labels(plan, labels),
                   notes=(*ref.notes, *notes))
    if len(volumes) != plan.count:
        return n, replace(base, error=f"4D file has {len(volumes)} volumes but the model takes {plan.count} "
                                      f"channels ({plan.listing()}); one volume per channel is needed")
    parts = tuple(item.ref for _, item in sorted(volumes, key=lambda pair: pair[1].ref.volume or 0))
    return n, replace(base, parts=parts)
