"""The module's Deform step on a real vtkMRMLScene (slicer-core), without the Slicer app.

A registration result with known poses (the phantom's true L1 and L3 poses; L2 not
registered, so it follows its neighbours) is put into the scene as Register would; the
Deform step writes it back as a result folder and runs ``spinereg deform`` (and the
per-vertebra ``spinereg drr``) in the background. Checked: the command line and the files
it reads, a real deform folder (made by the library) loaded into the scene (grid
transform, warped segmentation in 3D, summary numbers, DRRs over the X-rays), and that
every failure (a folder missing files, a process exiting 2, cancel) leaves the scene as it
was with a one-line message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from SpineRegistrationLib.cli import main as spinereg_main  # noqa: E402
from SpineRegistrationLib.core.frames import apply_matrix  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.io import centroids_ras, read_labelmap, read_volume  # noqa: E402
from SpineRegistrationLib.io.results import VertebraResult, read_result_folder, write_result_folder  # noqa: E402

REGISTERED = ("L1", "L3")


# ---------------------------------------------------------------------- fixtures
def truth(phantom_dir) -> dict:
    return json.loads((phantom_dir / "truth.json").read_text())["vertebrae"]


def write_result(folder: Path, phantom_dir: Path, names=REGISTERED, shift_mm: float = 0.0) -> Path:
    """A ``spinereg register`` result folder of the true poses of ``names`` (centres shifted by ``shift_mm``)."""
    folder.mkdir(parents=True)
    poses = truth(phantom_dir)
    results = [
        VertebraResult(name, np.array(poses[name]["matrix_ras"]), np.array(list(poses[name]["params"].values())),
                       np.array(poses[name]["center_ras"]) + shift_mm, 0.9, "pass", 1.0, 10)
        for name in names
    ]
    write_result_folder(folder, {}, results, {})
    return folder


@pytest.fixture(scope="module")
def result_dir(phantom_dir, tmp_path_factory):
    return write_result(tmp_path_factory.mktemp("result") / "result", phantom_dir)


@pytest.fixture(scope="module")
def deform_dir(phantom_dir, result_dir, tmp_path_factory):
    """A deform folder written by the library itself (``spinereg deform --result``)."""
    out = tmp_path_factory.mktemp("deform") / "deformed"
    code = spinereg_main(["deform", "--result", str(result_dir), "--ct", str(phantom_dir / "ct.nii.gz"),
                          "--seg", str(phantom_dir / "seg.nii.gz"), "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def registered(scene, phantom_dir, result_dir):
    """The phantom in a scene with the L1/L3 registration result applied (as Register leaves it)."""
    nodes = {
        "ct": logic.load_ct(scene, phantom_dir / "ct.nii.gz", "Phantom CT"),
        "seg": logic.load_segmentation(scene, phantom_dir / "seg.nii.gz", "Phantom vertebrae"),
    }
    for view in logic.VIEWS:
        nodes[view] = logic.load_xray(scene, phantom_dir / f"{view}.png", phantom_dir / f"{view}.json", view)
    xrays = {view: nodes[view] for view in logic.VIEWS}
    labelmap = logic.vertebra_labelmap(nodes["seg"], nodes["ct"])
    nodes["made"] = logic.apply_registration_result(scene, logic.read_registration_result(result_dir), xrays, labelmap)
    for layout in ("Red", "Yellow"):  # the slice views a Slicer layout would have
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetLayoutName(layout)
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(layout)
        scene.AddNode(composite)
    return nodes


def inputs_of(nodes, drrs: bool = True) -> logic.DeformationInputs:
    return logic.DeformationInputs(nodes["ct"], nodes["seg"], {view: nodes[view] for view in logic.VIEWS}, drrs=drrs)


def scene_state(scene) -> list:
    """What a failed step must not change: every node (id, class, name) and the X-rays' DRR references."""
    state = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        state.append((node.GetID(), node.GetClassName(), node.GetName(),
                      node.GetNodeReferenceID(logic.REF_DEFORMED_DRR), node.GetNodeReferenceID(logic.REF_DRR)))
    return state


