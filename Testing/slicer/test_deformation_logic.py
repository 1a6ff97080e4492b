"""The module's Deform step on a real vtkMRMLScene (slicer-core), without the Slicer app.

A registration result with known poses (the phantom's true L1 and L3 poses; L2 not
registered, so it follows its neighbours) is put into the scene as Register would; the
Deform step writes it back as a result folder, with the scene's X-rays and their geometry,
and runs one ``spinereg deform`` in the background (the poses refined against the X-rays
unless told not to; the folder then holds drr_<VIEW>.nrrd). With a second CT chosen it runs
``spinereg deform --fixed <second CT> --moving <CT> --moving-seg <segmentation>`` instead.
Checked: the command lines and the files they read, the progress lines, real deform folders
(made by the library) loaded into the scene (grid transform, warped segmentation in 3D,
summary numbers, DRRs over the X-rays), and that every failure (a folder missing files, a
process exiting 2, cancel) leaves the scene as it was with a one-line message. The runs
that refine poses or register two CTs take a minute on two cores: marked slow.
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
from SpineRegistrationLib.io import centroids_ras, read_labelmap, read_volume, read_xray, write_volume  # noqa: E402
from SpineRegistrationLib.io.geometry_json import load_geometry  # noqa: E402
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
    write_result_folder(folder, {"method": "learned"}, results, {})  # the network's poses: Deform refines them all
    return folder


@pytest.fixture(scope="module")
def result_dir(phantom_dir, tmp_path_factory):
    return write_result(tmp_path_factory.mktemp("result") / "result", phantom_dir)


@pytest.fixture(scope="module")
def deform_dir(phantom_dir, result_dir, tmp_path_factory):
    """A deform folder written by the library itself (``spinereg deform --result --xray ... --no-refine``:
    the poses as registered, drr_AP.nrrd and drr_LAT.nrrd of every vertebra at its pose)."""
    out = tmp_path_factory.mktemp("deform") / "deformed"
    xrays = [x for view in logic.VIEWS for x in ("--xray", str(phantom_dir / f"{view}.png"),
                                                 "--geometry", str(phantom_dir / f"{view}.json"))]
    code = spinereg_main(["deform", "--result", str(result_dir), "--ct", str(phantom_dir / "ct.nii.gz"),
                          "--seg", str(phantom_dir / "seg.nii.gz"), *xrays, "--no-refine", "--out", str(out)])
    assert code == 0
    return out


def shifted_ct(phantom_dir, folder: Path, shift_mm=(3.0, -2.0, 4.0)) -> Path:
    """The phantom CT moved by ``shift_mm`` in world (same voxels, origin moved): a second CT."""
    ct = read_volume(phantom_dir / "ct.nii.gz")
    matrix = np.eye(4)
    matrix[:3, 3] = shift_mm
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(type(ct)(ct.array, matrix @ ct.ijk_to_ras), folder / "or_ct.nii.gz")
    return folder / "or_ct.nii.gz"


@pytest.fixture(scope="module")
def second_ct_path(phantom_dir, tmp_path_factory):
    return shifted_ct(phantom_dir, tmp_path_factory.mktemp("second"))


@pytest.fixture(scope="module")
def pair_dir(phantom_dir, second_ct_path, tmp_path_factory):
    """A CT-to-CT deform folder as ``spinereg deform --fixed/--moving`` writes it (the library's
    writer and warp, deform.json as _run_pair makes it), of a known field: the fixed CT is the
    CT moved by (3, -2, 4) mm, so the field takes each fixed point 3, -2, 4 mm back."""
    from SpineRegistrationLib.deform.affine import matrix_field
    from SpineRegistrationLib.deform.ct_pair import warp_labelmap
    from SpineRegistrationLib.core.displacement import jacobian_stats
    from SpineRegistrationLib.core.grid import Grid
    from SpineRegistrationLib.io.deform_folder import write_deform_folder

    fixed = read_volume(second_ct_path)
    seg = read_labelmap(phantom_dir / "seg.nii.gz")
    back = np.eye(4)
    back[:3, 3] = [-3.0, 2.0, -4.0]
    field = matrix_field(back, Grid.covering(*fixed.bounds_ras(), 4.0))
    warped = warp_labelmap(seg, field, fixed)
    document = {"mode": "ct-pair", "inputs": {}, "jacobian": jacobian_stats(field), "vertebrae": {},
                "registration": {"affine": {"transform": "rigid"}, "model": "deform_phantoms.pt"}, "time_s": 12.5}
    out = tmp_path_factory.mktemp("pair") / "deformed"
    out.mkdir()
    write_deform_folder(out, field, warped, document)
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


def fake_spinereg(folder: Path, lines: list[str], status: int = 2) -> str:
    """An executable that stands in for the Python running ``spinereg``: it records its
    arguments, prints ``lines`` to stderr and exits with ``status``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "fake-python"
    printed = "".join(f"echo '{line}' >&2\n" for line in lines)
    script.write_text(f"#!/bin/sh\necho \"$@\" > '{folder / 'args.txt'}'\n{printed}exit {status}\n")
    script.chmod(0o755)
    return str(script)


