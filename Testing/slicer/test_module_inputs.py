"""The module's inputs as the CLI gets them, on a real vtkMRMLScene (slicer-core).

A CT under a rigid transform starts from that pose (``--init``, world <- CT RAS) and its
result lands in the scene once (the registered transforms at the root, not under the CT's
transform); non-linear or non-rigid parents are refused in one line. ``--device`` is always
passed; DICOM X-rays are centred by the CLI's rule; the vertebra list comes from the
parameter node's segmentation; the CLI runs in PythonSlicer with the module's library.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import vtk

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.io import centroids_ras, read_labelmap, read_matrix_json, read_volume  # noqa: E402
from slicer.util import vtkMatrixFromArray  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

#: A rough manual alignment: 4 degrees about S and a few millimetres (world <- CT RAS).
_C, _S = np.cos(np.radians(4.0)), np.sin(np.radians(4.0))
ROUGH = np.array([[_C, -_S, 0, 3.0], [_S, _C, 0, -2.0], [0, 0, 1, 4.0], [0, 0, 0, 1]])
#: A second transform above ROUGH: the CT's pose is their product.
LIFT = np.array([[1, 0, 0, 0], [0, 1, 0, 1.5], [0, 0, 1, -1.0], [0, 0, 0, 1.0]])


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def loaded(scene, phantom_dir):
    nodes = {"ct": logic.load_ct(scene, phantom_dir / "ct.nii.gz"), "seg": logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")}
    for view in logic.VIEWS:
        nodes[view] = logic.load_xray(scene, phantom_dir / f"{view}.png", phantom_dir / f"{view}.json", view)
    return nodes


def _linear(scene, matrix, parent=None):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(vtkMatrixFromArray(np.asarray(matrix, float)))
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def _place(transform, *nodes):
    for node in nodes:
        node.SetAndObserveTransformNodeID(transform.GetID())


def _inputs(loaded, **changes):
    return logic.RegistrationInputs(loaded["ct"], loaded["seg"], {"AP": loaded["AP"], "LAT": loaded["LAT"]}, **changes)


def _value(args, option):
    return args[args.index(option) + 1]


# ---------------------------------------------------------------------- the CT's pose
def test_a_ct_under_nested_rigid_transforms_starts_from_their_pose(scene, loaded, phantom_dir, tmp_path):
    _place(_linear(scene, ROUGH, parent=_linear(scene, LIFT)), loaded["ct"], loaded["seg"])
    checked, args, work, out_dir = logic.prepare_registration(_inputs(loaded), tmp_path)
    np.testing.assert_allclose(checked.init, LIFT @ ROUGH, atol=1e-9)
    init_file = Path(_value(args, "--init"))
    assert init_file.parent == work / "input"
    np.testing.assert_allclose(read_matrix_json(init_file), LIFT @ ROUGH, atol=1e-9)
    assert json.loads(init_file.read_text()).keys() == {"matrix_ras"}
    # The CT and the segmentation go out in CT RAS, as in the files (the pose is only in --init).
    np.testing.assert_allclose(read_volume(_value(args, "--ct")).ijk_to_ras, read_volume(phantom_dir / "ct.nii.gz").ijk_to_ras,
                               atol=1e-6)
    assert list(read_labelmap(_value(args, "--seg")).labels) == ["L1", "L2", "L3"]


def test_an_untransformed_ct_gets_no_init_and_every_run_names_its_device(loaded, tmp_path):
    checked, args, _, _ = logic.prepare_registration(_inputs(loaded), tmp_path)
    np.testing.assert_array_equal(checked.init, np.eye(4))
    assert "--init" not in args
    assert _value(args, "--device") == "auto"  # the CLI's own default is the CPU
    _, args, _, _ = logic.prepare_registration(_inputs(loaded, device="cpu"), tmp_path)
    assert _value(args, "--device") == "cpu"


def _grid(scene):
    return scene.AddNewNodeByClass("vtkMRMLGridTransformNode")


BAD_PARENTS = {
    "non-linear": (lambda scene: _grid(scene), "non-linear transform"),
    "non-linear above a linear one": (lambda scene: _linear(scene, ROUGH, parent=_grid(scene)), "non-linear transform"),
    "scaling": (lambda scene: _linear(scene, np.diag([1.1, 1.0, 1.0, 1.0])), "not a rigid transform"),
}


@pytest.mark.parametrize("case", list(BAD_PARENTS))
def test_a_ct_under_a_non_rigid_transform_is_refused_in_one_line(scene, loaded, tmp_path, case):
    make, message = BAD_PARENTS[case]
    _place(make(scene), loaded["ct"], loaded["seg"])
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match=message) as error:
        logic.prepare_registration(_inputs(loaded), tmp_path)
    assert "\n" not in str(error.value) and loaded["ct"].GetName() in str(error.value)
    assert scene.GetNumberOfNodes() == count and list(tmp_path.iterdir()) == []


def test_the_segmentation_must_share_the_cts_transform(scene, loaded, tmp_path):
    _place(_linear(scene, ROUGH), loaded["ct"])
    with pytest.raises(InputError, match="different transforms"):
        logic.prepare_registration(_inputs(loaded), tmp_path)


def test_registration_from_a_transformed_ct_lands_in_the_scene_once(scene, loaded, phantom_dir, tmp_path):
    """The whole chain with the CLI (the fast learned method, one vertebra): the CLI reads
    --init and --device auto, and the result's transforms sit at the scene's root with the
    result's matrix_ras, since matrix_ras already maps CT RAS to world."""
    rough = _linear(scene, ROUGH)
    _place(rough, loaded["ct"], loaded["seg"])
    stale = _linear(scene, np.eye(4), parent=rough)  # an earlier result someone put under the CT's transform
    logic.tag_node(stale, logic.ROLE_TRANSFORM, vertebra="L2")
    checked, args, work, out_dir = logic.prepare_registration(_inputs(loaded, vertebrae=["L2"], method="learned"), tmp_path)
    process = logic.CliProcess(args).start()
    assert process.wait(timeout_s=300) == 0, process.failure_message()
    document = json.loads((out_dir / "result.json").read_text())
    np.testing.assert_allclose(document["init_matrix_ras"], ROUGH, atol=1e-9)
    result = logic.read_registration_result(out_dir)
    made = logic.apply_registration_result(scene, result, {"AP": loaded["AP"], "LAT": loaded["LAT"]}, checked.labelmap)
    transform = made["transforms"]["L2"]
    assert transform is stale and transform.GetParentTransformNode() is None
    world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(world)
    np.testing.assert_allclose(logic.matrix_of(world), document["vertebrae"]["L2"]["matrix_ras"], atol=1e-4)
    assert made["models"]["L2"].GetParentTransformNode() is transform
    assert loaded["ct"].GetParentTransformNode() is rough  # the user's alignment stays as it was


