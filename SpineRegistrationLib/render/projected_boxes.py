"""Where each vertebra of a labelled CT falls on an X-ray: its oriented box, from the projection.

The box of a vertebra is the smallest rectangle holding the projection of every corner of its
surface voxels (so the box of a box-shaped label is exactly the outline of its projected
corners), with one side along the projected spine axis at the vertebra: the line through its
neighbours' centroids (the one neighbour and itself at the ends; the CT's superior axis for a
lone vertebra), moved by the vertebra's pose. Corners 0 -> 1 run across the spine, 1 -> 2 toward
the cranial end (:func:`..geometry.image_boxes.rectangle_corners`). This orientation follows
the anatomy, as an annotator draws it, where a minimum-area rectangle would turn with the
processes (a lateral view's spinous process) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

from ..core.frames import apply_matrix
from ..core.labelmap import Labelmap, centroids_ras
from ..core.volume import scan_end_gap_mm
from ..geometry import XrayGeometry
from ..geometry.image_boxes import bounding_rectangle
from ..io.xray_boxes import XrayBox

#: Voxel corner offsets (8, 3), ijk.
_CORNERS_IJK = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
_SUPERIOR_RAS = np.array([0.0, 0.0, 1.0])
#: Length of the axis segment projected to find its direction on the detector, mm.
_AXIS_MM = 10.0


def spine_axes_ras(centroids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> (3,) unit cranial direction of the spine at each vertebra, CT RAS, from the
    centroids (cranial -> caudal order): through the neighbours, one-sided at the ends."""
    names = list(centroids)
    if len(names) < 2:
        return {name: _SUPERIOR_RAS.copy() for name in names}
    points = np.stack([np.asarray(centroids[n], dtype=np.float64) for n in names])
    axes = {}
    for n, name in enumerate(names):
        up = points[max(n - 1, 0)] - points[min(n + 1, len(names) - 1)]
        axes[name] = up / np.linalg.norm(up)
    return axes


def surface_corners_ras(labelmap: Labelmap, label: int, region: tuple[slice, ...]) -> np.ndarray:
    """(N, 3) RAS mm: the 8 corners of every surface voxel of one label inside ``region`` (K, J, I slices)."""
    mask = np.pad(labelmap.volume.array[region] == label, 1)
    surface = mask & ~ndimage.binary_erosion(mask)
    k, j, i = np.nonzero(surface)
    start = np.array([s.start for s in region[::-1]]) - 1  # (i, j, k) of the padded crop's first voxel
    ijk = (np.stack([i, j, k], axis=1) + start)[:, None, :] + _CORNERS_IJK
    return labelmap.volume.ijk_to_ras_points(ijk.reshape(-1, 3))


class VertebraOutlines:
    """The vertebrae of a labelmap, ready to be boxed on any view: per vertebra the vertices of the
    convex hull of its surface-voxel corners (the projected hull has the same bounding rectangle
    as the projected voxels: a pinhole projection keeps convex sets convex), its centroid and the
    spine axis there, CT RAS mm. vertebrae: names to keep (default every vertebra of the labelmap).

    ``cut``: the vertebrae inside which the scan ends (:func:`..core.volume.scan_end_distance_mm`
    0, as the verdict's "vertebra cut by the CT's end"): the CT holds only part of them, so their
    box is the box of that part, not of the vertebra an X-ray shows (training and scoring of the
    detector leave them out).
    """

    def __init__(self, labelmap: Labelmap, vertebrae: Sequence[str] | None = None) -> None:
        labels = labelmap.labels
        self.names = [n for n in labels if vertebrae is None or n in vertebrae]
        centroids = centroids_ras(labelmap)
        axes = spine_axes_ras(centroids)
        regions = ndimage.find_objects(labelmap.volume.array)
        self.hulls, self.centers, self.axes = {}, {}, {}
        cut = set()
        for name in self.names:
            region = regions[labels[name] - 1]
            ijk = region[::-1]
            if scan_end_gap_mm([part.start for part in ijk], [part.stop for part in ijk], labelmap.volume) <= 0.0:
                cut.add(name)
            corners = surface_corners_ras(labelmap, labels[name], region)
            self.hulls[name] = corners[ConvexHull(corners).vertices]
            self.centers[name], self.axes[name] = centroids[name], axes[name]
        self.cut = frozenset(cut)

    def centers_at(self, matrix_ras: np.ndarray) -> dict[str, np.ndarray]:
        """name -> (3,) centroid, world RAS mm, of every vertebra with the CT at pose ``matrix_ras``
        (CT RAS -> world), e.g. to help name detected levels (:func:`..learned.levels.ct_level_scores`)."""
        points = apply_matrix(np.asarray(matrix_ras, dtype=np.float64), np.stack(list(self.centers.values())))
        return dict(zip(self.centers, points))

    def boxes(self, geometry: XrayGeometry, poses: Mapping[str, np.ndarray] | np.ndarray | None = None
              ) -> list[XrayBox]:
        """The box of each vertebra whose box centre lies on the image, cranial -> caudal.

        poses: one (4, 4) matrix_ras (CT RAS -> world) for all, or name -> matrix_ras (vertebrae
        without one stay at the identity); None: the identity. Boxes have score 1, ``accepted``
        False, source ``projection``.
        """
        columns, rows = geometry.size
        boxes = []
        for name in self.names:
            matrix = np.asarray(poses if isinstance(poses, np.ndarray) else (poses or {}).get(name, np.eye(4)), float)
            center = apply_matrix(matrix, self.centers[name][None])[0]
            tip = center + _AXIS_MM * (matrix[:3, :3] @ self.axes[name])
            points, ends = geometry.project(apply_matrix(matrix, self.hulls[name])), geometry.project(np.stack([center, tip]))
            if not (np.all(np.isfinite(points)) and np.all(np.isfinite(ends))):
                continue  # reaches the source's plane
            axis = ends[1] - ends[0]
            if np.linalg.norm(axis) < 1e-6:  # the spine runs along the beam: its own long axis
                axis = np.linalg.svd(points - points.mean(0), full_matrices=False)[2][0]
            box = bounding_rectangle(points, axis)
            column, row = box.mean(axis=0)
            if -0.5 <= column <= columns - 0.5 and -0.5 <= row <= rows - 0.5:
                boxes.append(XrayBox(name, box, 1.0, False, "projection"))
        return boxes


def projected_boxes(labelmap: Labelmap, geometry: XrayGeometry,
                    poses: Mapping[str, np.ndarray] | np.ndarray | None = None,
                    vertebrae: Sequence[str] | None = None) -> list[XrayBox]:
    """:meth:`VertebraOutlines.boxes` of one view (build the outlines once for many views)."""
    return VertebraOutlines(labelmap, vertebrae).boxes(geometry, poses)
