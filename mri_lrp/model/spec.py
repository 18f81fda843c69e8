"""InputSpec: what the model expects, stored in the checkpoint; drives scan -> model input and back."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

NORMALIZATIONS = ("zscore", "percentile", "minmax", "none")


@dataclass(frozen=True)
class InputSpec:
    """The model's input contract.

    dims: 3 for volume models (input N, C, X, Y, Z), 2 for slice models (input N, C, X, Y; the scan's
      slices along ``slice_axis`` are fed one by one).
    shape: model grid size per spatial dim, or None for the scan's native grid (after reorientation).
    spacing: voxel size in mm per spatial dim, or None to keep the scan's spacing.
    orientation: axis codes of the model grid (e.g. "RAS"), or None to keep the stored voxel order.
    normalization: "zscore" (over non-zero voxels), "percentile" (clip to ``clip`` percentiles, scale to
      [0, 1]), "minmax" (to [0, 1]) or "none".
    channel_names: one name per channel (e.g. ("t1", "t1ce", "t2", "flair")), the order of the model's input
      channels; they pick each case's files and name the per-channel outputs. Empty: unnamed.
    channel_files: (channel name, glob) pairs that pick each channel's file by name (``[input_spec.
      channel_files]``); empty: the usual dataset layouts are recognised (see mri_lrp/scans/cases.py).
    """

    dims: int = 3
    channels: int = 1
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = "RAS"
    normalization: str = "zscore"
    clip: tuple[float, float] = (0.5, 99.5)
    slice_axis: str = "S"
    channel_names: tuple[str, ...] = ()
    channel_files: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"input spec: dims must be 2 or 3, not {self.dims}")
        if self.channels < 1:
            raise ValueError(f"input spec: channels must be >= 1, not {self.channels}")
        for name in ("shape", "spacing"):
            value = getattr(self, name)
            if value is not None and len(value) != self.dims:
                raise ValueError(f"input spec: {name} needs {self.dims} values, got {list(value)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"input spec: normalization must be one of {NORMALIZATIONS}, not {self.normalization!r}")
        if self.orientation is not None and sorted(
                self.orientation.upper().replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"]:
            raise ValueError(
                f"input spec: orientation must be three axis codes like 'RAS', not {self.orientation!r}")
        if self.slice_axis.upper() not in ("R", "L", "A", "P", "S", "I"):
            raise ValueError(f"input spec: slice_axis must be an axis code like 'S', not {self.slice_axis!r}")
        _check_channel_names(self.channel_names, self.channels, self.channel_files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("shape", "spacing", "clip"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        names = known.get("channel_names")
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"input spec: channel_names must be a list of names, not {names!r}")
            known["channel_names"] = tuple(names)
            known.setdefault("channels", len(names))  # the names say how many
        files = known.get("channel_files")
        if files is not None:
            pairs = files.items() if isinstance(files, dict) else files
            if isinstance(pairs, str) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                 and all(isinstance(v, str) for v in p) for p in pairs):
                raise ValueError("input spec: channel_files must be a table of channel name = \"glob\", "
                                 f"not {files!r}")
            known["channel_files"] = tuple((str(k), str(v)) for k, v in pairs)
        return cls(**known)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_channel_names(names: tuple[str, ...], channels: int, files: tuple[tuple[str, str], ...]) -> None:
    """Channel names become file names (relevance_<name>.nii.gz) and columns (share_<name>): safe, unique."""
    if names and len(names) != channels:
        raise ValueError(f"input spec: {len(names)} channel_names {list(names)} for {channels} channel(s)")
    for name in names:
        if not _SAFE_NAME.match(name) or name.lower() == "all":
            raise ValueError(f"input spec: channel name {name!r} must be letters, digits, '.', '_' or '-' "
                             "(and not 'all', which names the summed rows)")
    if len({n.lower() for n in names}) != len(names):
        raise ValueError(f"input spec: channel_names {list(names)} repeat a name")
    if files:
        if not names:
            raise ValueError("input spec: channel_files needs channel_names, which give the channels' order")
        unknown = [k for k, _ in files if k not in names]
        missing = [n for n in names if n not in {k for k, _ in files}]
        if unknown or missing:
            raise ValueError(f"input spec: channel_files must give one glob per channel name {list(names)}"
                             + (f"; unknown: {unknown}" if unknown else "")
                             + (f"; missing: {missing}" if missing else ""))
