"""An oriented 3D box (a vertebra's region of interest) and the default box of a vertebra.

The box is the one a Slicer markups ROI node holds: a centre, three orthonormal axes and a
size along each, all in CT RAS mm. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .volume import Volume, bounding_box_ijk

#: |axes^T axes - I| allowed before the axes count as not orthonormal (dimensionless).
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class OrientedBox:
    """center_ras: (3,) mm. axes: (3, 3), column n the unit direction of the box's n-th edge.
    size_mm: (3,) edge lengths along the columns of ``axes``, > 0."""

    center_ras: np.ndarray
    axes: np.ndarray
    size_mm: np.ndarray

    def __post_init__(self) -> None:
        axes = np.asarray(self.axes, float)
        size = np.asarray(self.size_mm, float)
        center = np.asarray(self.center_ras, float)
        if center.shape != (3,) or axes.shape != (3, 3) or size.shape != (3,):
            raise InputError(f"a box needs a centre of 3, axes of 3x3 and a size of 3 numbers, got shapes "
                             f"{center.shape}, {axes.shape}, {size.shape}")
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(axes)) and np.all(np.isfinite(size))):
            raise InputError("a box's centre, axes and size must be finite numbers")
        error = float(np.abs(axes.T @ axes - np.eye(3)).max())
        if error > ORTHONORMAL_TOLERANCE:
            raise InputError(f"the box axes are not orthonormal unit columns (|A^T A - I| = {error:.3g}, "
                             f"tolerance {ORTHONORMAL_TOLERANCE:g})")
        if np.any(size <= 0):
            raise InputError(f"the box size must be > 0 mm along every axis, got {size.tolist()}")
        object.__setattr__(self, "center_ras", center)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "size_mm", size)

    def corners(self) -> np.ndarray:
        """(8, 3) RAS mm."""
        signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
        return self.center_ras + (signs * self.size_mm / 2.0) @ self.axes.T

    def contains(self, points_ras: np.ndarray) -> np.ndarray:
        """(..., 3) RAS mm -> (...) bool: inside or on the box."""
        local = (np.asarray(points_ras, float) - self.center_ras) @ self.axes
        return np.all(np.abs(local) <= self.size_mm / 2.0 + 1e-9, axis=-1)

    def moved(self, offset_ras: np.ndarray) -> OrientedBox:
        """The same box translated by ``offset_ras`` (mm)."""
        return OrientedBox(self.center_ras + np.asarray(offset_ras, float), self.axes, self.size_mm)

    def voxels(self, volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The voxels of ``volume`` whose centres lie in the box: (start_ijk, stop_ijk, inside), the
        voxel box around them (stop exclusive, clipped to the volume) and the (K, J, I) bool mask
        of that crop. InputError when no voxel centre is inside."""
        ijk = volume.ras_to_ijk_points(self.corners())
        start = np.maximum(np.floor(ijk.min(0)).astype(int), 0)
        stop = np.minimum(np.ceil(ijk.max(0)).astype(int) + 1, np.array(volume.shape_ijk))
        if np.any(stop <= start):
            raise InputError("the box lies outside the CT")
        grids = np.meshgrid(*(np.arange(a, b) for a, b in zip(start[::-1], stop[::-1])), indexing="ij")
        points = np.stack([grids[2], grids[1], grids[0]], -1).astype(float)  # (K, J, I, 3) as (i, j, k)
        inside = self.contains(volume.ijk_to_ras_points(points))
        if not inside.any():
            raise InputError("the box lies outside the CT (it holds no voxel centre)")
        return start, stop, inside


def mask_box_center_ras(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """(3,) CT RAS mm: the centre of the voxel bounding box of a (K, J, I) mask, the centre of the
    vertebra's default box (the Slicer module's ROI box before the user moves it)."""
    start, stop = bounding_box_ijk(mask)
    return volume.ijk_to_ras_points((start + stop - 1) / 2.0)
