"""Cases: the files that together make one model input, one file (or DICOM series, or 4D volume) per channel.

A multi-channel model (say T1, T1ce, T2 and FLAIR of one subject at once) needs each of its channels filled
with the right sequence. Discovery finds single images; this module groups them into cases and matches each
image to a channel, by the first rule that applies:

1. ``[input_spec.channel_files]`` globs (channel name -> glob) when the spec gives them, and nothing else. A
   glob is matched against the end of a file's path below its root (``*`` never crosses a '/'). The files
   matched in one folder (the path before the match) are one case when it holds one file per channel, so
   ``"T1_pre*"`` and ``"T1_post*"`` group a folder per patient; where a folder holds several files for one
   channel, the text the wildcards matched tells its cases apart, so ``"*_t1.nii.gz"`` groups the files of
   one prefix in a flat folder, and ``"t1/*.nii.gz"`` with ``"t2/*.nii.gz"`` the files of one name in
   sibling folders. For DICOM series the glob is matched against the SeriesDescription (any case), within
   one study.
2. The usual layouts, recognised from the names: BIDS (``sub-X[_ses-Y][_ce-Z]_T1w`` / ``_T2w`` / ``_FLAIR``),
   BraTS 2023 (``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``), BraTS 2021 (``_t1``, ``_t1ce``, ``_t2``,
   ``_flair``), nnU-Net (``CASE_0000`` ... ``CASE_000N`` in an ``images*`` folder or beside a ``dataset.json``:
   the N-th channel, with ``dataset.json`` ``channel_names`` read when present), a 4D NIfTI holding exactly
   one volume per channel (Medical Segmentation Decathlon: the N-th volume is the N-th channel), and the
   DICOM series of one study, matched by what their SeriesDescription says (``FLAIR``, ``T1 ... +C/GD/POST``,
   ``T1``, ``T2``).

Named layouts need the model's ``channel_names`` (``t1ce``, ``T1Gd``, ``t1c`` ... are one sequence); index
layouts (nnU-Net, 4D) follow the channel order itself. A case that lacks a channel, or has two files for one,
becomes one failure row that names what was found. Other images beside a case (a study's DWI, a bias field
in the case folder) are skipped. An image that fits no case is kept as a single image with a loud warning: a
model then sees one contrast in every channel, and its relevance per sequence means nothing. Segmentations
and masks are never scans (``mri_lrp.scans.labels``), for every model.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from mri_lrp.errors import SettingsError
from mri_lrp.scans.ids import join_id, short_hash, strip_nifti_suffix
from mri_lrp.scans.refs import ScanRef, Skipped

# Sequence aliases: a channel name or a layout's tag, lower case with everything but letters and digits
# removed, names one of these sequences.
SEQUENCES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w", "t1n", "t1native", "t1pre", "native"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1wgd", "t1wce", "cet1", "cet1w", "t1post", "t1contrast", "t1km",
             "t1gad", "t1wc", "t1cgd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
}
_LAYOUTS = (  # (name, stem pattern with groups 'case' and 'tag'), tried in this order
    ("BIDS", re.compile(r"^(?P<case>sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)(?P<entities>(?:_[A-Za-z]+-[A-Za-z0-9]+)*)"
                        r"_(?P<tag>T1w|T2w|FLAIR)$")),
    ("BraTS 2023", re.compile(r"^(?P<case>.+)-(?P<tag>t1n|t1c|t2w|t2f)$", re.IGNORECASE)),
    ("BraTS 2021", re.compile(r"^(?P<case>.+)_(?P<tag>t1|t1ce|t2|flair)$", re.IGNORECASE)),
)
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ChannelPlan:
    """What case building needs of the model: how many channels, their names, and globs for their files."""

    count: int
    names: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        """Channel names become file names (relevance_<name>.nii.gz) and columns (share_<name>): safe and unique;
        globs must say which file each channel takes."""
        names = self.names
        if names and len(names) != self.count:
            raise SettingsError(f"input_spec: {len(names)} channel_names {list(names)} for {self.count} channels")
        for name in names:
            if not _SAFE_NAME.match(name) or name.lower() == "all":
                raise SettingsError(f"input_spec: channel name {name!r} must be letters, digits, '.', '_' or '-' "
                                    "(and not 'all', which names the summed rows)")
        if len({n.lower() for n in names}) != len(names):
            raise SettingsError(f"input_spec: channel_names {list(names)} repeat a name")
        if self.files:
            given = [k for k, _ in self.files]
            if not names:
                raise SettingsError("input_spec: channel_files needs channel_names, which give the channels' order")
            if sorted(given) != sorted(names):
                raise SettingsError(f"input_spec: channel_files must give one glob per channel name {list(names)}, "
                                    f"got globs for {given}")

    @classmethod
    def of(cls, spec: object) -> ChannelPlan | None:
        """The plan of an InputSpec, or None for a single-channel model or one whose channels are the red, green
        and blue of a picture (``InputSpec.colour_channels``): their scans are single images, not cases."""
        count = int(getattr(spec, "channels", 1))
        files = getattr(spec, "channel_files", None) or {}
        if count <= 1 or (getattr(spec, "colour_channels", False) and not files):  # globs: refused without names
            return None
        pairs = tuple(files.items()) if isinstance(files, dict) else tuple(tuple(p) for p in files)
        return cls(count, tuple(getattr(spec, "channel_names", ())), pairs)

    def label(self, index: int) -> str:
        return self.names[index] if self.names else f"ch{index}"

    def listing(self) -> str:
        return ", ".join(self.label(i) for i in range(self.count))


def sequence_of(name: str) -> str | None:
    """The sequence ('t1', 't1ce', 't2', 'flair') a channel name or tag stands for, or None."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return next((seq for seq, aliases in SEQUENCES.items() if key in aliases), None)