def inputs_of(nodes, refine: bool = True, second_ct=None, **options) -> logic.DeformationInputs:
    return logic.DeformationInputs(nodes["ct"], nodes["seg"], {view: nodes[view] for view in logic.VIEWS},
                                   refine=refine, second_ct_node=second_ct, **options)


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
    out = tmp_path / "work" / "output"
    xrays = ["--xray", str(paths["AP"]), "--geometry", str(paths["AP_geometry"]),
             "--xray", str(paths["LAT"]), "--geometry", str(paths["LAT_geometry"])]
    base = ["deform", "--result", str(paths["result"]), "--ct", str(paths["ct"]), "--seg", str(paths["seg"])]
    auto = ["--device", "auto", "--out", str(out)]  # "auto" travels: the CLI's own default is the CPU
    assert logic.deform_arguments(paths, out) == base + xrays + auto
    assert logic.deform_arguments(paths, out, refine=False) == base + xrays + ["--no-refine"] + auto
    assert logic.deform_arguments(paths, out, device="cuda")[-4:] == ["--device", "cuda", "--out", str(out)]
    assert paths["vertebrae"] == ["L1", "L2", "L3"] and paths["views"] == ["AP", "LAT"]
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
    # The X-rays as Register writes them: the scene's pixel values, the geometry attached to each node;
    # the sidecar's stem is the view (deform names its DRRs drr_<stem>.nrrd).
    for view in logic.VIEWS:
        assert paths[view].name == f"{view}.nrrd" and paths[f"{view}_geometry"].name == f"{view}.json"
        np.testing.assert_allclose(read_xray(paths[view]).array, slicer.util.arrayFromVolume(registered[view])[0],
                                   rtol=1e-6)
        geometry, attached = load_geometry(paths[f"{view}_geometry"]), logic.geometry_of(registered[view])
        np.testing.assert_allclose(geometry.source, attached.source)
        np.testing.assert_allclose(geometry.detector_origin, attached.detector_origin)
        assert tuple(geometry.size) == tuple(attached.size)


def test_a_ct_under_a_transform_deforms_from_its_registered_poses(scene, registered, second_ct_path, tmp_path):
    # Registered from a manual alignment: the poses (CT RAS -> world) already hold the CT's
    # parent transform, so the files are the CT as scanned and the scene's poses as they are.
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -3.0, 2.0]
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    for node in (registered["ct"], registered["seg"]):
        node.SetAndObserveTransformNodeID(parent.GetID())
    paths = logic.write_deformation_inputs(scene, inputs_of(registered), tmp_path / "work")
    np.testing.assert_allclose(read_volume(paths["ct"]).ijk_to_ras, logic.ijk_to_ras_of(registered["ct"]), atol=1e-6)
    l3 = registered["made"]["transforms"]["L3"]
    np.testing.assert_allclose(read_result_folder(paths["result"]).vertebrae["L3"].matrix_ras,
                               logic.transform_to_parent_of(l3), atol=1e-9)
    # CT to CT registers the files as scanned and would ignore the parent: refused in one line.
    second = logic.load_ct(scene, second_ct_path, "OR CT")
    with pytest.raises(ValueError, match="CT") as error:
        logic.write_deformation_inputs(scene, inputs_of(registered, second_ct=second), tmp_path / "pair")
    assert_one_line(error)
    assert not (tmp_path / "pair").exists()


