"""Vertebra boxes on the X-rays (SpineRegistrationModuleLib.boxes) on a real vtkMRMLScene.

Corners (column, row) px -> markups plane on the detector plane -> corners, exactly; a plane
moved, rotated and resized as the slice-view handles do reads back as the expected corners;
rename / delete / add; accepted state; JSON and COCO export -> import; bad files rejected
with one line and the scene unchanged; boxes projected from the phantom's CT at its true poses
hold each vertebra's projected voxels, and a box moved off its vertebra is warned about.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from SpineRegistrationModuleLib import boxes as box_logic  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.geometry.image_boxes import inside_convex  # noqa: E402
from SpineRegistrationLib.io import read_labelmap  # noqa: E402
from SpineRegistrationLib.io.xray_boxes import XrayBox, read_coco, read_xray_boxes  # noqa: E402


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def xrays(scene, phantom_dir):
    return {view: logic.load_xray(scene, phantom_dir / f"{view}.png", phantom_dir / f"{view}.json", view)
            for view in logic.VIEWS}


def rectangle_px(center, width, height, angle_deg) -> np.ndarray:
    """(4, 2) corners (column, row) of a rectangle, corner 0 -> 1 along the angle."""
    a = np.radians(angle_deg)
    x, y = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    signs = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)])
    return np.asarray(center, float) + signs[:, :1] * x * width / 2 + signs[:, 1:] * y * height / 2


def scene_state(scene) -> dict:
    """Every node's id -> (name, attributes, plane corners when a plane): what must not change."""
    state = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        corners = box_logic.corners_world_of(node).round(9).tolist() if node.IsA("vtkMRMLMarkupsPlaneNode") else None
        state[node.GetID()] = (node.GetName(), {a: node.GetAttribute(a) for a in node.GetAttributeNames()}, corners)
    return state


def add_truth_poses(scene, phantom_dir) -> dict:
    """The phantom's true poses as the scene's registration transforms (as a result would put them)."""
    truth = json.loads((phantom_dir / "truth.json").read_text())["vertebrae"]
    for name, entry in truth.items():
        node = slicer.vtkMRMLLinearTransformNode()
        scene.AddNode(node)
        node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(entry["matrix_ras"])))
        logic.tag_node(node, logic.ROLE_TRANSFORM, vertebra=name)
    return {name: np.array(entry["matrix_ras"]) for name, entry in truth.items()}


# ---------------------------------------------------------------------- corners <-> markups
def test_corners_round_trip_exactly_through_a_plane_on_the_detector(scene, xrays):
    corners = rectangle_px((120.25, 90.5), 31.0, 22.5, 17.0)
    for view, xray in xrays.items():
        (node,) = logic.boxes_to_scene(scene, xray, [XrayBox("L2", corners, 0.8, False, "detector")])
        assert node.IsA("vtkMRMLMarkupsPlaneNode") and node.GetName() == "L2"
        assert node.GetAttribute(logic.ATTR_VIEW) == view and box_logic.xray_of(node) is xray
        box = logic.box_of(node)
        np.testing.assert_allclose(box.corners_px, corners, atol=1e-9)
        assert (box.vertebra, box.score, box.accepted, box.source) == ("L2", 0.8, False, "detector")
        # On the detector plane: every corner's world position is that pixel's.
        geometry = logic.geometry_of(xray)
        np.testing.assert_allclose(box_logic.corners_world_of(node), geometry.pixel_to_ras(corners[:, 0], corners[:, 1]), atol=1e-9)
        assert node.GetDisplayNode().GetSelectedColor() == pytest.approx(box_logic.PENDING_COLOR)
        assert node.GetDisplayNode().GetHandlesInteractive()