# ---------------------------------------------------------------------- DICOM X-rays
def test_dicom_xrays_are_centred_by_the_clis_rule(scene, loaded, phantom_dir):
    _place(_linear(scene, ROUGH), loaded["ct"], loaded["seg"])
    centres = centroids_ras(read_labelmap(phantom_dir / "seg.nii.gz"))
    moved = {name: ROUGH[:3, :3] @ centre + ROUGH[:3, 3] for name, centre in centres.items()}
    np.testing.assert_allclose(logic.dicom_isocenter(loaded["seg"], loaded["ct"], ["L2"]), moved["L2"], atol=0.3)
    np.testing.assert_allclose(logic.dicom_isocenter(loaded["seg"], loaded["ct"]), np.mean(list(moved.values()), 0), atol=0.3)
    np.testing.assert_allclose(logic.dicom_isocenter(loaded["seg"], None, ["L2"]), moved["L2"], atol=0.3)  # no CT chosen
    with pytest.raises(InputError, match="T4"):
        logic.dicom_isocenter(loaded["seg"], loaded["ct"], ["T4"])


def test_a_dicom_geometry_without_its_vertebrae_is_refused(tmp_path):
    with pytest.raises(InputError, match="select the CT and its segmentation") as error:
        logic.read_geometry_file(tmp_path / "lat.dcm")
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------- vertebra list
def test_the_vertebra_list_is_the_parameter_nodes_segmentations(scene, loaded):
    from SpineRegistrationLib.core.labels import SCHEMES
    from SpineRegistrationLib.core.volume import Volume
    from SpineRegistrationLib.io import Labelmap

    array = np.zeros((4, 4, 4), np.int16)
    array[:2], array[2:] = SCHEMES["verse"].label_of["T12"], SCHEMES["verse"].label_of["T11"]
    other = logic.add_segmentation_node(scene, Labelmap(Volume(array, np.eye(4)), SCHEMES["verse"]), "thoracic")
    parameters = SimpleNamespace(segmentation=loaded["seg"], vertebrae=["L2"])
    assert logic.vertebra_checklist(parameters.segmentation, parameters.vertebrae) == [("L1", False), ("L2", True), ("L3", False)]
    parameters.segmentation, parameters.vertebrae = other, []
    assert logic.vertebra_checklist(parameters.segmentation, parameters.vertebrae) == [("T11", True), ("T12", True)]
    assert logic.vertebra_checklist(None) == []


