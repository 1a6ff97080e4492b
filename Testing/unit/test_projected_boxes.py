"""Oriented boxes on the X-ray: IoU of convex polygons and the projected box of a labelled CT (analytic)."""

import math

import numpy as np
import pytest

from SpineRegistrationLib.core.frames import homogeneous
from SpineRegistrationLib.core.labelmap import Labelmap
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.geometry import preset_geometry
from SpineRegistrationLib.geometry.image_boxes import bounding_rectangle, box_iou, polygon_area, rectangle_corners
from SpineRegistrationLib.render.projected_boxes import VertebraOutlines, projected_boxes


def test_iou_of_shifted_and_turned_squares():
    square = rectangle_corners((0, 0), 2.0, 2.0, (0, 1))
    assert box_iou(square, square) == pytest.approx(1.0)
    assert box_iou(square, square + [1.0, 0.0]) == pytest.approx(2 / 6)  # overlap 1x2 of union 6
    assert box_iou(square, square + [5.0, 0.0]) == 0.0
    turned = rectangle_corners((0, 0), 2.0, 2.0, (1, 1))  # 45 deg: the overlap is a regular octagon
    octagon = 8 * (math.sqrt(2) - 1)
    assert box_iou(square, turned[::-1]) == pytest.approx(octagon / (8 - octagon))


def test_rectangle_corners_order_and_bounding_rectangle():
    corners = rectangle_corners((10, 20), 4.0, 6.0, (0, -1))
    np.testing.assert_allclose(corners[2] - corners[1], [0, -6])  # 1 -> 2 along the axis
    np.testing.assert_allclose(np.linalg.norm(corners[1] - corners[0]), 4.0)
    assert abs(polygon_area(corners)) == pytest.approx(24.0)
    points = np.random.default_rng(0).uniform(-1, 1, (200, 2)) * [2, 3] @ np.array([[0.6, 0.8], [-0.8, 0.6]])
    box = bounding_rectangle(points, (-0.8, 0.6))
    assert box_iou(box, rectangle_corners((0, 0), 4, 6, (-0.8, 0.6))) > 0.95


SPACING = np.array([1.0, 1.25, 2.0])


def box_labelmap(slabs_k=((10, 30),), size_ijk=(40, 30, 80)):
    """VerSe labels L1, L2, ... as boxes i 10..29, j 8..21 and the given k slabs (voxel index ranges)."""
    array = np.zeros(size_ijk[::-1], dtype=np.uint8)
    for n, (k0, k1) in enumerate(slabs_k):
        array[k0:k1, 8:22, 10:30] = 20 + n
    volume = Volume(array, homogeneous(np.diag(SPACING), [-20.0, -15.0, -60.0]))
    return Labelmap(volume, "verse")


def corners_ras(labelmap, label):
    """The 8 physical corners (voxel edges, not centres) of a box label, RAS mm."""
    k, j, i = np.nonzero(labelmap.volume.array == label)
    low, high = np.array([i.min(), j.min(), k.min()]) - 0.5, np.array([i.max(), j.max(), k.max()]) + 0.5
    grid = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    return labelmap.volume.ijk_to_ras_points(grid)