def test_moved_rotated_resized_plane_reads_back_as_its_corners(scene, xrays):
    xray = xrays["AP"]
    geometry = logic.geometry_of(xray)
    du, dv = geometry.pixel_spacing
    (node,) = logic.boxes_to_scene(scene, xray, [XrayBox("L1", rectangle_px((100, 100), 30, 20, 0), 1.0)])
    # Move 7 columns right and 3 rows down (the translation handle drags the centre in the plane).
    center = np.array(node.GetCenterWorld()) + 7 * du * geometry.detector_u + 3 * dv * geometry.detector_v
    node.SetCenterWorld(*center)
    np.testing.assert_allclose(logic.box_of(node).corners_px, rectangle_px((107, 103), 30, 20, 0), atol=1e-9)
    # Rotate 25 degrees about the detector normal (the rotation handle in the slice view).
    x, y, z = [0.0] * 3, [0.0] * 3, [0.0] * 3
    node.GetAxesWorld(x, y, z)
    a = np.radians(25.0)
    new_x, new_y = np.cos(a) * np.array(x) + np.sin(a) * np.array(y), -np.sin(a) * np.array(x) + np.cos(a) * np.array(y)
    node.SetAxesWorld(new_x, new_y, z)
    np.testing.assert_allclose(logic.box_of(node).corners_px, rectangle_px((107, 103), 30, 20, 25), atol=1e-9)
    # Resize one side (the scale handle moves one edge: asymmetric bounds): 10 px wider to +x.
    bounds = list(node.GetPlaneBounds())
    node.SetPlaneBounds(bounds[0], bounds[1] + 10 * du, bounds[2], bounds[3])
    shifted = np.array([107, 103]) + 5 * np.array([np.cos(a), np.sin(a)])
    np.testing.assert_allclose(logic.box_of(node).corners_px, rectangle_px(shifted, 40, 20, 25), atol=1e-9)