def assert_one_line(error) -> None:
    text = str(error.value)
    assert text and "\n" not in text and "Traceback" not in text


# ---------------------------------------------------------------------- the command line
def test_deform_inputs_and_command_line_come_from_the_scene(scene, registered, phantom_dir, tmp_path):
    # The user nudged L3 after registering: the pose in the scene is the one deformed.
    l3 = registered["made"]["transforms"]["L3"]
    nudged = logic.transform_to_parent_of(l3)
    nudged[:3, 3] += [1.0, 0.0, -0.5]
    l3.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(nudged))
    paths = logic.write_deformation_inputs(scene, inputs_of(registered), tmp_path / "work")
    args = logic.deform_arguments(paths, tmp_path / "work" / "output")
    assert args == ["deform", "--result", str(paths["result"]), "--ct", str(paths["ct"]), "--seg", str(paths["seg"]),
                    "--out", str(tmp_path / "work" / "output")]
    assert paths["vertebrae"] == ["L1", "L2", "L3"]
    # The files are the scene's CT and segmentation, and its result as the library reads result folders.
    ct = read_volume(paths["ct"])
    np.testing.assert_array_equal(ct.array, slicer.util.arrayFromVolume(registered["ct"]))
    np.testing.assert_allclose(ct.ijk_to_ras, logic.ijk_to_ras_of(registered["ct"]), atol=1e-6)
    seg = read_labelmap(paths["seg"])
    assert list(seg.labels) == ["L1", "L2", "L3"] and seg.scheme.name == "verse"
    folder = read_result_folder(paths["result"])
    assert list(folder.vertebrae) == list(REGISTERED)
    poses = truth(phantom_dir)
    np.testing.assert_allclose(folder.vertebrae["L1"].matrix_ras, poses["L1"]["matrix_ras"], atol=1e-6)
    np.testing.assert_allclose(folder.vertebrae["L3"].matrix_ras, nudged, atol=1e-6)
    np.testing.assert_allclose(folder.vertebrae["L3"].center_ras, poses["L3"]["center_ras"], atol=1e-9)
    assert folder.vertebrae["L1"].similarity == pytest.approx(0.9)  # the register result's entry travels with the node
    for view in logic.VIEWS:
        assert json.loads(paths[view].read_text())["format"] == "spinereg-xray-geometry"
        drr = logic.drr_arguments(paths, view, "L2", tmp_path / "L2.h5", tmp_path / "out.nrrd")
        assert drr == ["drr", "--ct", str(paths["ct"]), "--seg", str(paths["seg"]), "--vertebra", "L2",
                       "--geometry", str(paths[view]), "--transform", str(tmp_path / "L2.h5"),
                       "--out", str(tmp_path / "out.nrrd")]


@pytest.mark.parametrize("case", ["no result", "no CT", "other segmentation"])
def test_deform_bad_inputs_are_one_line(scene, registered, phantom_dir, tmp_path, case):
    inputs = inputs_of(registered)
    expected = {"no result": "Register first", "no CT": "no CT", "other segmentation": "not in the segmentation"}[case]
    if case == "no result":
        logic.reset_results(scene)
    elif case == "no CT":
        inputs.ct_node = None
    else:
        labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
        array = labelmap.volume.array.copy()
        array[array == labelmap.labels["L3"]] = 0
        inputs.segmentation_node = logic.add_segmentation_node(
            scene, type(labelmap)(labelmap.volume.with_array(array), labelmap.scheme), "L1-L2 only")
    before = scene_state(scene)
    run = logic.DeformationRun(scene, inputs, work_dir=tmp_path)
    with pytest.raises(ValueError) as error:
        run.start()
    assert_one_line(error)
    assert expected in str(error.value)
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []  # the work folder is gone
    assert run.process is None