@dataclass(frozen=True)
class Item:
    """One discovered image as case building sees it."""

    root_index: int
    display_root: str
    ref: ScanRef


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
    globbed: list[tuple[int, Item, _Match]] = []
    for n, item in enumerate(items):
        if item.ref.volume is not None and item.ref.kind == "nifti" and not plan.files:
            by_file.setdefault(item.ref.paths[0], []).append((n, item))
            continue
        found = _match(item.ref, plan)
        if isinstance(found, tuple) and found[0][0] == "glob":  # grouped once every file's match is known
            globbed.append((n, item, found))
            continue
        placed = _place(item, found, cases, skipped)
        if placed is None:
            singles.append((n, item))
        elif placed:
            order.setdefault(placed, n)
    for n, item, found in _group_globbed(globbed):
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
        return (item.root_index, "study", study or _parent(ref.source.replace(os.sep, "/").strip("/")))
    return (item.root_index, "folder", _split_source(ref.source)[0])


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


def _match(ref: ScanRef, plan: ChannelPlan) -> _Match | str | None:
    """Which case and channel an image belongs to, a reason to skip it, or None when it fits no case."""
    if ref.kind == "dicom":
        return _dicom_match(ref, plan)
    if plan.files:
        return _glob_match(ref.source, plan)
    return _name_match(ref, plan)


