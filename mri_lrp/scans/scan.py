"""The Scan value: what every reader produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Scan:
    """One image volume, or one multi-channel case, in its own voxel grid.

    ``data`` is float32 indexed (i, j, k) in stored order: (I, J, K) for one image, (C, I, J, K) for a case
    whose ``channels`` name the C sequences (all on the first channel's grid). A single-slice scan has k == 1
    and ``is_2d`` is true. ``affine`` maps voxel indices to world RAS millimetres (NIfTI convention).
    """

    scan_id: str                      # filesystem-safe, unique, from the relative path (never patient tags)
    source: str                       # relative path of the file, or of the series' folder
    kind: str                         # "nifti" | "dicom"
    data: np.ndarray                  # float32, shape (I, J, K), or (C, I, J, K) for a multi-channel case
    affine: np.ndarray                # (4, 4) float64, voxel -> world RAS mm
    paths: tuple[str, ...] = ()       # absolute source file paths
    metadata: dict[str, str] = field(default_factory=dict)  # non-identifying: series description, modality...
    warnings: tuple[str, ...] = ()    # problems noted while reading (not fatal)
    channels: tuple[str, ...] = ()    # a case's channel names, in data's first-axis order; () for one image

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[-3:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.data.shape[-1] == 1

    @property
    def volume(self) -> np.ndarray:
        """The (I, J, K) image to draw and to find the head in: the scan, or a case's first channel."""
        return self.data[0] if self.data.ndim == 4 else self.data
