"""InputSpec: what the model expects, stored in the checkpoint; drives scan -> model input and back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NORMALIZATIONS = ("zscore", "percentile", "minmax", "range", "meanstd", "imagenet", "none")
INTERPOLATIONS = ("linear", "area", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys added after the first checkpoint format: a spec stored without them means what it meant then (one
# resampling step centred on the scan, anti-aliased, edge padding).
STORED_BEFORE_ALIGN = {"align": "centre", "padding": "edge", "antialias": True}


@dataclass(frozen=True)
class CropForeground:
    """MONAI ``CropForeground``: the box of voxels > ``threshold`` in any channel, grown by ``margin`` voxels
    (one value, or one per model axis) on the resampled grid; a box past the image is padded."""

    threshold: float = 0.0
    margin: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class InputSpec:
    """The model's input contract; the README's "Input spec" section lists every key.

    dims: 3 for volume models (input N, C, X, Y, Z), 2 for slice models (input N, C, X, Y; the scan's
      slices along ``slice_axis`` are fed one by one).
    shape: model grid size per spatial dim, or None for the grid the earlier steps give.
    spacing: voxel size in mm per spatial dim, or None to keep the scan's spacing.
    orientation: axis codes of the model grid (e.g. "RAS"), or None to keep the stored voxel order.
    align: "corner" (MONAI ``Spacing``: first model voxel on the first scan voxel, then crop/resize steps) or
      "centre" (one step: the model grid centred on the scan, spacing and shape at once).
    resize: fit the (cropped) field of view into ``shape`` instead of centre cropping/padding to it.
    normalization: "zscore" (over voxels exactly != 0), "percentile", "minmax", "range" (``range`` = a_min,
      a_max, b_min, b_max), "meanstd" (per-channel ``mean``/``std``), "imagenet" (meanstd with ImageNet's
      values) or "none"; per channel when ``channel_wise``; on the model grid ("last") or the scan's ("first").
    """

    dims: int = 3
    channels: int = 1
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = "RAS"
    normalization: str = "zscore"
    clip: tuple[float, float] = (0.5, 99.5)
    slice_axis: str = "S"
    align: str = "corner"
    resize: bool = False
    crop_foreground: CropForeground | None = None
    padding: str = "zeros"
    interpolation: str = "linear"
    antialias: bool = False
    range: tuple[float, float, float, float] | None = None
    range_clip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_wise: bool = False
    normalization_order: str = "last"
    channel_names: tuple[str, ...] = ()
    channel_files: dict[str, str] = field(default_factory=dict)   # channel name -> file glob (case matching)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"input spec: dims must be 2 or 3, not {self.dims}")
        if self.channels < 1:
            raise ValueError(f"input spec: channels must be >= 1, not {self.channels}")
        for name in ("shape", "spacing"):
            value = getattr(self, name)
            if value is not None and len(value) != self.dims:
                raise ValueError(f"input spec: {name} needs {self.dims} values, got {list(value)}")
        _choice("normalization", self.normalization, NORMALIZATIONS)
        _choice("interpolation", self.interpolation, INTERPOLATIONS)
        _choice("padding", self.padding, ("zeros", "edge"))
        _choice("align", self.align, ("corner", "centre"))
        _choice("normalization_order", self.normalization_order, ("last", "first"))
        if self.orientation is not None and sorted(
                self.orientation.upper().replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"]:
            raise ValueError(
                f"input spec: orientation must be three axis codes like 'RAS', not {self.orientation!r}")
        if self.slice_axis.upper() not in ("R", "L", "A", "P", "S", "I"):
            raise ValueError(f"input spec: slice_axis must be an axis code like 'S', not {self.slice_axis!r}")
        if self.resize and self.shape is None:
            raise ValueError("input spec: resize = true needs a shape to resize to")
        if self.align == "centre" and (self.resize or self.crop_foreground is not None
                                       or self.interpolation == "area"):
            raise ValueError("input spec: align = 'centre' is one centred resampling step; resize, "
                             "crop_foreground and interpolation = 'area' need align = 'corner'")
        if self.crop_foreground is not None and len(self.crop_foreground.margin) not in (1, self.dims):
            raise ValueError(f"input spec: crop_foreground margin needs 1 or {self.dims} values, "
                             f"got {list(self.crop_foreground.margin)}")
        if self.crop_foreground is not None and any(m < 0 for m in self.crop_foreground.margin):
            raise ValueError(f"input spec: crop_foreground margin must be >= 0, got "
                             f"{list(self.crop_foreground.margin)}")
        self._check_intensity()

    def _check_intensity(self) -> None:
        if self.normalization == "range":
            if self.range is None or len(self.range) != 4:
                raise ValueError("input spec: normalization = 'range' needs range = [a_min, a_max, b_min, b_max]")
            if self.range[0] == self.range[1]:
                raise ValueError(f"input spec: range needs a_min != a_max, got {list(self.range)}")
        if self.normalization == "meanstd":
            if self.mean is None or self.std is None:
                raise ValueError("input spec: normalization = 'meanstd' needs mean and std lists")
            for name in ("mean", "std"):
                if len(getattr(self, name)) not in (1, self.channels):
                    raise ValueError(f"input spec: {name} needs 1 or {self.channels} values (one per channel), "
                                     f"got {list(getattr(self, name))}")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"input spec: std values must be > 0, got {list(self.std)}")
        if self.normalization == "imagenet" and self.channels != 3:
            raise ValueError(f"input spec: normalization = 'imagenet' is for 3-channel models, "
                             f"this one has {self.channels}")
        if self.channel_names and len(self.channel_names) != self.channels:
            raise ValueError(f"input spec: channel_names has {len(self.channel_names)} names for "
                             f"{self.channels} channels")

    @property
    def colour_channels(self) -> bool:
        """The model's channels are the red, green and blue of a picture (an ImageNet-style net), not sequences
        to be matched to files: three unnamed channels of a 2D or ImageNet-normalised model."""
        return self.channels == 3 and not self.channel_names and (self.dims == 2 or self.normalization == "imagenet")

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) of a meanstd/imagenet spec, one value per channel."""
        if self.normalization == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        assert self.mean is not None and self.std is not None
        n = self.channels
        return (tuple(self.mean) * n)[:n] if len(self.mean) == 1 else tuple(self.mean), \
            (tuple(self.std) * n)[:n] if len(self.std) == 1 else tuple(self.std)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], stored: bool = False) -> InputSpec:
        """From a TOML table or a checkpoint's metadata (``stored``: a checkpoint written before ``align``
        existed keeps that era's single centred resampling step)."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if stored and "align" not in d:
            known = {**STORED_BEFORE_ALIGN, **known}
        for key in ("shape", "spacing", "clip", "range", "mean", "std", "channel_names"):
            value = known.get(key)
            if value is not None:
                kind = str if key == "channel_names" else (int, float)
                if not isinstance(value, (list, tuple)) or not all(
                        isinstance(v, kind) and not isinstance(v, bool) for v in value):
                    what = "names" if key == "channel_names" else "numbers"
                    raise ValueError(f"input spec: {key} must be a list of {what}, got {value!r}")
                known[key] = tuple(value)
        for key in ("resize", "antialias", "range_clip", "channel_wise"):
            if key in known and not isinstance(known[key], bool):
                raise ValueError(f"input spec: {key} must be true or false, got {known[key]!r}")
        crop = known.get("crop_foreground")
        if crop is True:
            known["crop_foreground"] = CropForeground()
        elif crop is False:
            known["crop_foreground"] = None
        elif isinstance(crop, dict):
            unknown = sorted(set(crop) - {"threshold", "margin"})
            if unknown:
                raise ValueError(f"input spec: crop_foreground has unknown key(s) {unknown} "
                                 "(known: threshold, margin)")
            margin = crop.get("margin", 0)
            margin = tuple(margin) if isinstance(margin, (list, tuple)) else (margin,)
            threshold = crop.get("threshold", 0.0)
            if not all(isinstance(m, int) and not isinstance(m, bool) for m in margin) or not isinstance(
                    threshold, (int, float)) or isinstance(threshold, bool):
                raise ValueError(f"input spec: crop_foreground needs a number threshold and whole-number "
                                 f"margin(s), got {crop!r}")
            known["crop_foreground"] = CropForeground(float(threshold), margin)
        elif crop is not None and not isinstance(crop, CropForeground):
            raise ValueError(f"input spec: crop_foreground must be a table like {{threshold = 0.0, margin = 0}} "
                             f"or true, got {crop!r}")
        files = known.get("channel_files")
        if files is not None and not (isinstance(files, dict)
                                      and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
            raise ValueError(f"input spec: channel_files must be a table of channel name = \"glob\", got {files!r}")
        return cls(**known)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"input spec: {name} must be one of {', '.join(choices)}, not {value!r}")
