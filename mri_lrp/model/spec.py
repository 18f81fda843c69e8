"""InputSpec: what the model expects, stored in the checkpoint; drives scan -> model input and back."""

from __future__ import annotations

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
    """

    dims: int = 3
    channels: int = 1
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = "RAS"
    normalization: str = "zscore"
    clip: tuple[float, float] = (0.5, 99.5)
    slice_axis: str = "S"

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("shape", "spacing", "clip"):
            if known.get(key) is not None:
                known[key] = tuple(known[key])
        return cls(**known)