def _place(item: Item, found: _Match | str | None, cases: dict[tuple, _Case],
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


# ------------------------------------------------------------------------------------------------ matching

_Match = tuple[tuple, str, str, str, int, dict]


def _split_source(source: str) -> tuple[str, str]:
    rel = source.replace(os.sep, "/")
    folder, _, name = rel.rpartition("/")
    return folder, strip_nifti_suffix(name)


def _name_match(ref: ScanRef, plan: ChannelPlan) -> _Match | str | None:
    """A file in one of the named layouts (BIDS, BraTS) or nnU-Net's numbered one."""
    folder, stem = _split_source(ref.source)
    for layout, pattern in _LAYOUTS:
        m = pattern.match(stem)
        if m is None:
            continue
        tag = m.group("tag")
        sequence = sequence_of(tag)
        if layout == "BIDS" and tag == "T1w" and re.search(r"_ce-", m.group("entities") or ""):
            sequence = "t1ce"
        channel = _channel_of_sequence(sequence, plan)
        if channel is None:
            if not plan.names:
                channel = -1  # the case fails, naming the missing channel_names
            else:
                return f"a {layout} {tag} image, which is none of the model's channels ({plan.listing()})"
        prefix = m.group("case")
        return ("name", folder, prefix), folder, prefix, layout, channel, {}
    m = _NNUNET.match(stem)
    # `scan_0001` is a common name for one image among many: numbered files are channels only in nnU-Net's
    # own folders (imagesTr, imagesTs...) or beside its dataset.json.
    if m is None or not ref.paths or not _nnunet_folder(os.path.dirname(ref.paths[0])):
        return None
    index = int(m.group("index"))
    if index >= plan.count:
        return f"nnU-Net channel {index:04d}, beyond the model's {plan.count} channels ({plan.listing()})"
    prefix = m.group("case")
    labels, notes = _dataset_json_labels(os.path.dirname(ref.paths[0]), plan)
    return ("nnunet", folder, prefix), folder, prefix, "nnU-Net", index, {"labels": labels, "notes": notes}


def _channel_of_sequence(sequence: str | None, plan: ChannelPlan) -> int | None:
    if sequence is None:
        return None
    hits = [i for i, name in enumerate(plan.names) if sequence_of(name) == sequence]
    return hits[0] if len(hits) == 1 else None


def _glob_regex(glob: str) -> re.Pattern[str]:
    """A glob as a regex over the end of a relative path: wildcards captured, '*' never crossing a '/'."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("([^/]*)")
        elif c == "?":
            out.append("([^/])")
        elif c == "[":
            end = glob.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1:end]
                out.append("([" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "])")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(r"^(?P<lead>(?:.*/)?)" + "".join(out) + "$")


def _glob_match(source: str, plan: ChannelPlan) -> _Match | str | None:
    rel = source.replace(os.sep, "/")
    hits = []
    for name, glob in plan.files:
        m = _glob_regex(glob).match(rel)
        if m:
            hits.append((name, m))
    if not hits:
        return None
    if len(hits) > 1:
        return (f"matches the channel_files globs of {' and '.join(n for n, _ in hits)}: make the globs "
                "exclusive")
    name, m = hits[0]
    folder = m.group("lead").rstrip("/")
    captures = tuple(g for g in m.groups()[1:] if g)
    prefix = "_".join(captures)
    return ("glob", folder, captures), folder, prefix, "channel_files", plan.names.index(name), {}


def _group_globbed(matches: list[tuple[int, Item, _Match]]) -> list[tuple[int, Item, _Match]]:
    """Glob matches keyed by what is common to a case.

    The files that match in one folder (the part of the path before the glob) are one case when that folder
    holds at most one file per channel, whatever their wildcards matched (``T1_pre*`` and ``T1_post*`` in a
    folder per patient match ``.nii.gz`` and ``_gd.nii.gz``). Only a folder with several files for one channel
    is split by the wildcards' text, and only when that text pairs files of different channels (``P1_t1``
    with ``P1_t2``); otherwise the folder stays one case, which then fails naming the doubled channel.
    """
    by_folder: dict[tuple, list[tuple[int, Item, _Match]]] = {}
    for n, item, found in matches:
        by_folder.setdefault((item.root_index, found[1]), []).append((n, item, found))
    out: list[tuple[int, Item, _Match]] = []
    for group in by_folder.values():
        channels: dict[tuple, set[int]] = {}  # the channels each wildcard text was found for
        for _, _, (key, _, _, _, channel, _) in group:
            channels.setdefault(key[2], set()).add(channel)
        per_channel = Counter(found[4] for _, _, found in group)
        if max(per_channel.values()) > 1 and any(len(c) > 1 for c in channels.values()):
            out.extend(group)  # the wildcards' text tells the cases apart
            continue
        common = next(iter(channels)) if len(channels) == 1 else ()
        for n, item, (_, folder, _, layout, channel, extra) in group:
            out.append((n, item, (("glob", folder, common), folder, "_".join(common), layout, channel, extra)))
    return out


_DESCRIPTION_RULES = (  # (sequence, pattern over the lower-case SeriesDescription); first match wins
    (None, re.compile(r"t2\s*\*|t2star|swi|(?<![a-z])(dwi|adc|perf|dti|trace|localizer|scout)(?![a-z])")),
    ("flair", re.compile(r"(?<!t1)(?<!t1[ _-])flair|(?<![a-z0-9])t2f(?![a-z0-9])|dark[ _-]?fluid")),  # a "T1
    # FLAIR" is a T1; Siemens names its FLAIR "t2_tirm_tra_dark-fluid". "Pre(-)contrast" is a plain T1:
    ("t1", re.compile(r"(t1|mprage|spgr|bravo).*(?<![a-z])(pre|precontrast|non[ _-]?contrast|nativ|native|without|w/o)"
                      r"(?![a-z])")),
    ("t1ce", re.compile(r"(t1|mprage|spgr|bravo).*(\+\s*c|(?<![a-z])(gd|gad|post|contrast|ce|km|c\+)(?![a-z]))"
                        r"|(\+\s*c|(?<![a-z])(gd|gad|post|ce)(?![a-z])).*t1")),
    ("t1", re.compile(r"t1|mprage|spgr|bravo")),
    ("t2", re.compile(r"t2")),
)


def description_sequence(description: str) -> str | None:
    """The sequence a DICOM SeriesDescription names ('T1 AX POST GD' -> 't1ce'), or None."""
    text = description.lower()
    return next((seq for seq, pattern in _DESCRIPTION_RULES if pattern.search(text)), None)


def _dicom_match(ref: ScanRef, plan: ChannelPlan) -> _Match | str | None:
    """A DICOM series: matched within its study by SeriesDescription."""
    study = (getattr(ref, "dicom", None) or {}).get("study_uid", "")
    folder = ref.source.replace(os.sep, "/").strip("/")
    key = ("study", study or _parent(folder))
    description = ref.series_description
    extra = {"study": study}
    if plan.files:
        import fnmatch

        hits = [name for name, glob in plan.files if fnmatch.fnmatch(description.lower(), glob.lower())]
        if not hits:
            return None
        if len(hits) > 1:
            return f"series '{description}' matches the channel_files globs of {' and '.join(hits)}"
        return key, folder, "", "channel_files", plan.names.index(hits[0]), extra
    sequence = description_sequence(description)
    if sequence is None:
        return None
    channel = _channel_of_sequence(sequence, plan)
    if channel is None:
        if plan.names:
            return f"series '{description}' is a {sequence} image, none of the model's channels ({plan.listing()})"
        channel = -1
    return key, folder, "", "DICOM study", channel, extra


def _parent(folder: str) -> str:
    """Without a study UID, series are grouped by the folder above their own (``study/series_3/``)."""
    return "" if folder in ("", ".") else folder.rpartition("/")[0]


def _nnunet_folder(folder: str) -> bool:
    return os.path.basename(folder).startswith("images") or _dataset_json(folder) is not None


@lru_cache(maxsize=64)
def _dataset_json(folder: str) -> tuple[str, ...] | None:
    """nnU-Net's dataset.json channel names (v2 ``channel_names``, v1 ``modality``) in ``folder`` or its parent."""
    for where in (folder, os.path.dirname(folder)):
        path = os.path.join(where, "dataset.json")
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        names = meta.get("channel_names") or meta.get("modality") if isinstance(meta, dict) else None
        if isinstance(names, dict):
            try:
                return tuple(str(names[k]) for k in sorted(names, key=int))
            except (ValueError, TypeError):
                return None
    return None