def test_deform_command_line_with_a_second_ct(scene, registered, second_ct_path, tmp_path):
    second = logic.load_ct(scene, second_ct_path, "OR CT")
    inputs = inputs_of(registered, second_ct=second, refine=False)
    assert inputs.mode == logic.MODE_PAIR
    paths = logic.write_deformation_inputs(scene, inputs, tmp_path / "work")
    out = tmp_path / "work" / "output"
    assert logic.deform_arguments(paths, out) == [
        "deform", "--fixed", str(paths["fixed"]), "--moving", str(paths["ct"]), "--moving-seg", str(paths["seg"]),
        "--articulated", "--device", "auto", "--out", str(out)]
    assert logic.deform_arguments(paths, out, model="m.pt", device="cpu")[-6:] == [
        "--model", "m.pt", "--device", "cpu", "--out", str(out)]
    # The second CT is the fixed one, the CT (and its segmentation) the moving one; no result, no X-ray.
    fixed = read_volume(paths["fixed"])
    np.testing.assert_array_equal(fixed.array, slicer.util.arrayFromVolume(second))
    np.testing.assert_allclose(fixed.ijk_to_ras, logic.ijk_to_ras_of(second), atol=1e-6)
    np.testing.assert_array_equal(read_volume(paths["ct"]).array, slicer.util.arrayFromVolume(registered["ct"]))
    assert list(read_labelmap(paths["seg"]).labels) == ["L1", "L2", "L3"]
    assert "result" not in paths and paths["views"] == []
    assert sorted(p.name for p in (tmp_path / "work" / "input").iterdir()) == ["ct.nii.gz", "fixed.nii.gz", "seg.nii.gz"]
    # CT to CT needs no registration result.
    logic.reset_results(scene)
    logic.write_deformation_inputs(scene, inputs, tmp_path / "again")


@pytest.mark.parametrize("case", ["no result", "no CT", "other segmentation", "X-ray without geometry",
                                  "second CT is the CT", "second CT under a transform", "every pose doubted"])
def test_deform_bad_inputs_are_one_line(scene, registered, phantom_dir, second_ct_path, tmp_path, case):
    inputs = inputs_of(registered)
    expected = {"no result": "Register first", "no CT": "no CT", "other segmentation": "not in the segmentation",
                "X-ray without geometry": "has no geometry", "second CT is the CT": "the CT itself",
                "second CT under a transform": "second CT", "every pose doubted": "set a pose you trust by hand"}[case]
    if case == "no result":
        logic.reset_results(scene)
    elif case == "no CT":
        inputs.ct_node = None
    elif case == "other segmentation":
        labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
        array = labelmap.volume.array.copy()
        array[array == labelmap.labels["L3"]] = 0
        inputs.segmentation_node = logic.add_segmentation_node(
            scene, type(labelmap)(labelmap.volume.with_array(array), labelmap.scheme), "L1-L2 only")
    elif case == "X-ray without geometry":
        bare = slicer.vtkMRMLScalarVolumeNode()
        logic.fill_volume_node(bare, slicer.util.arrayFromVolume(registered["LAT"]).copy(), np.eye(4))
        scene.AddNode(bare)
        inputs.xrays["LAT"] = bare
    elif case == "second CT is the CT":
        inputs.second_ct_node = registered["ct"]
    elif case == "every pose doubted":  # as Register leaves them; the CLI's line would name --keep-doubted
        for node in registered["made"]["transforms"].values():
            entry = json.loads(node.GetAttribute(logic.ATTR_RESULT))
            node.SetAttribute(logic.ATTR_RESULT, json.dumps({**entry, "verdict": "doubt"}))
    else:
        inputs.second_ct_node = logic.load_ct(scene, second_ct_path, "OR CT")
        parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        inputs.second_ct_node.SetAndObserveTransformNodeID(parent.GetID())
    before = scene_state(scene)
    run = logic.DeformationRun(scene, inputs, work_dir=tmp_path)
    with pytest.raises(ValueError) as error:
        run.start()
    assert_one_line(error)
    assert expected in str(error.value)
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []  # the work folder is gone
    assert run.process is None


