"""One DICOM series split into stacks that can each become a volume (orientation, size, echo, repeats)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mri_lrp.scans.dicom.headers import DicomHeader, SliceInfo, as_float

ORIENTATION_TOL = 1e-3            # largest difference between direction cosines within one stack
_LOCALIZER_TEXT = re.compile(r"locali[sz]er|scout|survey|3[- _]?plane[ _]?loc", re.IGNORECASE)


@dataclass(frozen=True)
class Stack:
    """Part of one series that can become one volume: its members are (file key, frame or None)."""

    label: str                                 # '' for an unsplit series, else e.g. 'e2' or 'p1'
    members: tuple[tuple[int, int | None], ...]
    localizer: bool


def _is_localizer(image_type: tuple[str, ...], description: str) -> bool:
    return any("LOCALIZER" in t.upper() for t in image_type) or bool(_LOCALIZER_TEXT.search(description))


def same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= ORIENTATION_TOL


def _extent(orientation: tuple[float, ...] | None, members: list[tuple[int, SliceInfo]]) -> tuple[float, float]:
    """Range of the slice positions along the slice normal (empty when positions are unknown)."""
    if orientation is None or any(s.position is None for _, s in members):
        return (math.inf, -math.inf)
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    d = [float(np.asarray(s.position) @ normal) for _, s in members]
    return (min(d), max(d))


def _typical_step(orientation: tuple[float, ...] | None, members: list[tuple[int, SliceInfo]]) -> float:
    """Median distance between neighbouring slices along the normal (0 for fewer than two, or no positions)."""
    if len(members) < 2 or orientation is None or any(s.position is None for _, s in members):
        return 0.0
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    d = np.sort([float(np.asarray(s.position) @ normal) for _, s in members])
    return float(np.median(np.diff(d)))


def _rejoin_odd_sizes(groups: list) -> list:
    """Put back together stacks that differ only in image size and lie among each other's slices.

    Such a stack is one volume with a wrong file in it, not two scans: split, it would become a one-slice
    "scan" explained as 2D and a volume with a gap. Joined, reading it names the odd file.
    A file just past either end of the other stack, within one and a half of its slice steps, is such a
    wrong file too (the first or last file of the volume).
    """
    out: list = []
    for exact, orient, members in groups:
        lo, hi = _extent(orient, members)
        for g_exact, g_orient, g_members in out:
            g_lo, g_hi = _extent(g_orient, g_members)
            reach = 1.5 * max(_typical_step(orient, members), _typical_step(g_orient, g_members)) + 1e-3
            if (g_exact[2:] == exact[2:] and same_orientation(g_orient, orient)
                    and max(lo, g_lo) <= min(hi, g_hi) + reach):
                g_members.extend(members)
                break
        else:
            out.append((exact, orient, members))
    return out


def split_series(headers: Sequence[tuple[int, DicomHeader]]) -> list[Stack]:
    """Split one series wherever a single stack would mix orientation, size, image type, echo or repeats.

    ``headers`` pairs a caller's file key with the file's header. Repeated acquisitions (AcquisitionNumber,
    temporal position) split the stack only when they revisit the same positions, because some scanners
    number every slice of one volume as its own acquisition.
    """
    groups: list[tuple[tuple, tuple[float, ...] | None, list[tuple[int, SliceInfo]]]] = []
    for key, header in headers:
        for s in header.slices:
            exact = (s.rows, s.cols, s.image_type, s.echo)
            for g_exact, g_orient, members in groups:
                if g_exact == exact and same_orientation(g_orient, s.orientation):
                    members.append((key, s))
                    break
            else:
                groups.append((exact, s.orientation, [(key, s)]))
    groups = _rejoin_odd_sizes(groups)

    parts: list[tuple[tuple, tuple[float, ...] | None, str, list[tuple[int, SliceInfo]]]] = []
    for exact, orient, members in groups:
        repeats = sorted({s.repeat for _, s in members})
        positions = {tuple(round(v, 2) for v in s.position) for _, s in members if s.position is not None}
        sizes = [sum(1 for _, s in members if s.repeat == r) for r in repeats]
        if len(repeats) > 1 and len(positions) < len(members) and min(sizes) > 1:
            for r in repeats:
                parts.append((exact, orient, r, [m for m in members if m[1].repeat == r]))
        else:
            parts.append((exact, orient, "", members))
    parts.sort(key=lambda p: (p[0][3], p[2], str(p[1]), p[0][0], p[0][1], p[0][2]))

    description = headers[0][1].description if headers else ""
    echo_varies = len({p[0][3] for p in parts}) > 1
    repeat_varies = len({p[2] for p in parts}) > 1
    other_varies = len({(p[0][:3], str(p[1])) for p in parts}) > 1
    labels = []
    for n, (exact, _orient, repeat, _members) in enumerate(parts, start=1):
        label = []
        if len(parts) > 1:
            echo_number, echo_time = exact[3]
            if echo_varies:
                te = as_float(echo_time)
                label.append("e" + (echo_number or (f"{te:g}" if te is not None else str(n))))
            if repeat_varies:
                label.append("a" + (repeat.strip("/") or str(n)))
            if other_varies or not label:
                label.append(f"p{n}")
        labels.append("_".join(label))
    if len(set(labels)) < len(labels):
        labels = [f"{label}_p{n}" for n, label in enumerate(labels, start=1)]
    stacks = [Stack(label=label, localizer=_is_localizer(exact[2], description),
                    members=tuple((key, s.frame) for key, s in members))
              for label, (exact, _orient, _repeat, members) in zip(labels, parts, strict=True)]
    return stacks
