"""Vertebra boxes that steer the registration: the ``spinereg-roi`` file (core.box, io.roi), what a
ROI box does to the compared region and the start (rigid.problem, pipeline.inputs), and the
triangulation of X-ray box centres (geometry.triangulation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SpineRegistrationLib.core.box import OrientedBox, mask_box_center_ras
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry import c_arm_geometry, preset_geometry
from SpineRegistrationLib.geometry.image_boxes import inside_convex
from SpineRegistrationLib.geometry.triangulation import DetectorBox, triangulate, triangulate_boxes
from SpineRegistrationLib.io.roi import read_roi, write_roi
from SpineRegistrationLib.pipeline.inputs import start_pose
from SpineRegistrationLib.rigid.problem import VertebraDRR


def _rotation(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_roi_file_round_trip(tmp_path):
    boxes = {"L1": OrientedBox([1.0, -2.0, 30.5], _rotation([1, 2, 3], 25.0), [60.0, 45.0, 38.0]),
             "L2": OrientedBox([0.0, 0.0, 0.0], np.eye(3), [1.0, 2.0, 3.0])}
    path = write_roi(tmp_path / "roi.json", boxes)
    document = json.loads(path.read_text())
    assert document["format"] == "spinereg-roi" and document["version"] == 1
    back = read_roi(path)
    assert list(back) == ["L1", "L2"]
    for name, box in boxes.items():
        np.testing.assert_allclose(back[name].center_ras, box.center_ras)
        np.testing.assert_allclose(back[name].axes, box.axes)  # columns are the edge directions
        np.testing.assert_allclose(back[name].size_mm, box.size_mm)
    np.testing.assert_allclose(np.asarray(document["vertebrae"]["L1"]["axes"])[:, 0], boxes["L1"].axes[:, 0])


def test_oriented_box_contains_and_corners():
    box = OrientedBox([10.0, 0.0, 0.0], _rotation([0, 0, 1], 90.0), [20.0, 4.0, 2.0])  # long edge along y
    assert box.contains(np.array([10.0, 9.0, 0.0])) and not box.contains(np.array([19.0, 0.0, 0.0]))
    np.testing.assert_allclose(box.corners().mean(0), box.center_ras, atol=1e-12)
    np.testing.assert_allclose(np.ptp(box.corners(), axis=0), [4.0, 20.0, 2.0], atol=1e-9)


@pytest.mark.parametrize("entry, message", [
    ({"center_ras": [0, 0, 0], "axes": [[1, 0, 0], [0, 1, 0], [0, 0, 2]], "size_mm": [1, 1, 1]}, "not orthonormal"),
    ({"center_ras": [0, 0, 0], "axes": [[1, 0, 0], [1, 0, 0], [0, 0, 1]], "size_mm": [1, 1, 1]}, "not orthonormal"),
    ({"center_ras": [0, 0, 0], "axes": np.eye(3).tolist(), "size_mm": [1, 0, 1]}, "size must be > 0"),
    ({"center_ras": [0, 0], "axes": np.eye(3).tolist(), "size_mm": [1, 1, 1]}, "centre of 3"),
    ({"center_ras": ["a", 0, 0], "axes": np.eye(3).tolist(), "size_mm": [1, 1, 1]}, "must be numbers"),
    ({"axes": np.eye(3).tolist(), "size_mm": [1, 1, 1]}, "needs center_ras"),
])
def test_bad_boxes_are_one_line_errors(tmp_path, entry, message):
    path = tmp_path / "roi.json"
    path.write_text(json.dumps({"format": "spinereg-roi", "version": 1, "vertebrae": {"L2": entry}}))
    with pytest.raises(InputError, match=message) as error:
        read_roi(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("text, message", [
    ('{"format": "spinereg-roi", "version": 1, "vertebrae": {', "not valid JSON"),
    ('{"format": "spinereg-xray-boxes", "version": 1, "vertebrae": {}}', "expected 'spinereg-roi'"),
    ('{"format": "spinereg-roi", "version": 2, "vertebrae": {}}', "version is 2"),
    ('{"format": "spinereg-roi", "version": 1, "vertebrae": {}}', "non-empty"),
    ('{"format": "spinereg-roi", "version": 1, "vertebrae": {"X9": {}}}', "unknown vertebra 'X9'"),
])
def test_bad_roi_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "roi.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        read_roi(path)
    assert "\n" not in str(error.value)


def _block_ct():
    """A 1 mm CT of soft tissue with a bone block (the vertebra) and a second block beside it."""
    array = np.zeros((40, 40, 60), np.float32)
    array[10:30, 10:30, 10:30] = 0.02
    array[15:25, 15:25, 15:25] = 0.05
    array[15:25, 15:25, 40:50] = 0.05  # a neighbour along i (R-L)
    mask = np.zeros(array.shape, bool)
    mask[15:25, 15:25, 15:25] = True
    return Volume(array, np.eye(4)), mask


def test_a_roi_box_sets_the_region_the_registration_compares():
    mu, mask = _block_ct()
    plain = VertebraDRR(mu, mask, 2.0, "cpu", context_mm=30.0, full_depth=True)
    box = OrientedBox(mask_box_center_ras(mask, mu) + [-3.0, 0.0, 0.0], _rotation([0, 0, 1], 10.0), [14.0, 14.0, 14.0])
    steered = VertebraDRR(mu, mask, 2.0, "cpu", context_mm=30.0, full_depth=True, region=box)
    assert steered.full_depth is False
    assert plain.context_roi[1][0] > 40 and steered.context_roi[1][0] <= 40  # the neighbour block is out
    assert steered.mask.sum() < mask.sum() and not (steered.mask & ~mask).any()  # the label inside the box
    np.testing.assert_allclose(steered.center_ras, plain.center_ras)  # the pose's centre stays the centroid
    np.testing.assert_allclose(steered.corners_ras, box.corners())
    geometry = c_arm_geometry(isocenter_ras=plain.center_ras, size=(48, 48), pixel_spacing=(1.5, 1.5))
    import torch

    pose = torch.eye(4)[None]
    plain_drr, steered_drr = plain.render(pose, geometry)[0], steered.render(pose, geometry)[0]
    assert not torch.allclose(plain_drr, steered_drr)
    assert float(steered_drr.min()) == 0.0  # above soft tissue: no slab around the box


def test_start_pose_composes_the_roi_shift_after_init_and_boxes_win():
    init = np.eye(4)
    init[:3, :3] = _rotation([0, 0, 1], 90.0)
    init[:3, 3] = [5.0, 0.0, 0.0]
    center = np.array([1.0, 2.0, 3.0])
    start = start_pose(init, center, roi_shift_ct=np.array([10.0, 0.0, 0.0]))
    np.testing.assert_allclose(start, init @ np.array([[1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    target = np.array([40.0, -7.0, 2.0])
    moved = start_pose(init, center, roi_shift_ct=np.array([10.0, 0.0, 0.0]), center_world=target)
    np.testing.assert_allclose(moved[:3, :3] @ center + moved[:3, 3], target)
    np.testing.assert_allclose(moved[:3, :3], init[:3, :3])


def test_triangulation_recovers_a_projected_point():
    rng = np.random.default_rng(0)
    views = [preset_geometry("AP"), preset_geometry("LAT"), c_arm_geometry(primary_deg=40.0, secondary_deg=10.0)]
    for _ in range(5):
        point = rng.uniform(-40, 40, 3)
        pixels = np.stack([g.project(point) for g in views])
        found, distance = triangulate(views[:2], pixels[:2])
        np.testing.assert_allclose(found, point, atol=1e-6)
        assert distance < 1e-6
        noisy, distance = triangulate(views, pixels + rng.normal(0, 0.5, pixels.shape))  # 0.5 px noise
        assert np.linalg.norm(noisy - point) < 1.0 and distance < 1.0
    with pytest.raises(InputError, match="two or more views"):
        triangulate(views[:1], pixels[:1])
    with pytest.raises(InputError, match="parallel"):
        triangulate([views[0], views[0]], np.stack([views[0].project(point)] * 2))


def test_detector_boxes_hold_the_points_that_project_inside_them():
    views = [preset_geometry("AP"), preset_geometry("LAT")]
    point = np.array([3.0, -4.0, 12.0])
    boxes = [DetectorBox(g, g.project(point) + np.array([[-20, -15], [20, -15], [20, 15], [-20, 15.0]]), v)
             for g, v in zip(views, ("AP", "LAT"))]
    found, _ = triangulate_boxes(boxes)
    np.testing.assert_allclose(found, point, atol=1e-6)
    assert all(box.holds(point) for box in boxes)
    assert not boxes[0].holds(point + [0.0, 0.0, 30.0])  # a level higher: off the AP box
    assert inside_convex(boxes[0].corners_px[::-1], boxes[0].center_px)  # either winding


def test_the_translation_grid_stays_inside_the_accepted_boxes():
    """Boxes drawn around the neighbour block: every candidate of the grid projects inside them, the
    best one on the neighbour (25 mm along R), though the start sits on the vertebra itself."""
    import torch

    from SpineRegistrationLib.render.drr import render_drr
    from SpineRegistrationLib.rigid import RigidConfig
    from SpineRegistrationLib.rigid.problem import prepare_xray, pyramid
    from SpineRegistrationLib.rigid.search import grid_search

    mu, mask = _block_ct()
    vertebra = VertebraDRR(mu, mask, 2.0, "cpu")
    neighbour = vertebra.center_ras + [25.0, 0.0, 0.0]
    views, boxes = [], []
    for name in ("AP", "LAT"):
        geometry = preset_geometry(name, isocenter_ras=vertebra.center_ras + [12.0, 0.0, 0.0], size=(64, 64),
                                   pixel_spacing=(1.5, 1.5))
        image = render_drr(mu, geometry)
        views.append(pyramid(prepare_xray(image), geometry, (1.5,))[0])
        boxes.append(DetectorBox(geometry, geometry.project(neighbour) + np.array([[-5, -5], [5, -5], [5, 5], [-5, 5.0]]),
                                 name))
    config = RigidConfig(search_mm=30.0, search_step_mm=2.0, grid_rotation_deg=0.0, candidates=3, candidate_gap_mm=4.0)
    with torch.no_grad():
        candidates = grid_search(vertebra, views, np.eye(4), config, "cpu", boxes)
    centres = np.stack([pose[:3, :3] @ vertebra.center_ras + pose[:3, 3] for pose in candidates])
    assert all(box.holds(centres).all() for box in boxes)
    assert abs(centres[0][0] - neighbour[0]) <= 2.0
