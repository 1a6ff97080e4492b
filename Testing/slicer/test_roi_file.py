"""The scene's vertebra ROI boxes as ``spinereg register --roi`` reads them (rois.roi_boxes /
write_scene_rois): an untouched box is the default one (no start shift), a moved, resized and
rotated box is written exactly as the user left it, in CT RAS."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from slicer.util import vtkMatrixFromArray  # noqa: E402
from SpineRegistrationLib.core.box import mask_box_center_ras  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.io.roi import read_roi  # noqa: E402
from SpineRegistrationLib.pipeline.inputs import RegisterConfig, load_case  # noqa: E402
from SpineRegistrationModuleLib.registration import register_arguments  # noqa: E402
from SpineRegistrationModuleLib.rois import roi_boxes, write_scene_rois  # noqa: E402


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _turn(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_untouched_boxes_are_the_default_ones(scene, phantom_dir, tmp_path):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    seg = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    rois = logic.create_vertebra_rois(scene, seg, ct)
    boxes = read_roi(write_scene_rois(scene, tmp_path)["roi"])
    labelmap = logic.vertebra_labelmap(seg, ct)
    assert sorted(boxes) == ["L1", "L2", "L3"]
    for name, box in boxes.items():
        np.testing.assert_allclose(box.center_ras, mask_box_center_ras(labelmap.volume.array == labelmap.labels[name],
                                                                       labelmap.volume), atol=1e-9)
        np.testing.assert_allclose(box.size_mm, rois[name].GetSize())
    assert write_scene_rois(slicer.vtkMRMLScene(), tmp_path / "none") == {}


def test_a_moved_resized_rotated_box_becomes_that_box_in_ct_ras(scene, phantom_dir, tmp_path):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    seg = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    roi = logic.create_vertebra_rois(scene, seg, ct, vertebrae=["L2"])["L2"]
    assert roi.GetDisplayNode().GetHandlesInteractive() and roi.GetDisplayNode().GetRotationHandleVisibility()
    default = logic.matrix_of(roi.GetObjectToNodeMatrix())
    turn = _turn([1.0, 0.5, 0.2], 20.0)
    edited = np.eye(4)
    edited[:3, :3] = turn @ default[:3, :3]
    edited[:3, 3] = default[:3, 3] + [4.0, -6.0, 10.0]
    roi.SetAndObserveObjectToNodeMatrix(vtkMatrixFromArray(edited))
    roi.SetSize(50.0, 44.0, 60.0)
    box = read_roi(write_scene_rois(scene, tmp_path)["roi"])["L2"]
    np.testing.assert_allclose(box.center_ras, edited[:3, 3], atol=1e-9)
    np.testing.assert_allclose(box.axes, edited[:3, :3], atol=1e-9)
    np.testing.assert_allclose(box.size_mm, [50.0, 44.0, 60.0])

    # Under a parent transform the box is where the scene shows it; with the CT moved, it goes back to the CT.
    shift = np.eye(4)
    shift[:3, 3] = [0.0, 5.0, 0.0]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(vtkMatrixFromArray(shift))
    roi.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(roi_boxes(scene)["L2"].center_ras, edited[:3, 3] + [0.0, 5.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(roi_boxes(scene, ct_pose=shift)["L2"].center_ras, edited[:3, 3], atol=1e-9)

    # The CLI starts L2 moved by the box's shift from its default centre.
    roi.SetAndObserveTransformNodeID(None)
    paths = write_scene_rois(scene, tmp_path)
    case = load_case(RegisterConfig(
        ct=phantom_dir / "ct.nii.gz", seg=phantom_dir / "seg.nii.gz", vertebrae=["L2"], roi=paths["roi"],
        xrays=[phantom_dir / f"{v}.png" for v in logic.VIEWS], geometries=[phantom_dir / f"{v}.json" for v in logic.VIEWS]))
    np.testing.assert_allclose(case.start("L2")[:3, 3], [4.0, -6.0, 10.0], atol=1e-9)
    args = register_arguments(paths | {"ct": "ct.nii.gz", "seg": "seg.nii.gz", "AP": "AP.nrrd", "AP_geometry": "AP.json",
                                       "LAT": "LAT.nrrd", "LAT_geometry": "LAT.json"}, ["L2"], "auto", "auto", "out")
    assert args[args.index("--roi") + 1] == str(paths["roi"])


def test_a_bad_box_is_refused_before_the_run_starts(scene, phantom_dir):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    seg = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    xrays = {view: logic.load_xray(scene, phantom_dir / f"{view}.png", phantom_dir / f"{view}.json", view)
             for view in logic.VIEWS}
    roi = logic.create_vertebra_rois(scene, seg, ct, vertebrae=["L2"])["L2"]
    inputs = logic.RegistrationInputs(ct, seg, xrays, vertebrae=["L2"])
    assert logic.check_inputs(inputs).vertebrae == ["L2"]
    roi.SetCenter(*(np.array(roi.GetCenter()) + [0.0, 0.0, 40.0]))  # dragged off its vertebra
    with pytest.raises(InputError, match="the box of L2 does not hold its centroid"):
        logic.check_inputs(inputs)
