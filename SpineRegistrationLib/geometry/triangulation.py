"""Points seen in several X-rays: the least-squares intersection of their rays (world RAS mm),
and a box on one X-ray as a constraint on where a 3D point may project.

numpy only. The ray of pixel (column, row) runs from the view's source through
:meth:`.XrayGeometry.pixel_to_ras` of that pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from .detector import XrayGeometry
from .image_boxes import inside_convex


def triangulate(geometries: Sequence[XrayGeometry], pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The world RAS point (mm) nearest, in least squares, to the rays through ``pixels`` ((V, 2)
    continuous (column, row), one per geometry), and its RMS distance from those rays (mm).

    Solves sum_v (I - d_v d_v^T)(x - s_v) = 0 for unit ray directions d_v from sources s_v.
    InputError for fewer than two views or parallel rays.
    """
    pixels = np.asarray(pixels, float).reshape(-1, 2)
    if len(geometries) < 2 or len(pixels) != len(geometries):
        raise InputError(f"triangulation needs one pixel in each of two or more views, got {len(pixels)} "
                         f"pixel(s) for {len(geometries)} view(s)")
    sources = np.stack([g.source for g in geometries])
    directions = np.stack([g.pixel_to_ras(c, r) for g, (c, r) in zip(geometries, pixels)]) - sources
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    lhs, rhs = projectors.sum(0), np.einsum("vij,vj->i", projectors, sources)
    if np.linalg.cond(lhs) > 1e8:
        raise InputError("the rays are parallel: the views must look from different directions")
    point = np.linalg.solve(lhs, rhs)
    distances = np.linalg.norm(np.einsum("vij,vj->vi", projectors, point - sources), axis=1)
    return point, float(np.sqrt(np.mean(distances**2)))


@dataclass(frozen=True, eq=False)
class DetectorBox:
    """A vertebra's accepted box on one X-ray: ``corners_px`` (4, 2) (column, row) of ``geometry``'s
    pixels; ``view`` names the X-ray."""

    geometry: XrayGeometry
    corners_px: np.ndarray
    view: str = ""

    @property
    def center_px(self) -> np.ndarray:
        """(2,) mean of the corners (column, row)."""
        return np.asarray(self.corners_px, float).mean(0)

    def holds(self, points_ras: np.ndarray) -> np.ndarray:
        """(..., 3) world RAS mm -> (...) bool: does the point project inside the box?"""
        return inside_convex(self.corners_px, self.geometry.project(points_ras))


def triangulate_boxes(boxes: Sequence[DetectorBox]) -> tuple[np.ndarray, float]:
    """:func:`triangulate` of the boxes' centres: the vertebra's centre in world RAS mm and the RMS ray distance."""
    return triangulate([box.geometry for box in boxes], np.stack([box.center_px for box in boxes]))