# ---------------------------------------------------------------------- a deform folder into the scene
def test_deform_folder_becomes_a_grid_transform_a_segmentation_and_a_summary(scene, registered, deform_dir, phantom_dir,
                                                                            result_dir):
    document = json.loads((deform_dir / "deform.json").read_text())
    result = logic.read_deformation_result(deform_dir)
    made = logic.apply_deformation_result(scene, result, registered["ct"], registered["seg"],
                                          {view: registered[view] for view in logic.VIEWS})
    transform = made["transform"]
    assert transform.IsA("vtkMRMLGridTransformNode") and not transform.IsLinear()
    assert transform.GetName() == "Phantom CT deformation"
    assert transform.GetAttribute(logic.ATTR_ROLE) == logic.ROLE_DEFORMATION
    assert registered["ct"].GetParentTransformNode() is None  # the CT stays an input: Register can run again
    # TransformFromParent takes a world point of a moved vertebra back to its CT point (the pose's inverse),
    # for the registered vertebrae and for L2, which follows its neighbours.
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    from_parent = transform.GetTransformFromParent()
    poses = truth(phantom_dir)
    for name in ("L1", "L2", "L3"):
        matrix = np.array(document["vertebrae"][name]["matrix_ras"])
        if name in REGISTERED:
            np.testing.assert_allclose(matrix, poses[name]["matrix_ras"], atol=1e-6)
        mask = labelmap.volume.array == labelmap.labels[name]
        interior = mask.copy()  # voxels whose six neighbours are the vertebra's too
        for axis in range(3):
            for step in (1, -1):
                interior &= np.roll(mask, step, axis=axis)
        errors = {}
        for where, voxels in (("interior", interior), ("all", mask)):
            k, j, i = np.nonzero(voxels)
            points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
            if where == "interior":
                points = np.concatenate([points, [centroids_ras(labelmap)[name]]])
            world = apply_matrix(matrix, points)
            back = np.array([from_parent.TransformPoint(*point) for point in world])
            errors[where] = np.linalg.norm(back - points, axis=1)
        assert errors["interior"].max() < 0.05, name
        # At the surface the rigid zone may be thinner than a grid cell (narrow gaps): deform.json says how much.
        residual = document["vertebrae"][name]["rigid_residual"]
        assert np.percentile(errors["all"], 99) == pytest.approx(residual["p99_mm"], abs=0.01), name
        assert residual["p99_mm"] < 0.1, name
    # The warped segmentation: one segment per vertebra, closed surfaces shown in 3D, no parent transform.
    segmentation = made["segmentation"]
    assert segmentation.GetName() == "Phantom vertebrae deformed"
    assert segmentation.GetParentTransformNode() is None
    names = sorted(segmentation.GetSegmentation().GetSegment(segmentation.GetSegmentation().GetNthSegmentID(i)).GetName()
                   for i in range(segmentation.GetSegmentation().GetNumberOfSegments()))
    assert names == ["L1", "L2", "L3"]
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert segmentation.GetSegmentation().ContainsRepresentation(surface)
    display = segmentation.GetDisplayNode()
    assert display.GetVisibility3D() and display.GetPreferredDisplayRepresentationName3D() == surface
    warped = logic.vertebra_labelmap(segmentation, registered["ct"])
    np.testing.assert_array_equal(warped.volume.array, read_labelmap(deform_dir / "warped_seg.nii.gz").volume.array)
    # The summary: folding %, Jacobian range, rigid residual, as deform.json has them.
    summary = made["summary"]
    assert "\n" not in summary and "L2 followed its neighbours" in summary
    jacobian = document["jacobian"]
    assert f"folding {jacobian['folding_percent']:.4f} %" in summary and jacobian["folding_percent"] == 0.0
    assert f"{jacobian['min']:.3f}..{jacobian['max']:.3f}" in summary
    worst = max(document["vertebrae"].values(), key=lambda v: v["rigid_residual"]["p99_mm"] if v["rigid_residual"] else -1)
    assert f"rigid residual p99 {worst['rigid_residual']['p99_mm']:.3f} mm" in summary
    assert worst["rigid_residual"]["p99_mm"] < 0.1
    assert transform.GetDescription() == summary
    # The warped segmentation replaces the rigid surfaces in 3D; hiding the moved segmentation hides it.
    logic.set_results_visibility(scene, moved_segmentation=True)
    assert display.GetVisibility()
    assert not any(model.GetDisplayNode().GetVisibility() for model in registered["made"]["models"].values())
    logic.set_results_visibility(scene, moved_segmentation=False)
    assert not display.GetVisibility()
    # Deforming again replaces the earlier nodes; a new Register result removes them (made from older poses).
    count = scene.GetNumberOfNodes()
    again = logic.apply_deformation_result(scene, logic.read_deformation_result(deform_dir), registered["ct"], registered["seg"])
    assert scene.GetNumberOfNodes() == count and not scene.IsNodePresent(transform)
    assert logic.nodes_with(scene, logic.ROLE_DEFORMATION) == [again["transform"]]
    logic.apply_registration_result(scene, logic.read_registration_result(result_dir),
                                    {view: registered[view] for view in logic.VIEWS})
    assert not any(logic.nodes_with(scene, role) for role in logic.DEFORMATION_ROLES)


