"""Coordinate frames: RAS inside the library, LPS only at the file boundary.

ITK/SimpleITK and DICOM store physical points in LPS; Slicer and this library use RAS.
The two differ by a sign flip of the first two axes, ``LPS_TO_RAS = diag(-1, -1, 1, 1)``,
which is its own inverse.
"""

from __future__ import annotations

import numpy as np

#: 4x4 homogeneous flip between LPS and RAS (self-inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def points_lps_to_ras(points_lps: np.ndarray) -> np.ndarray:
    """(..., 3) points in LPS mm -> RAS mm (also valid RAS -> LPS)."""
    points = np.asarray(points_lps, dtype=np.float64).copy()
    points[..., :2] *= -1.0
    return points


points_ras_to_lps = points_lps_to_ras


def matrix_lps_to_ras(matrix_lps: np.ndarray) -> np.ndarray:
    """A 4x4 map expressed in LPS on both sides -> the same map in RAS (self-inverse)."""
    return LPS_TO_RAS @ np.asarray(matrix_lps, dtype=np.float64) @ LPS_TO_RAS


matrix_ras_to_lps = matrix_lps_to_ras


def homogeneous(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """3x3 linear part + 3-vector -> 4x4 homogeneous matrix."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = translation
    return matrix


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to (..., 3) points."""
    matrix = np.asarray(matrix, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]