# ---------------------------------------------------------------------- rename, delete, add, accept
def test_rename_delete_add_and_accepted_state(scene, xrays, tmp_path):
    xray = xrays["LAT"]
    nodes = logic.boxes_to_scene(scene, xray, [XrayBox("L1", rectangle_px((128, 80), 30, 20, 0)),
                                               XrayBox("L2", rectangle_px((128, 120), 30, 20, 0))])
    nodes[0].SetName("T12")  # rename
    assert [b.vertebra for b in logic.boxes_from_scene(scene, xray)] == ["T12", "L2"]
    logic.remove_node(scene, nodes[1])  # delete
    assert [b.vertebra for b in logic.boxes_from_scene(scene, xray)] == ["T12"]
    added = logic.add_box(scene, xray, "L3")  # add: default size at the image centre
    box = logic.box_of(added)
    np.testing.assert_allclose(box.center_px, [127.5, 127.5], atol=1e-9)
    width_px = np.linalg.norm(box.corners_px[1] - box.corners_px[0])
    assert width_px == pytest.approx(box_logic.NEW_BOX_SIZE_MM[0] / logic.geometry_of(xray).pixel_spacing[0])
    assert (box.source, box.accepted) == ("manual", False)
    # Accepted state: attribute and colour, per box and for all.
    logic.set_accepted(added)
    assert logic.is_accepted(added) and added.GetDisplayNode().GetSelectedColor() == pytest.approx(box_logic.ACCEPTED_COLOR)
    assert [b.accepted for b in logic.boxes_from_scene(scene, xray)] == [False, True]
    assert [b.vertebra for b in logic.boxes_from_scene(scene, xray, accepted_only=True)] == ["L3"]
    logic.set_accepted(added, False)
    assert not logic.is_accepted(added)
    assert logic.accept_all(scene) == 2 and all(row[3] for row in logic.box_rows(scene))
    accepted, images = logic.collect_boxes(scene, accepted_only=True)
    assert sorted(b.vertebra for b in accepted["LAT"]) == ["L3", "T12"] and images["LAT"].size == (256, 256)
    # An unknown name is a clear error at export; nothing is written.
    nodes[0].SetName("lumbar thing")
    with pytest.raises(InputError, match="'lumbar thing' on the LAT X-ray is not named after a vertebra"):
        logic.export_boxes(scene, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.coco.json").exists()
    nodes[0].SetName("L3")
    with pytest.raises(InputError, match="more than one L3 box"):
        logic.export_boxes(scene, tmp_path / "bad.json")
    with pytest.raises(InputError, match="unknown vertebra"):
        logic.add_box(scene, xray, "X9")


def test_new_boxes_replace_unaccepted_ones_and_keep_accepted_ones(scene, xrays):
    xray = xrays["AP"]
    first = logic.boxes_to_scene(scene, xray, [XrayBox("L1", rectangle_px((100, 80), 30, 20, 0)),
                                               XrayBox("L2", rectangle_px((100, 120), 30, 20, 0))])
    logic.set_accepted(first[0])
    logic.boxes_to_scene(scene, xray, [XrayBox("L1", rectangle_px((110, 80), 30, 20, 0)),
                                       XrayBox("L2", rectangle_px((110, 120), 30, 20, 0))])
    boxes = {b.vertebra: b for b in logic.boxes_from_scene(scene, xray)}
    assert boxes["L1"].accepted and boxes["L1"].center_px[0] == pytest.approx(100)  # kept
    assert boxes["L2"].center_px[0] == pytest.approx(110) and len(logic.box_nodes(scene, xray)) == 2  # replaced
    # Two unaccepted boxes of one vertebra (one named the long way) both give way to the new one.
    logic.add_box(scene, xray, "L2").SetName("lumbar vertebra 2")
    logic.boxes_to_scene(scene, xray, [XrayBox("L2", rectangle_px((120, 120), 30, 20, 0))])
    assert sorted(node.GetName() for node in logic.box_nodes(scene, xray)) == ["L1", "L2"]


# ---------------------------------------------------------------------- export / import
def test_export_import_round_trip_json_and_coco(scene, xrays, tmp_path):
    made = {
        "AP": [XrayBox("L1", rectangle_px((110.5, 70.25), 33, 21, 8), 0.9, True, "detector"),
               XrayBox("L2", rectangle_px((112, 110), 34, 22, -5), 0.4, False, "projection")],
        "LAT": [XrayBox("L1", rectangle_px((140, 72), 30, 25, 80), 1.0, False, "manual")],
    }
    for view, boxes in made.items():
        logic.boxes_to_scene(scene, xrays[view], boxes)
    json_path, coco_path = logic.export_boxes(scene, tmp_path / "boxes.json")
    assert coco_path == tmp_path / "boxes.coco.json"
    assert sorted(read_xray_boxes(json_path)) == ["AP", "LAT"] and sorted(read_coco(coco_path)[1]) == ["AP", "LAT"]
    for path in (json_path, coco_path):
        for node in logic.box_nodes(scene):
            logic.remove_node(scene, node)
        logic.add_box(scene, xrays["AP"], "T12")  # replaced by the import
        imported = logic.import_boxes(scene, path)
        assert sorted(imported) == ["AP", "LAT"]
        for view, boxes in made.items():
            back = logic.boxes_from_scene(scene, xrays[view])
            assert [(b.vertebra, b.score, b.accepted, b.source) for b in back] == \
                   [(b.vertebra, b.score, b.accepted, b.source) for b in boxes]
            for got, want in zip(back, boxes):
                np.testing.assert_allclose(got.corners_px, want.corners_px, atol=1e-9)


@pytest.mark.parametrize("content, message", [
    ("{not json", "boxes.json"),
    (json.dumps({"format": "something-else", "version": 1}), "expected 'spinereg-xray-boxes'"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "Q7", "corners_px": [[1, 1], [30, 1], [30, 20], [1, 20]]}]}}),
     "unknown vertebra 'Q7'"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": [[900, 900], [930, 900], [930, 920], [900, 920]]}]}}),
     "outside the 256x256 image"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"OBLIQUE": [{"vertebra": "L1", "corners_px": [[1, 1], [30, 1], [30, 20], [1, 20]]}]}}),
     "no such X-ray"),
    (json.dumps({"images": [{"id": 1, "file_name": "AP.png", "width": 256, "height": 256}],
                 "annotations": [{"image_id": 1, "category_id": 1000, "segmentation": [[1, 1, 30, 1, 30, 20, 1, 20]]}],
                 "categories": []}), "malformed COCO"),
    (json.dumps({"images": [{"id": 1, "file_name": "AP.png", "width": 512, "height": 256}], "annotations": [],
                 "categories": []}), "the AP image is 512x256, the X-ray 256x256"),
])
def test_bad_box_files_leave_the_scene_unchanged(scene, xrays, tmp_path, content, message):
    logic.boxes_to_scene(scene, xrays["AP"], [XrayBox("L1", rectangle_px((100, 80), 30, 20, 10))])
    before = scene_state(scene)
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        logic.import_boxes(scene, path)
    assert "\n" not in str(error.value)
    assert scene_state(scene) == before
    with pytest.raises(InputError, match="not an X-ray with a geometry"):
        logic.boxes_to_scene(scene, logic.source_node_of(xrays["AP"]), [XrayBox("L1", rectangle_px((9, 9), 5, 5, 0))])
    assert scene_state(scene) == before