def test_box_label_projects_to_its_corners_outline_axis_aligned_and_turned():
    labelmap = box_labelmap()
    geometry = preset_geometry("AP", size=(300, 300), pixel_spacing=(0.5, 0.5), isocenter_ras=(0.0, 0.0, 0.0))
    (box,) = projected_boxes(labelmap, geometry)
    projected = geometry.project(corners_ras(labelmap, 20))
    low, high = projected.min(0), projected.max(0)
    expected = np.array([[low[0], low[1]], [high[0], low[1]], [high[0], high[1]], [low[0], high[1]]])
    assert (box.vertebra, box.source, box.score, box.accepted) == ("L1", "projection", 1.0, False)
    assert box_iou(box.corners_px, expected) > 0.999
    np.testing.assert_allclose(np.sort(box.corners_px, 0), np.sort(expected, 0), atol=1e-6)
    assert box.corners_px[2, 1] < box.corners_px[1, 1]  # 1 -> 2 toward the head: rows decrease (AP rows run to the feet)

    center = labelmap.volume.ijk_to_ras_points(np.array([19.5, 14.5, 19.5]))
    turned = params_to_matrix(np.array([0.0, 25.0, 0.0, 3.0, 0.0, -4.0]), center)  # about the beam (y) axis
    (box,) = projected_boxes(labelmap, geometry, turned)
    points = geometry.project(corners_ras(labelmap, 20) @ turned[:3, :3].T + turned[:3, 3])
    along = geometry.project(np.stack([turned[:3, 3] + turned[:3, :3] @ center,
                                       turned[:3, 3] + turned[:3, :3] @ (center + [0, 0, 10])]))
    expected = bounding_rectangle(points, along[1] - along[0])
    assert box_iou(box.corners_px, expected) > 0.999
    edge = box.corners_px[2] - box.corners_px[1]
    # Ry(25) tips the superior axis toward +x (R), which the AP view shows toward lower columns
    assert math.degrees(math.atan2(edge[0], -edge[1])) == pytest.approx(-25.0, abs=0.01)


def test_spine_axis_from_neighbours_per_vertebra_poses_and_views():
    labelmap = box_labelmap(slabs_k=((5, 20), (25, 40), (45, 60)))
    geometry = preset_geometry("LAT", size=(400, 400), pixel_spacing=(0.5, 0.5), isocenter_ras=(0.0, 0.0, 0.0))
    boxes = projected_boxes(labelmap, geometry)
    assert [b.vertebra for b in boxes] == ["L1", "L2", "L3"]
    rows = [b.center_px[1] for b in boxes]
    assert rows[0] > rows[1] > rows[2]  # k grows toward superior: L1 (k 5..19) lies lowest (rows to the feet)
    for box in boxes:
        np.testing.assert_allclose(box.corners_px[1, 1], box.corners_px[0, 1], atol=1e-6)  # across: one row
    moved = params_to_matrix(np.array([0.0, 0.0, 0.0, 0.0, 0.0, 30.0]), np.zeros(3))
    (shifted,) = projected_boxes(labelmap, geometry, {"L2": moved}, vertebrae=["L2"])
    assert shifted.center_px[1] < boxes[1].center_px[1] - 30  # 30 mm up, magnified, at 0.5 mm pixels
    outlines = VertebraOutlines(labelmap)
    at = outlines.centers_at(moved)  # the centroids where the whole CT is moved 30 mm up
    assert list(at) == ["L1", "L2", "L3"]
    for name, center in outlines.centers.items():
        np.testing.assert_allclose(at[name], center + [0.0, 0.0, 30.0], atol=1e-9)


def test_vertebrae_off_the_image_get_no_box():
    labelmap = box_labelmap()
    geometry = preset_geometry("AP", size=(300, 300), pixel_spacing=(0.5, 0.5), isocenter_ras=(0.0, 0.0, 200.0))
    assert projected_boxes(labelmap, geometry) == []


def test_vertebrae_the_volume_cuts_are_marked_cut():
    labelmap = box_labelmap(slabs_k=((0, 20), (25, 40), (45, 80)))  # L1 from the first slice, L3 to the last
    assert VertebraOutlines(labelmap).cut == {"L1", "L3"}
    assert VertebraOutlines(box_labelmap(slabs_k=((1, 20), (25, 40), (45, 79)))).cut == set()
    array = box_labelmap().volume.array.copy()
    array[10:30, 0:22, 10:30] = array.max()  # reaches j = 0: a side of the CT, not an end of the scan
    assert VertebraOutlines(Labelmap(box_labelmap().volume.with_array(array), "verse")).cut == set()
