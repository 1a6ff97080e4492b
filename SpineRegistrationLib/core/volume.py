"""The in-memory 3D image: a voxel array and its IJK -> RAS matrix.

Array order follows SimpleITK and ``slicer.util.arrayFromVolume``: ``array[k, j, i]``
(slowest axis first), while the matrix maps column vectors ``[i, j, k, 1]`` to RAS mm,
exactly like a Slicer volume node's IJKToRAS matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .frames import apply_matrix


@dataclass
class Volume:
    """A 3D image in RAS.

    array: (K, J, I) voxel values (HU for CT, integer labels for a labelmap).
    ijk_to_ras: (4, 4) float64, RAS mm = ijk_to_ras @ [i, j, k, 1].
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (K, J, I), got shape {self.array.shape}")
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError(f"ijk_to_ras must be 4x4, got {self.ijk_to_ras.shape}")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Voxel counts along (I, J, K)."""
        k, j, i = self.array.shape
        return i, j, k

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) voxel size along I, J, K in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    def ijk_to_ras_points(self, points_ijk: np.ndarray) -> np.ndarray:
        """(..., 3) continuous voxel indices (i, j, k) -> RAS mm."""
        return apply_matrix(self.ijk_to_ras, points_ijk)

    def ras_to_ijk_points(self, points_ras: np.ndarray) -> np.ndarray:
        """(..., 3) RAS mm -> continuous voxel indices (i, j, k)."""
        return apply_matrix(self.ras_to_ijk, points_ras)

    def bounds_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS box (min, max) enclosing all voxel centres."""
        ni, nj, nk = self.shape_ijk
        corners = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], float)
        ras = self.ijk_to_ras_points(corners)
        return ras.min(axis=0), ras.max(axis=0)

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same grid, other voxel values (e.g. a mask or mu instead of HU)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def cropped(self, start_ijk, stop_ijk) -> "Volume":
        """The voxels [start, stop) (i, j, k, stop exclusive, clipped to the array) in the same RAS place.

        The array is a view of this one (no copy): copy it before writing to it.
        """
        start = np.clip(np.asarray(start_ijk, dtype=int), 0, None)
        stop = np.minimum(np.asarray(stop_ijk, dtype=int), np.array(self.shape_ijk))
        if np.any(stop <= start):
            raise ValueError(f"the box {start.tolist()}..{stop.tolist()} does not overlap the volume of size {self.shape_ijk}")
        shift = np.eye(4)
        shift[:3, 3] = start
        return Volume(self.array[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]], self.ijk_to_ras @ shift)


def bounding_box_ijk(mask: np.ndarray, margin_vox: int | tuple[int, int, int] = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box around a (K, J, I) mask, grown by ``margin_vox`` and clipped to the array.

    Returns (start_ijk, stop_ijk): (3,) int arrays in (i, j, k) order, stop exclusive, so
    ``array[k0:k1, j0:j1, i0:i1]`` is the crop. Raises InputError for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (K, J, I), got shape {mask.shape}")
    if not mask.any():
        raise InputError("cannot take the bounding box of an empty mask")
    start, stop = [], []
    for axis_kji in range(3):
        other = tuple(a for a in range(3) if a != axis_kji)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(hits[0])
        stop.append(hits[-1] + 1)
    return grown_box(np.array(start[::-1]), np.array(stop[::-1]), margin_vox, mask.shape)


def grown_box(start_ijk, stop_ijk, margin_vox, shape_kji) -> tuple[np.ndarray, np.ndarray]:
    """The voxel box [start, stop) (i, j, k) grown by ``margin_vox`` and clipped to a (K, J, I) array."""
    margin = np.broadcast_to(np.asarray(margin_vox, dtype=int), (3,))
    return (np.maximum(np.asarray(start_ijk) - margin, 0),
            np.minimum(np.asarray(stop_ijk) + margin, np.array(shape_kji[::-1])))


def box_corners(lo, hi) -> np.ndarray:
    """(8, 3) float corners of the axis-aligned box [lo, hi] (any 3D frame: ijk, RAS)."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)


def scan_axis(volume: Volume) -> int:
    """The voxel axis (0 = I, 1 = J, 2 = K) nearest the patient's long axis (RAS S): the CT's scan axis."""
    return int(np.argmax(np.abs(volume.ijk_to_ras[2, :3]) / volume.spacing_mm))


def scan_end_distance_mm(mask: np.ndarray, volume: Volume) -> float:
    """How far (mm) the (K, J, I) ``mask`` lies from the nearer end of the scanned range: from its
    outermost voxel's face to the volume's first or last slice face along :func:`scan_axis`; 0 when
    the scan ends inside it (the CT holds only part of it)."""
    return scan_end_gap_mm(*bounding_box_ijk(mask), volume)


def scan_end_gap_mm(start_ijk, stop_ijk, volume: Volume) -> float:
    """:func:`scan_end_distance_mm` of the voxel box [start, stop) ((i, j, k), stop exclusive)."""
    axis = scan_axis(volume)
    gap_vox = min(int(start_ijk[axis]), volume.shape_ijk[axis] - int(stop_ijk[axis]))
    return float(gap_vox * volume.spacing_mm[axis])


def mask_center_ras(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """(3,) RAS mm: the mean of the voxel centres of a (K, J, I) mask on ``volume``'s grid."""
    k, j, i = np.nonzero(mask)
    return volume.ijk_to_ras_points(np.array([i.mean(), j.mean(), k.mean()]))