def test_drrs_a_deform_folder_holds_are_shown_over_the_xrays(scene, registered, deform_dir, phantom_dir, tmp_path):
    """``spinereg deform --xray`` writes drr_<VIEW>.nrrd itself: loading the folder shows them."""
    from SpineRegistrationLib.io import read_xray, write_xray

    folder = tmp_path / "deformed"
    shutil.copytree(deform_dir, folder)
    image = read_xray(phantom_dir / "LAT.png").array * 0.25
    write_xray(image, folder / "drr_LAT.nrrd")
    document = json.loads((folder / "deform.json").read_text())
    document["refined"] = True
    (folder / "deform.json").write_text(json.dumps(document))
    made = logic.apply_deformation_result(scene, logic.read_deformation_result(folder), registered["ct"],
                                          registered["seg"], {view: registered[view] for view in logic.VIEWS})
    assert list(made["drrs"]) == ["LAT"] and "poses refined against the X-rays" in made["summary"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(made["drrs"]["LAT"])[0], image, rtol=1e-6)
    assert logic.shown_drr_node_of(registered["LAT"]) is made["drrs"]["LAT"]
    assert logic.deformed_drr_node_of(registered["AP"]) is None


@pytest.mark.parametrize("damage", ["no field", "no segmentation", "no deform.json", "other format", "bad field",
                                    "wrong DRR size"])
def test_a_broken_deform_folder_leaves_the_scene_unchanged(scene, registered, deform_dir, tmp_path, damage):
    folder = tmp_path / "deformed"
    shutil.copytree(deform_dir, folder)
    drrs = {}
    if damage == "no field":
        (folder / "displacement.h5").unlink()
    elif damage == "no segmentation":
        (folder / "warped_seg.seg.nrrd").unlink()
    elif damage == "no deform.json":
        (folder / "deform.json").unlink()
    elif damage == "other format":
        document = json.loads((folder / "deform.json").read_text())
        document["format"] = "spinereg-result"
        (folder / "deform.json").write_text(json.dumps(document))
    elif damage == "bad field":
        (folder / "displacement.h5").write_bytes(b"not an HDF5 file")
    else:
        drrs = {"AP": np.zeros((10, 12), np.float32)}
    before = scene_state(scene)
    with pytest.raises(ValueError) as error:
        result = logic.read_deformation_result(folder, drrs)
        logic.apply_deformation_result(scene, result, registered["ct"], registered["seg"],
                                       {view: registered[view] for view in logic.VIEWS})
    assert_one_line(error)
    assert scene_state(scene) == before