# ---------------------------------------------------------------------- progress
def test_refine_lines_move_the_progress_bar():
    def line(text):
        return logic.deform_progress(logic.parse_progress_line(text))

    refine = [line(f"deform: refine {percent}%") for percent in range(0, 101, 10)]
    assert [event.fraction for event in refine] == pytest.approx([logic.REFINE_SPAN * p / 100 for p in range(0, 101, 10)])
    assert refine[4].message == "Deform: refining the poses against the X-rays (40 %)"
    stages = [line(f"deform: {stage}") for stage in ("field", "jacobian", "warping")]
    fractions = [event.fraction for event in refine + stages]
    assert fractions == sorted(fractions) and fractions[-1] < 1.0
    assert stages[0].message == "Deform: building the displacement field"
    # Without refinement the field, Jacobian and warping are the whole run.
    alone = [logic.deform_progress(logic.parse_progress_line(f"deform: {stage}"), refining=False).fraction
             for stage in ("field", "jacobian", "warping")]
    assert alone == sorted(alone) and alone[0] < 0.1 < alone[-1] < 1.0
    assert line("deform: registering the CTs").message.startswith("Deform: registering the CTs")
    # Other lines (an inner tqdm bar, the summary) keep their text and do not move the bar.
    for text, message in (("L1:  45%|####      | 9/20 [00:01<00:02]", "L1"),
                          ("3 vertebrae (1 followed their neighbours: L2)", "3 vertebrae (1 followed their neighbours: L2)")):
        event = line(text)
        assert event.fraction is None and event.message == message and event.line == text


def test_refine_progress_of_a_run_and_its_failure_leave_the_scene_unchanged(scene, registered, tmp_path):
    lines = [f"deform: refine {percent}%" for percent in (0, 10, 20, 30)]
    lines.append("spinereg: error: the AP X-ray shows nothing where the vertebrae project")
    python = fake_spinereg(tmp_path / "bin", lines)
    before = scene_state(scene)
    (tmp_path / "work").mkdir()
    run = logic.DeformationRun(scene, inputs_of(registered), python=python, work_dir=tmp_path / "work").start()
    events = []
    run.wait(timeout_s=60, callback=events.append)
    args = (tmp_path / "bin" / "args.txt").read_text().split()
    assert args[:3] == ["-m", "SpineRegistrationLib", "deform"] and args.count("--xray") == 2
    assert "--no-refine" not in args
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions == pytest.approx([0.0, 0.08, 0.16, 0.24]) and 1.0 not in fractions
    assert events[-1].message.startswith("spinereg: error:")
    with pytest.raises(ValueError) as error:
        run.finish()
    assert_one_line(error)
    assert str(error.value) == "deformation failed: the AP X-ray shows nothing where the vertebrae project"
    assert scene_state(scene) == before
    assert list((tmp_path / "work").iterdir()) == []


def test_the_refine_checkbox_off_passes_no_refine(scene, registered, tmp_path):
    python = fake_spinereg(tmp_path / "bin", ["spinereg: error: stop here"])
    run = logic.DeformationRun(scene, inputs_of(registered, refine=False), python=python, work_dir=tmp_path).start()
    run.wait(timeout_s=60)
    assert "--no-refine" in (tmp_path / "bin" / "args.txt").read_text().split() and not run.refining
    with pytest.raises(ValueError, match="stop here"):
        run.finish()


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
        # At the surface the rigid zone may be thinner than a grid cell (narrow gaps): deform.json says how
        # much, for the linear interpolation ITK resamples with; Slicer interpolates the grid cubically,
        # reading a node beyond each cell, which adds a little there.
        residual = document["vertebrae"][name]["rigid_residual"]
        assert np.percentile(errors["all"], 99) == pytest.approx(residual["p99_mm"], abs=0.02), name
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
    # The summary: folding %, Jacobian range, rigid residual, as deform.json has them; the poses were not refined.
    summary = made["summary"]
    assert "\n" not in summary and "L2 followed its neighbours" in summary
    jacobian = document["jacobian"]
    assert f"folding {jacobian['folding_percent']:.4f} %" in summary and jacobian["folding_percent"] == 0.0
    assert f"{jacobian['min']:.3f}..{jacobian['max']:.3f}" in summary
    worst = max(document["vertebrae"].values(), key=lambda v: v["rigid_residual"]["p99_mm"] if v["rigid_residual"] else -1)
    assert f"rigid residual p99 {worst['rigid_residual']['p99_mm']:.3f} mm" in summary
    assert worst["rigid_residual"]["p99_mm"] < 0.1
    assert document["refined"] is False and "poses as registered (not refined against the X-rays)" in summary
    assert transform.GetDescription() == summary
    # The warped segmentation replaces the rigid surfaces in 3D; hiding the moved segmentation hides it.
    logic.set_results_visibility(scene, moved_segmentation=True)
    assert display.GetVisibility()
    assert not any(model.GetDisplayNode().GetVisibility() for model in registered["made"]["models"].values())
    logic.set_results_visibility(scene, moved_segmentation=False)
    assert not display.GetVisibility()
    # Deforming again replaces the earlier nodes; a new Register result removes them (made from older poses).
    count = scene.GetNumberOfNodes()
    again = logic.apply_deformation_result(scene, logic.read_deformation_result(deform_dir), registered["ct"],
                                           registered["seg"], {view: registered[view] for view in logic.VIEWS})
    assert scene.GetNumberOfNodes() == count and not scene.IsNodePresent(transform)
    assert logic.nodes_with(scene, logic.ROLE_DEFORMATION) == [again["transform"]]
    logic.apply_registration_result(scene, logic.read_registration_result(result_dir),
                                    {view: registered[view] for view in logic.VIEWS})
    assert not any(logic.nodes_with(scene, role) for role in logic.DEFORMATION_ROLES)