@pytest.mark.parametrize("box, message", [
    (XrayBox("Q7", rectangle_px((100, 80), 30, 20, 0)), "unknown vertebra 'Q7'"),
    (XrayBox("L1", rectangle_px((400, 80), 30, 20, 0)), "outside the 256x256 image"),
    (XrayBox("L1", [[10, 10], [10, 10], [10, 10], [10, 10]]), "degenerate box"),
    (XrayBox("L1", [[10, 10], [40, 10], [10, 30], [40, 30]]), "degenerate box"),  # corners not in order around it
    (XrayBox("L1", rectangle_px((100, 80), 30, 20, 0), score=1.5), "score must be a number in"),
])
def test_bad_boxes_leave_the_scene_unchanged(scene, xrays, box, message):
    logic.boxes_to_scene(scene, xrays["AP"], [XrayBox("L2", rectangle_px((100, 120), 30, 20, 0))])
    before = scene_state(scene)
    with pytest.raises(InputError, match=message) as error:
        logic.boxes_to_scene(scene, xrays["AP"], [XrayBox("L3", rectangle_px((100, 160), 30, 20, 0)), box], replace=True)
    assert "\n" not in str(error.value) and scene_state(scene) == before


# ---------------------------------------------------------------------- from the CT
def test_projected_boxes_hold_the_vertebra_projections(scene, xrays, phantom_dir):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    segmentation = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    poses = add_truth_poses(scene, phantom_dir)
    made = logic.project_boxes(scene, ct, segmentation)
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    for view, xray in xrays.items():
        assert sorted(node.GetName() for node in made[view]) == sorted(poses)
        geometry = logic.geometry_of(xray)
        for box in logic.boxes_from_scene(scene, xray):
            assert box.source == "projection" and not box.accepted
            k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[box.vertebra])
            points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(float))
            moved = points @ poses[box.vertebra][:3, :3].T + poses[box.vertebra][:3, 3]
            assert inside_convex(box.corners_px, geometry.project(moved), tolerance=1e-6).all(), (view, box.vertebra)
    assert logic.projection_warnings(scene, ct, segmentation) == []
    # An unregistered vertebra projects at the CT's pose: moved with the CT's parent transform.
    ap = xrays["AP"]
    unregistered = logic.boxes_from_scene(scene, ap)[0].vertebra
    logic.remove_node(scene, logic.first_node(scene, logic.ROLE_TRANSFORM, vertebra=unregistered))

    def center_of_unregistered():
        logic.project_boxes(scene, ct, segmentation, {"AP": ap})
        return next(b for b in logic.boxes_from_scene(scene, ap) if b.vertebra == unregistered).center_px

    at_identity = center_of_unregistered()
    shift = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(shift)
    offset = 12.0 * logic.geometry_of(ap).detector_u  # mm, along the AP detector's columns
    shift.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.block([[np.eye(3), offset[:, None]], [0, 0, 0, 1]])))
    for node in (ct, segmentation):
        node.SetAndObserveTransformNodeID(shift.GetID())
    moved_mm = (center_of_unregistered() - at_identity) * logic.geometry_of(ap).pixel_spacing
    assert 12.0 < moved_mm[0] < 24.0 and abs(moved_mm[1]) < 1.0  # magnified between 1 and 2
    for node in (ct, segmentation):
        node.SetAndObserveTransformNodeID(None)
    add_truth_poses(scene, phantom_dir)
    logic.project_boxes(scene, ct, segmentation)
    assert logic.projection_warnings(scene, ct, segmentation) == []
    # A box moved off its vertebra (and one renamed to a vertebra not registered) -> one warning.
    node = logic.box_nodes(scene, xrays["LAT"])[0]
    name = node.GetName()
    node.SetCenterWorld(*(np.array(node.GetCenterWorld()) + 20 * logic.geometry_of(xrays["LAT"]).detector_v))
    renamed = next(n for n in logic.box_nodes(scene, xrays["AP"]) if n.GetName() == name)
    renamed.SetCenterWorld(*(np.array(renamed.GetCenterWorld()) + 20 * logic.geometry_of(xrays["AP"]).detector_v))
    renamed.SetName("C1")
    (warning,) = logic.projection_warnings(scene, ct, segmentation)
    assert warning.startswith(f"the LAT box {name} holds only") and "registered pose" in warning