# ---------------------------------------------------------------------- the CLI's interpreter
def test_pythonslicer_is_found_on_the_path_or_refused_in_one_line(tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(ValueError, match="PythonSlicer") as error:
        logic.find_python_slicer(str(tmp_path / "bin"))
    assert "\n" not in str(error.value)
    executable = tmp_path / "bin" / "PythonSlicer"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    assert logic.find_python_slicer(str(tmp_path / "bin")) == str(executable)


def test_the_cli_runs_the_library_the_module_imported(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(ROOT)]))
    environment = logic.CliProcess(["--version"])._env
    assert environment["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]


# ---------------------------------------------------------------------- the pose network
def test_a_chosen_pose_model_is_checked_and_passed_to_the_cli(loaded, tmp_path):
    """A patient-specific model (``spinereg train --ct``) is what makes ``auto``/``learned`` work on a
    real CT: the module passes the user's file as ``--model``; the shipped one is the CLI's default."""
    from SpineRegistrationLib.learned.models import shipped_model

    model = shipped_model()
    if model is None:
        pytest.skip("no pose network shipped to stand for a trained one")
    copy = tmp_path / "patient" / "model.pt"
    copy.parent.mkdir()
    copy.write_bytes(model.read_bytes())
    (tmp_path / "work").mkdir()
    checked, args, _, _ = logic.prepare_registration(_inputs(loaded, model=str(copy)), tmp_path / "work")
    assert checked.model == copy and _value(args, "--model") == str(copy)
    _, args, _, _ = logic.prepare_registration(_inputs(loaded), tmp_path / "work")
    assert "--model" not in args
    _, args, _, _ = logic.prepare_registration(_inputs(loaded, model=str(copy), method="intensity"), tmp_path / "work")
    assert "--model" not in args  # no network runs


@pytest.mark.parametrize("which", ["missing", "not a pose network"])
def test_a_bad_pose_model_is_refused_in_one_line_before_anything_is_written(loaded, tmp_path, which):
    path = (tmp_path / "nowhere.pt" if which == "missing"
            else ROOT / "Resources" / "Models" / "vertebra_detector_phantoms.pt")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError) as error:
        logic.prepare_registration(_inputs(loaded, model=str(path)), work)
    assert "\n" not in str(error.value) and list(work.iterdir()) == []
