"""The Scan value: what every reader produces and everything downstream consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Scan:
    """One image volume in its own voxel grid.

    ``data`` is always 3D float32 indexed (i, j, k) in stored order; a single-slice scan has k == 1 and
    ``is_2d`` is true. ``affine`` maps voxel indices to world RAS millimetres (NIfTI convention).
    """

    scan_id: str                      # filesystem-safe, unique, from the relative path (never patient tags)
    source: str                       # relative path of the file, or of the series' folder
    kind: str                         # "nifti" | "dicom"
    data: np.ndarray                  # float32, shape (I, J, K)
    affine: np.ndarray                # (4, 4) float64, voxel -> world RAS mm
    paths: tuple[str, ...] = ()       # absolute source file paths
    metadata: dict[str, str] = field(default_factory=dict)  # non-identifying: series description, modality...
    warnings: tuple[str, ...] = ()    # problems noted while reading (not fatal)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def is_2d(self) -> bool:
        return self.data.shape[2] == 1