# ---------------------------------------------------------------------- detection (out of process)
FAKE_DETECT = '''#!{python}
"""Stands in for 'python -m SpineRegistrationLib detect --xray X --geometry G ... --out OUT': per view
two L1 boxes (the better one is kept), or an error."""
import json, sys
args = sys.argv[sys.argv.index("detect") + 1:]
if {failing!r}:
    print("spinereg: error: no vertebra found on the X-ray", file=sys.stderr)
    sys.exit(2)
print("progress 0.5 detecting", flush=True)
views = [args[i + 1].rsplit("/", 1)[-1][: -len(".json")] for i, name in enumerate(args) if name == "--geometry"]
boxes = [{{"vertebra": "L1", "corners_px": [[100, 60], [140, 60], [140, 90], [100, 90]], "score": 0.7, "source": "detector"}},
         {{"vertebra": "L1", "corners_px": [[10, 60], [40, 60], [40, 90], [10, 90]], "score": 0.2, "source": "detector"}}]
if "--ct" in args:  # with the CT: what it was given, and a projected box as the real command adds
    given = {{key: __import__("os").path.isfile(args[args.index(key) + 1]) for key in ("--ct", "--seg") if key in args}}
    json.dump(given, open(sys.argv[0] + ".ct.json", "w"))
    boxes.append({{"vertebra": "L2", "corners_px": [[100, 90], [140, 90], [140, 120], [100, 120]], "score": 1.0,
                  "source": "projection"}})
with open(args[args.index("--out") + 1], "w") as out:
    json.dump({{"format": "spinereg-xray-boxes", "version": 1, "xrays": {{view: boxes for view in views}}}}, out)
'''


def fake_detector(folder, failing=False) -> str:
    import stat
    import sys

    path = folder / "fake_python"
    path.write_text(FAKE_DETECT.format(python=sys.executable, failing=failing))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_detected_boxes_come_from_spinereg_detect_and_keep_accepted_boxes(scene, xrays, tmp_path):
    (kept,) = logic.boxes_to_scene(scene, xrays["LAT"], [XrayBox("L1", rectangle_px((50, 50), 20, 20, 0), 1.0, True)])
    progress = []
    made = logic.detect_boxes(scene, xrays, python=fake_detector(tmp_path), work_dir=tmp_path,
                              callback=lambda event: progress.append((event.fraction, event.message)))
    assert [node.GetName() for node in made["AP"]] == ["L1"] and made["LAT"] == []  # the accepted LAT L1 stays
    (box,) = logic.boxes_from_scene(scene, xrays["AP"])
    np.testing.assert_allclose(box.corners_px, [[100, 60], [140, 60], [140, 90], [100, 90]], atol=1e-9)
    assert (box.score, box.source, box.accepted) == (0.7, "detector", False)
    assert logic.box_nodes(scene, xrays["LAT"]) == [kept]
    assert (0.5, "detecting") in progress
    assert [p.name for p in tmp_path.iterdir()] == ["fake_python"]  # the work folder is gone