def _dataset_json_labels(folder: str, plan: ChannelPlan) -> tuple[dict[int, str], list[str]]:
    names = _dataset_json(folder)
    if not names:
        return {}, []
    notes = []
    if len(names) != plan.count:
        notes.append(f"warning: dataset.json names {len(names)} channels ({', '.join(names)}), the model takes "
                     f"{plan.count}")
    for i, name in enumerate(names[:plan.count]):
        mine = plan.names[i] if plan.names else None
        if mine and sequence_of(mine) and sequence_of(name) and sequence_of(mine) != sequence_of(name):
            notes.append(f"warning: dataset.json calls channel {i} '{name}' but the model's channel {i} is "
                         f"'{mine}': image {i} (_{i:04d}, or volume {i} of a 4D file) goes to '{mine}' by its number")
    return {i: n for i, n in enumerate(names[:plan.count])}, notes


# ----------------------------------------------------------------------------------------------- case refs

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
    folder, stem = _split_source(ref.source)
    labels, notes = _dataset_json_labels(os.path.dirname(ref.paths[0]), plan)  # MSD's dataset.json 'modality'
    base = replace(ref, scan_id=case_id(folder, stem), volume=None, channels=_labels(plan, labels),
                   notes=(*ref.notes, *notes))
    if len(volumes) != plan.count:
        return n, replace(base, error=f"4D file has {len(volumes)} volumes but the model takes {plan.count} "
                                      f"channels ({plan.listing()}); one volume per channel is needed")
    parts = tuple(item.ref for _, item in sorted(volumes, key=lambda pair: pair[1].ref.volume or 0))
    return n, replace(base, parts=parts)
