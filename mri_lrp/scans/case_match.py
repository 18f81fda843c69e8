"""Matching images to a multi-channel model's cases and channels: the model's channel plan and the rules.

Each image is matched to a case and a channel by the first rule that applies:

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
layouts (nnU-Net, 4D) follow the channel order itself.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from mri_lrp.errors import SettingsError
from mri_lrp.scans.ids import strip_nifti_suffix
from mri_lrp.scans.refs import ScanRef

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


def match_image(ref: ScanRef, plan: ChannelPlan) -> Match | str | None:
    """Which case and channel an image belongs to, a reason to skip it, or None when it fits no case."""
    if ref.kind == "dicom":
        return _dicom_match(ref, plan)
    if plan.files:
        return _glob_match(ref.source, plan)
    return _name_match(ref, plan)


Match = tuple[tuple, str, str, str, int, dict]


def split_source(source: str) -> tuple[str, str]:
    rel = source.replace(os.sep, "/")
    folder, _, name = rel.rpartition("/")
    return folder, strip_nifti_suffix(name)


def _name_match(ref: ScanRef, plan: ChannelPlan) -> Match | str | None:
    """A file in one of the named layouts (BIDS, BraTS) or nnU-Net's numbered one."""
    folder, stem = split_source(ref.source)
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
    labels, notes = dataset_json_labels(os.path.dirname(ref.paths[0]), plan)
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


def _glob_match(source: str, plan: ChannelPlan) -> Match | str | None:
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


def group_globbed(matches: list[tuple[int, Item, Match]]) -> list[tuple[int, Item, Match]]:
    """Glob matches keyed by what is common to a case.

    The files that match in one folder (the part of the path before the glob) are one case when that folder
    holds at most one file per channel, whatever their wildcards matched (``T1_pre*`` and ``T1_post*`` in a
    folder per patient match ``.nii.gz`` and ``_gd.nii.gz``). Only a folder with several files for one channel
    is split by the wildcards' text, and only when that text pairs files of different channels (``P1_t1``
    with ``P1_t2``); otherwise the folder stays one case, which then fails naming the doubled channel.
    """
    by_folder: dict[tuple, list[tuple[int, Item, Match]]] = {}
    for n, item, found in matches:
        by_folder.setdefault((item.root_index, found[1]), []).append((n, item, found))
    out: list[tuple[int, Item, Match]] = []
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


def _dicom_match(ref: ScanRef, plan: ChannelPlan) -> Match | str | None:
    """A DICOM series: matched within its study by SeriesDescription."""
    study = (getattr(ref, "dicom", None) or {}).get("study_uid", "")
    folder = ref.source.replace(os.sep, "/").strip("/")
    key = ("study", study or parent_folder(folder))
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


def parent_folder(folder: str) -> str:
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


def dataset_json_labels(folder: str, plan: ChannelPlan) -> tuple[dict[int, str], list[str]]:
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