def test_the_drrs_of_a_deform_folder_are_shown_over_the_xrays(scene, registered, deform_dir):
    """``spinereg deform --xray`` writes drr_<VIEW>.nrrd (every vertebra at its final pose): they are the deformed DRRs."""
    result = logic.read_deformation_result(deform_dir)
    assert sorted(result.drrs) == ["AP", "LAT"]
    made = logic.apply_deformation_result(scene, result, registered["ct"], registered["seg"],
                                          {view: registered[view] for view in logic.VIEWS})
    for view, layout in (("AP", "Red"), ("LAT", "Yellow")):
        xray, drr = registered[view], made["drrs"][view]
        assert drr.GetName() == f"{view} deformed DRR"
        np.testing.assert_allclose(slicer.util.arrayFromVolume(drr)[0], read_xray(deform_dir / f"drr_{view}.nrrd").array,
                                   rtol=1e-6)
        assert logic.deformed_drr_node_of(xray) is drr and logic.shown_drr_node_of(xray) is drr
        assert logic.drr_node_of(xray) is not drr
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


def test_a_ct_to_ct_folder_becomes_a_grid_transform_and_the_warped_segmentation(scene, registered, pair_dir,
                                                                               second_ct_path, phantom_dir):
    second = logic.load_ct(scene, second_ct_path, "OR CT")
    result = logic.read_deformation_result(pair_dir)
    assert result.drrs == {} and result.document["mode"] == "ct-pair"
    made = logic.apply_deformation_result(scene, result, registered["ct"], registered["seg"],
                                          {view: registered[view] for view in logic.VIEWS})
    transform = made["transform"]
    assert transform.IsA("vtkMRMLGridTransformNode") and transform.GetName() == "Phantom CT deformation"
    # A point of the second CT's frame goes back to the CT point it shows: 3, -2, 4 mm back.
    from_parent = transform.GetTransformFromParent()
    bounds = np.array(read_volume(second_ct_path).bounds_ras())
    for point in (bounds.mean(0), bounds[0] * 0.7 + bounds[1] * 0.3):
        np.testing.assert_allclose(from_parent.TransformPoint(*point), point - [3.0, -2.0, 4.0], atol=1e-3)
    # The warped segmentation lies on the second CT's grid: the CT's labels, where the second CT shows them.
    warped = logic.vertebra_labelmap(made["segmentation"], second)
    np.testing.assert_allclose(warped.volume.ijk_to_ras, logic.ijk_to_ras_of(second), atol=1e-6)
    np.testing.assert_array_equal(warped.volume.array, read_labelmap(phantom_dir / "seg.nii.gz").volume.array)
    assert made["drrs"] == {} and logic.deformed_drr_node_of(registered["AP"]) is None
    assert made["summary"] == ("Deformed the CT onto the second CT (rigid stage, then the deformable network): "
                               "folding 0.0000 % (Jacobian determinant 1.000..1.000, SDlogJ 0.000); 12.5 s.")


@pytest.mark.parametrize("damage", ["no field", "no segmentation", "no deform.json", "other format", "bad field",
                                    "wrong DRR size", "pair without vertebra table"])