def test_detection_with_the_ct_passes_it_and_keeps_the_detector_boxes_only(scene, xrays, phantom_dir, tmp_path):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    segmentation = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    python = fake_detector(tmp_path)
    made = logic.detect_boxes(scene, xrays, python=python, work_dir=tmp_path, ct_node=ct, segmentation_node=segmentation)
    assert json.loads(Path(python + ".ct.json").read_text()) == {"--ct": True, "--seg": True}
    assert {view: [node.GetName() for node in nodes] for view, nodes in made.items()} == {"AP": ["L1"], "LAT": ["L1"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_python", "fake_python.ct.json"]
    # a CT the X-rays do not see where it is (far off, before any alignment) is left out: Detect still runs
    Path(python + ".ct.json").unlink()
    far = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    far.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 5000.0], [0, 0, 0, 1]])))
    for node in (ct, segmentation):
        node.SetAndObserveTransformNodeID(far.GetID())
    logic.detect_boxes(scene, xrays, python=python, work_dir=tmp_path, ct_node=ct, segmentation_node=segmentation)
    assert not Path(python + ".ct.json").exists()


def test_a_failed_detection_changes_nothing(scene, xrays, tmp_path):
    before = scene_state(scene)
    with pytest.raises(InputError, match="^detection failed: no vertebra found on the X-ray$"):
        logic.detect_boxes(scene, xrays, python=fake_detector(tmp_path, failing=True), work_dir=tmp_path)
    assert scene_state(scene) == before
    assert [p.name for p in tmp_path.iterdir()] == ["fake_python"]


@pytest.mark.skipif("detect" not in logic.available_commands(), reason="no spinereg detect in this library yet")
def test_detect_help_lists_the_options_the_module_uses():
    run = logic.CliProcess(["detect", "--help"]).start()
    assert run.wait(timeout_s=60) == 0
    text = "\n".join(run.lines)
    for option in ("--xray", "--geometry", "--device", "--out"):
        assert option in text, f"spinereg detect --help does not mention {option}"


# ---------------------------------------------------------------------- registration
def test_registration_gets_the_accepted_boxes(scene, xrays, phantom_dir, tmp_path):
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    segmentation = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    logic.project_boxes(scene, ct, segmentation, xrays)
    logic.set_accepted(logic.box_nodes(scene, xrays["AP"])[0])
    accepted, _ = logic.collect_boxes(scene, xrays, accepted_only=True)
    inputs = logic.RegistrationInputs(ct, segmentation, xrays, boxes=accepted)
    _, args, _, _ = logic.prepare_registration(inputs, tmp_path)
    written = read_xray_boxes(args[args.index("--boxes") + 1])
    assert list(written) == ["AP"] and [(b.vertebra, b.accepted) for b in written["AP"]] == [("L1", True)]
    np.testing.assert_allclose(written["AP"][0].corners_px, accepted["AP"][0].corners_px)
    _, args, _, _ = logic.prepare_registration(logic.RegistrationInputs(ct, segmentation, xrays), tmp_path)
    assert "--boxes" not in args  # no accepted box: no option


def test_register_with_accepted_boxes_through_the_cli(scene, xrays, phantom_dir, tmp_path):
    """The accepted boxes (projected at the true poses) go to spinereg register --boxes, which takes them."""
    ct = logic.load_ct(scene, phantom_dir / "ct.nii.gz")
    segmentation = logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")
    poses = add_truth_poses(scene, phantom_dir)
    logic.project_boxes(scene, ct, segmentation, xrays)
    logic.accept_all(scene)
    logic.reset_results(scene)  # the truth transforms go: Register makes its own
    accepted, _ = logic.collect_boxes(scene, xrays, accepted_only=True)
    inputs = logic.RegistrationInputs(ct, segmentation, xrays, vertebrae=["L2"], method="intensity", boxes=accepted)
    made = logic.RegistrationRun(inputs, work_dir=tmp_path).run(scene, timeout_s=600)
    result = json.loads(made["transforms"]["L2"].GetAttribute(logic.ATTR_RESULT))
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels["L2"])
    points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
    difference = logic.transform_to_parent_of(made["transforms"]["L2"]) - poses["L2"]
    assert np.linalg.norm(points @ difference[:3, :3].T + difference[:3, 3], axis=1).mean() < 2.0, result
    assert list(tmp_path.iterdir()) == []  # the work folder is gone