# ---------------------------------------------------------------------- the background run
def test_deform_run_in_the_background_shows_the_warped_vertebrae_over_the_xrays(scene, registered, tmp_path):
    events = []
    made = logic.DeformationRun(scene, inputs_of(registered), work_dir=tmp_path).run(
        callback=events.append, timeout_s=600)
    assert list(tmp_path.iterdir()) == []  # the work folder is removed
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) > 4
    messages = [event.message for event in events]
    assert "Deform: building the displacement field" in messages
    assert any(message.startswith("DRR of L2 in LAT") for message in messages)
    assert "folding 0.0000 %" in made["summary"]
    assert made["segmentation"].GetSegmentation().GetNumberOfSegments() == 3
    for view, layout in (("AP", "Red"), ("LAT", "Yellow")):
        xray = registered[view]
        drr = made["drrs"][view]
        assert logic.deformed_drr_node_of(xray) is drr and logic.shown_drr_node_of(xray) is drr
        assert logic.drr_node_of(xray) is None or logic.drr_node_of(xray) is not drr
        assert drr.GetImageData().GetDimensions() == xray.GetImageData().GetDimensions()
        np.testing.assert_allclose(logic.ijk_to_ras_of(drr), logic.ijk_to_ras_of(xray))
        array = slicer.util.arrayFromVolume(drr)[0]
        assert array.max() > 0.5 and np.mean(array > 0) > 0.01  # three vertebrae's worth of bone
        logic.show_xray_in_slice_view(scene, layout, xray, opacity=0.4)
    composites = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
                  if scene.GetNthNode(i).IsA("vtkMRMLSliceCompositeNode")]
    assert {c.GetForegroundVolumeID() for c in composites} == {made["drrs"]["AP"].GetID(), made["drrs"]["LAT"].GetID()}
    logic.set_drr_opacity(scene, 0.7)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.7) for c in composites)
    logic.reset_results(scene)
    assert not any(logic.nodes_with(scene, role) for role in logic.DEFORMATION_ROLES)
    assert logic.deformed_drr_node_of(registered["AP"]) is None


def test_a_deform_process_that_exits_2_leaves_the_scene_unchanged(scene, registered, tmp_path):
    # The result's L1 centre 3 mm from the segmentation's centroid: the library refuses it (another CT).
    l1 = registered["made"]["transforms"]["L1"]
    entry = json.loads(l1.GetAttribute(logic.ATTR_RESULT))
    entry["center_ras"] = (np.array(entry["center_ras"]) + 3.0).tolist()
    l1.SetAttribute(logic.ATTR_RESULT, json.dumps(entry))
    before = scene_state(scene)
    run = logic.DeformationRun(scene, inputs_of(registered), work_dir=tmp_path).start()
    while run.running:
        run.poll()
    assert run.process.returncode == 2
    with pytest.raises(ValueError) as error:
        run.finish()
    assert_one_line(error)
    assert str(error.value).startswith("deformation failed:") and "another CT" in str(error.value)
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []


def test_cancel_ends_the_deform_run_and_changes_nothing(scene, registered, tmp_path):
    before = scene_state(scene)
    run = logic.DeformationRun(scene, inputs_of(registered), work_dir=tmp_path).start()
    run.cancel()
    assert not run.running and run.process.returncode is not None
    with pytest.raises(InputError, match="cancelled"):
        run.finish()
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []


def test_summary_of_a_deformation_without_inferred_vertebrae():
    document = {
        "jacobian": {"min": 0.9, "max": 1.1, "mean": 1.0, "folding_percent": 0.0123, "sdlogj": 0.01},
        "vertebrae": {"L1": {"registered": True, "rigid_residual": {"p99_mm": 0.02, "max_mm": 0.04}},
                      "L2": {"registered": True, "rigid_residual": {"p99_mm": 0.03, "max_mm": 0.05}}},
        "time_s": 2.5,
    }
    assert logic.deformation_summary(document) == (
        "Deformed 2 vertebrae: folding 0.0123 % (Jacobian determinant 0.900..1.100, SDlogJ 0.010); "
        "rigid residual p99 0.030 mm (worst L2), max 0.050 mm; 2.5 s."
    )