def test_a_broken_deform_folder_leaves_the_scene_unchanged(scene, registered, deform_dir, pair_dir, tmp_path, damage):
    from SpineRegistrationLib.io import write_xray

    folder = tmp_path / "deformed"
    shutil.copytree(pair_dir if damage.startswith("pair") else deform_dir, folder)
    if damage == "no field":
        (folder / "displacement.h5").unlink()
    elif damage == "no segmentation":
        (folder / "warped_seg.seg.nrrd").unlink()
    elif damage == "no deform.json":
        (folder / "deform.json").unlink()
    elif damage in ("other format", "pair without vertebra table"):
        document = json.loads((folder / "deform.json").read_text())
        if damage == "other format":
            document["format"] = "spinereg-result"
        else:
            del document["vertebrae"]
        (folder / "deform.json").write_text(json.dumps(document))
    elif damage == "bad field":
        (folder / "displacement.h5").write_bytes(b"not an HDF5 file")
    else:
        write_xray(np.zeros((10, 12), np.float32), folder / "drr_AP.nrrd")
    before = scene_state(scene)
    with pytest.raises(ValueError) as error:
        result = logic.read_deformation_result(folder)
        logic.apply_deformation_result(scene, result, registered["ct"], registered["seg"],
                                       {view: registered[view] for view in logic.VIEWS})
    assert_one_line(error)
    assert scene_state(scene) == before


# ---------------------------------------------------------------------- the background run
def test_deform_run_in_the_background_shows_the_warped_vertebrae_over_the_xrays(scene, registered, tmp_path):
    events = []
    made = logic.DeformationRun(scene, inputs_of(registered, refine=False), work_dir=tmp_path).run(
        callback=events.append, timeout_s=600)
    assert list(tmp_path.iterdir()) == []  # the work folder is removed
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(set(fractions)) == 4
    messages = [event.message for event in events]
    assert "Deform: building the displacement field" in messages and messages[-1] == "Deform: done"
    assert "folding 0.0000 %" in made["summary"] and "not refined" in made["summary"]
    assert made["segmentation"].GetSegmentation().GetNumberOfSegments() == 3
    for view in logic.VIEWS:
        xray, drr = registered[view], made["drrs"][view]
        assert logic.shown_drr_node_of(xray) is drr
        assert drr.GetImageData().GetDimensions() == xray.GetImageData().GetDimensions()
        assert slicer.util.arrayFromVolume(drr)[0].max() > 0.5


@pytest.mark.slow
def test_deform_run_refines_the_poses_against_the_xrays(scene, registered, tmp_path):
    """The joint refinement end to end (about a minute on two cores): refine progress, the summary says by how much."""
    events = []
    made = logic.DeformationRun(scene, inputs_of(registered), work_dir=tmp_path).run(callback=events.append,
                                                                                     timeout_s=900)
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    refine = [event for event in events if event.message.startswith("Deform: refining the poses")]
    assert len(refine) == 11 and refine[-1].fraction == pytest.approx(logic.REFINE_SPAN)
    document = made["document"]
    assert document["refined"] is True
    entries = {name: v["refinement"] for name, v in document["vertebrae"].items() if "refinement" in v}
    assert sorted(entries) == list(REGISTERED)
    worst = max(entry["rotation_deg"] for entry in entries.values())
    assert f"poses refined against the X-rays by up to {worst:.2f}°" in made["summary"]
    assert worst < 8.0 and max(entry["centre_shift_mm"] for entry in entries.values()) < 5.0  # the trust region
    assert sorted(made["drrs"]) == ["AP", "LAT"]


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
    assert all(event.fraction != 1.0 for event in run.poll())
    with pytest.raises(ValueError) as error:
        run.finish()
    assert_one_line(error)
    assert str(error.value).startswith("deformation failed:") and "another CT" in str(error.value)
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []


