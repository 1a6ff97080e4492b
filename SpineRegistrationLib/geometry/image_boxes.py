"""Oriented boxes on an X-ray: four corners (column, row) px, built from points and an axis,
whether points lie inside, and their overlap (IoU).

The overlap of two convex quadrilaterals is computed here by Sutherland-Hodgman clipping
(a few lines of numpy): shapely is not a dependency, and neither OpenCV nor scipy has a
polygon intersection.
"""

from __future__ import annotations

import numpy as np

#: Corner order of a box in its own frame: (across, along) signs, going round the box.
_CORNER_SIGNS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def polygon_area(corners: np.ndarray) -> float:
    """Signed area (shoelace) of an (N, 2) polygon, px^2; positive when counter-clockwise in (x, y)."""
    x, y = corners[:, 0], corners[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def rectangle_corners(center_px, width_px: float, height_px: float, axis) -> np.ndarray:
    """(4, 2) corners of a rectangle: ``height_px`` along the unit 2D ``axis`` (column, row),
    ``width_px`` across it; corner 0 -> 1 runs across, 1 -> 2 along ``axis``."""
    along = np.asarray(axis, dtype=np.float64)
    along = along / np.linalg.norm(along)
    across = np.array([-along[1], along[0]])
    half = _CORNER_SIGNS * np.array([width_px, height_px]) / 2.0
    return np.asarray(center_px, dtype=np.float64) + half[:, :1] * across + half[:, 1:] * along


def bounding_rectangle(points_px: np.ndarray, axis) -> np.ndarray:
    """(4, 2) corners of the smallest rectangle with one side along the 2D ``axis`` holding every
    (N, 2) point (column, row) px; order as :func:`rectangle_corners`."""
    along = np.asarray(axis, dtype=np.float64)
    along = along / np.linalg.norm(along)
    across = np.array([-along[1], along[0]])
    points = np.asarray(points_px, dtype=np.float64)
    a, b = points @ across, points @ along
    center = (a.min() + a.max()) / 2 * across + (b.min() + b.max()) / 2 * along
    return rectangle_corners(center, a.max() - a.min(), b.max() - b.min(), along)


def inside_convex(corners_px: np.ndarray, points_px: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(..., 2) pixels -> (...) bool: inside or on the convex polygon ``corners_px`` ((N, 2), in order
    around it, either winding); ``tolerance`` (px^2, of the edge cross products) admits points a
    rounding error outside."""
    corners = np.asarray(corners_px, float)
    points = np.asarray(points_px, float)
    edges = np.roll(corners, -1, axis=0) - corners
    offsets = points[..., None, :] - corners
    cross = edges[:, 0] * offsets[..., 1] - edges[:, 1] * offsets[..., 0]
    return np.all(cross >= -tolerance, axis=-1) | np.all(cross <= tolerance, axis=-1)


def _clip(polygon: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The part of ``polygon`` (N, 2) left of the directed edge start -> end (one Sutherland-Hodgman pass)."""
    if len(polygon) == 0:
        return polygon
    edge = end - start
    side = edge[0] * (polygon[:, 1] - start[1]) - edge[1] * (polygon[:, 0] - start[0])
    out = []
    for n in range(len(polygon)):
        p, q, sp, sq = polygon[n], polygon[(n + 1) % len(polygon)], side[n], side[(n + 1) % len(polygon)]
        if sp >= 0:
            out.append(p)
        if sp * sq < 0:
            out.append(p + (q - p) * (sp / (sp - sq)))
    return np.asarray(out).reshape(-1, 2)


def convex_intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area (px^2) of the overlap of two convex (N, 2) polygons, either winding."""
    a = a if polygon_area(a) > 0 else a[::-1]
    b = b if polygon_area(b) > 0 else b[::-1]
    clipped = np.asarray(a, dtype=np.float64)
    for n in range(len(b)):
        clipped = _clip(clipped, b[n], b[(n + 1) % len(b)])
    return abs(polygon_area(clipped)) if len(clipped) >= 3 else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex (4, 2) boxes (or any convex polygons), in [0, 1]."""
    inter = convex_intersection_area(a, b)
    union = abs(polygon_area(a)) + abs(polygon_area(b)) - inter
    return inter / union if union > 0 else 0.0