def test_a_second_ct_that_does_not_overlap_the_ct_fails_in_one_line(scene, registered, phantom_dir, tmp_path):
    far = logic.load_ct(scene, shifted_ct(phantom_dir, tmp_path / "far", (0.0, 0.0, 3000.0)), "Far CT")
    before = scene_state(scene)
    (tmp_path / "work").mkdir()
    run = logic.DeformationRun(scene, inputs_of(registered, second_ct=far), work_dir=tmp_path / "work").start()
    run.wait(timeout_s=300)
    with pytest.raises(ValueError) as error:
        run.finish()
    assert_one_line(error)
    assert str(error.value).startswith("deformation failed:") and "do not overlap" in str(error.value)
    assert scene_state(scene) == before
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.slow
def test_ct_to_ct_run_end_to_end(scene, registered, second_ct_path, phantom_dir, tmp_path):
    """``spinereg deform --fixed/--moving`` in the background (about a minute on two cores), with a small
    untrained network so the test does not depend on the shipped model: the rigid stage finds the 3, -2, 4 mm."""
    import torch

    from SpineRegistrationLib.core.metrics import dice_per_label
    from SpineRegistrationLib.deform.network import DeformModelConfig, build_network, save_model

    torch.manual_seed(0)
    config = DeformModelConfig(spacing_mm=4.0, channels=(4, 4, 4, 4), final_channels=(4,), integration_steps=4)
    model = save_model(build_network(config), config, tmp_path / "tiny.pt")
    second = logic.load_ct(scene, second_ct_path, "OR CT")
    logic.reset_results(scene)  # CT to CT needs no registration result
    events = []
    (tmp_path / "work").mkdir()
    made = logic.DeformationRun(scene, inputs_of(registered, second_ct=second, model=str(model)),
                                work_dir=tmp_path / "work").run(callback=events.append, timeout_s=900)
    fractions = [event.fraction for event in events if event.fraction is not None]
    assert fractions == sorted(fractions) and fractions[0] == pytest.approx(0.05) and fractions[-1] == 1.0
    assert made["document"]["mode"] == "ct-pair"
    assert made["summary"].startswith("Deformed the CT onto the second CT (rigid stage, then the deformable network)")
    # The rigid stage found the shift: the second CT's centre shows the CT point 3, -2, 4 mm back.
    matrix = np.array(made["document"]["registration"]["matrix_moving_from_fixed"])
    centre = np.array(read_volume(second_ct_path).bounds_ras()).mean(0)
    np.testing.assert_allclose(matrix[:3, :3] @ centre + matrix[:3, 3], centre - [3.0, -2.0, 4.0], atol=1.0)
    warped = logic.vertebra_labelmap(made["segmentation"], second)
    truth_labels = read_labelmap(phantom_dir / "seg.nii.gz")  # the second CT shows the CT's voxels, moved
    for name in ("L1", "L2", "L3"):
        dice = dice_per_label((truth_labels.volume.array == truth_labels.labels[name]).astype(np.uint8),
                              (warped.volume.array == warped.labels[name]).astype(np.uint8), [1])[1]
        assert dice > 0.8, (name, dice)
    assert made["document"]["jacobian"]["folding_percent"] < 0.05
    assert list((tmp_path / "work").iterdir()) == []


def test_cancel_ends_the_deform_run_and_changes_nothing(scene, registered, tmp_path):
    before = scene_state(scene)
    run = logic.DeformationRun(scene, inputs_of(registered), work_dir=tmp_path).start()
    run.cancel()
    assert not run.running and run.process.returncode is not None
    with pytest.raises(InputError, match="cancelled"):
        run.finish()
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- summaries
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


def test_summary_of_a_ct_to_ct_deformation_vertebra_by_vertebra():
    document = {
        "mode": logic.MODE_PAIR, "time_s": 6.0,
        "jacobian": {"min": 0.8, "max": 1.2, "mean": 1.0, "folding_percent": 0.0, "sdlogj": 0.05},
        "vertebrae": {"L1": {"dice": 0.95, "hd95_mm": 1.0}, "L2": {"dice": 0.93, "hd95_mm": 1.2}},
        "registration": {"affine": {"transform": "rigid"}, "model": None,
                         "articulated": {"vertebrae": {"L1": {}, "L2": {}}, "followed_neighbours": []}},
    }
    assert logic.deformation_summary(document).startswith(
        "Deformed the CT onto the second CT (rigid stage, then 2 vertebrae each rigid on its own, blended): "
        "folding 0.0000 %")
    document["registration"]["articulated"]["freeform"] = {"steps": 20, "band_nodes": 900}
    assert logic.deformation_summary(document).startswith(
        "Deformed the CT onto the second CT (rigid stage, then 2 vertebrae each rigid on its own, blended, refined "
        "near the bone): folding 0.0000 %")


def test_summary_says_how_far_the_refinement_moved_the_poses():
    def refinement(before, after, rotation, shift, kept=False):
        return {"similarity_before": before, "similarity_after": after, "rotation_deg": rotation,
                "centre_shift_mm": shift, "kept_start": kept}

    document = {
        "mode": "poses", "refined": True,
        "jacobian": {"min": 0.9, "max": 1.1, "folding_percent": 0.0, "sdlogj": 0.01},
        "vertebrae": {"L1": {"registered": True, "rigid_residual": {"p99_mm": 0.02, "max_mm": 0.04},
                             "refinement": refinement(0.60, 0.70, 2.5, 0.8)},
                      "L2": {"registered": False, "rigid_residual": {"p99_mm": 0.03, "max_mm": 0.05}},
                      "L3": {"registered": True, "rigid_residual": {"p99_mm": 0.01, "max_mm": 0.02},
                             "refinement": refinement(0.70, 0.70, 0.0, 1.2, kept=True)}},
        "time_s": 60.0,
    }
    assert logic.deformation_summary(document) == (
        "Deformed 3 vertebrae (L2 followed its neighbours): folding 0.0000 % (Jacobian determinant 0.900..1.100, "
        "SDlogJ 0.010); rigid residual p99 0.030 mm (worst L2), max 0.050 mm; poses refined against the X-rays by "
        "up to 2.50° (L1) and 1.20 mm (L3), similarity 0.650 -> 0.700, L3 kept its starting pose; 60.0 s."
    )
    document["vertebrae"]["L1"]["doubted"] = True
    assert ("similarity 0.650 -> 0.700, L1 (registration said doubt) started from its neighbours, L3 kept its "
            "starting pose; 60.0 s.") in logic.deformation_summary(document)
    document["refined"] = False
    assert "; poses as registered (not refined against the X-rays); 60.0 s." in logic.deformation_summary(document)
    assert logic.deformation_summary(document).startswith("Deformed 3 vertebrae (L1, L2 followed their neighbours)")


def test_summary_of_a_ct_to_ct_deformation_with_dice():
    document = {
        "mode": "ct-pair",
        "jacobian": {"min": 0.95, "max": 1.05, "folding_percent": 0.001, "sdlogj": 0.02},
        "vertebrae": {"L1": {"dice": 0.91, "hd95_mm": 1.0}, "L2": {"dice": 0.85, "hd95_mm": 2.0}},
        "registration": {"affine": {"transform": "affine_noscale"}, "model": None},
        "time_s": 30.0,
    }
    assert logic.deformation_summary(document) == (
        "Deformed the CT onto the second CT (affine_noscale stage only): folding 0.0010 % (Jacobian determinant "
        "0.950..1.050, SDlogJ 0.020); Dice per vertebra mean 0.880 (min 0.850, L2); 30.0 s."
    )


def test_the_scene_result_keeps_its_method_and_a_pose_the_user_set_passes(scene, registered, phantom_dir):
    """Deform learns how the poses were made: the method that registered them (a learned result is
    refined, an intensity one held), and a pose the user moved after Register is the user's: it passes
    (not followed over by its neighbours), and the method is no longer known."""
    labelmap = logic.vertebra_labelmap(registered["seg"], registered["ct"])
    vertebrae, method = logic.scene_result_vertebrae(scene, labelmap)
    assert method == "learned" and {v.verdict for v in vertebrae} == {"pass"}
    node = registered["made"]["transforms"]["L3"]
    node.SetAttribute(logic.ATTR_RESULT, json.dumps(json.loads(node.GetAttribute(logic.ATTR_RESULT)) | {"verdict": "doubt"}))
    vertebrae, method = logic.scene_result_vertebrae(scene, labelmap)
    assert method == "learned" and {v.name: v.verdict for v in vertebrae}["L3"] == "doubt"
    moved = logic.transform_to_parent_of(node)
    moved[:3, 3] += [2.0, 0.0, 0.0]
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(moved))
    vertebrae, method = logic.scene_result_vertebrae(scene, labelmap)
    assert method is None and {v.name: v.verdict for v in vertebrae}["L3"] == "pass"
    np.testing.assert_allclose({v.name: v.matrix_ras for v in vertebrae}["L3"], moved)
