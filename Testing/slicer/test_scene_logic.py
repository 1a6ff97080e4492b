"""The module's scene logic on a real vtkMRMLScene (slicer-core), without the Slicer app.

Loads a small phantom into nodes through SpineRegistrationModuleLib and checks node
contents against the library's own reading of the same files: X-ray planes where the
geometry says, ROI boxes around their vertebrae, result transforms equal to the files the
CLI writes, DRR volumes on the X-ray planes, bad input rejected with the scene unchanged,
and the background runner (progress, failure, cancel) on real ``spinereg`` commands.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from SpineRegistrationModuleLib.process import CliProcess, parse_progress_line  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.geometry import XrayGeometry  # noqa: E402
from SpineRegistrationLib.io.geometry_json import load_geometry  # noqa: E402
from SpineRegistrationLib.io import (  # noqa: E402
    centroids_ras,
    read_labelmap,
    read_transform,
    read_volume,
    read_xray,
    write_transform,
    write_xray,
)

PACKAGE_DIR = Path(logic.__file__).resolve().parent
MODULE_DIR = PACKAGE_DIR.parent


# ---------------------------------------------------------------------- fixtures
@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def loaded(scene, phantom_dir):
    """The phantom in a fresh scene: CT, segmentation node, labelmap node, AP/LAT X-rays."""
    nodes = {
        "ct": logic.load_ct(scene, phantom_dir / "ct.nii.gz"),
        "seg": logic.load_segmentation(scene, phantom_dir / "seg.nii.gz"),
        "labels": logic.load_segmentation(scene, phantom_dir / "seg.nii.gz", "Labels", as_labelmap=True),
    }
    for view in logic.VIEWS:
        nodes[view] = logic.load_xray(scene, phantom_dir / f"{view}.png", phantom_dir / f"{view}.json", view)
    return nodes


def truth(phantom_dir) -> dict:
    return json.loads((phantom_dir / "truth.json").read_text())["vertebrae"]


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def make_result_folder(folder: Path, phantom_dir: Path, drr_scale: float = 0.5, sizes=None) -> Path:
    """A ``spinereg register`` output folder as the CLI will write it, with the true poses."""
    folder.mkdir(parents=True, exist_ok=True)
    vertebrae = {}
    for index, (name, entry) in enumerate(truth(phantom_dir).items()):
        write_transform(np.array(entry["matrix_ras"]), folder / f"{name}.h5")
        vertebrae[name] = {
            "matrix_ras": entry["matrix_ras"],
            "params": entry["params"],
            "center_ras": entry["center_ras"],
            "similarity": 0.9 - 0.1 * index,
            "verdict": "pass" if index < 2 else "doubt",
            "verdict_reason": None if index < 2 else "low similarity (0.700 < 0.73)",
            "level_margin": None if index == 0 else 0.1 * index,
            "vertebra_evidence": None if index < 2 else 0.21,
            "time_s": 1.5 + index,
        }
    (folder / "result.json").write_text(json.dumps({"format": "spinereg-result", "version": 1, "vertebrae": vertebrae}))
    for view in logic.VIEWS:
        image = read_xray(phantom_dir / f"{view}.png").array
        if sizes and view in sizes:
            image = np.zeros(sizes[view][::-1], np.float32) + np.arange(sizes[view][0], dtype=np.float32)
        write_xray(image * drr_scale, folder / f"drr_{view}.nrrd")
    return folder


# ---------------------------------------------------------------------- X-rays
def test_xray_volume_lies_on_its_detector_plane(scene, loaded, phantom_dir):
    for view in logic.VIEWS:
        node = loaded[view]
        geometry = load_geometry(phantom_dir / f"{view}.json")
        ijk_to_ras = logic.ijk_to_ras_of(node)
        cols, rows = geometry.size
        for i, j in [(0, 0), (cols - 1, 0), (0, rows - 1), (cols - 1, rows - 1), (17, 201), (128.5, 3.25)]:
            np.testing.assert_allclose(ijk_to_ras @ [i, j, 0, 1], [*geometry.pixel_to_ras(i, j), 1], atol=1e-4)
        assert np.linalg.det(ijk_to_ras[:3, :3]) > 0  # right-handed
        # The slice's normal is the detector's: k moves off the plane along the beam axis.
        offset = ijk_to_ras @ [0, 0, 1, 1] - ijk_to_ras @ [0, 0, 0, 1]
        assert abs(abs(offset[:3] @ geometry.detector_normal) - logic.XRAY_SLAB_MM) < 1e-9
        # Pixels as the library reads them, row 0 first.
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[0], read_xray(phantom_dir / f"{view}.png").array)
        # Geometry travels with the node; the source markup sits on the focal spot.
        assert node.GetAttribute(logic.ATTR_VIEW) == view
        attached = logic.geometry_of(node)
        np.testing.assert_allclose(attached.detector_origin, geometry.detector_origin)
        source = logic.source_node_of(node)
        assert source.GetNumberOfControlPoints() == 1
        np.testing.assert_allclose(source.GetNthControlPointPositionWorld(0), geometry.source, atol=1e-4)


def test_xray_ijk_to_ras_of_an_oblique_view():
    """Any orthonormal u, v (not just the presets): columns du*u, dv*v, origin, right-handed."""
    angle = np.radians(30)
    u = np.array([np.cos(angle), np.sin(angle), 0.0])
    v = np.array([0.0, 0.0, -1.0])
    geometry = XrayGeometry([-500.0, 800.0, 10.0], [100.0, -50.0, 200.0], u, v, (0.3, 0.4), (640, 480))
    matrix = logic.xray_ijk_to_ras(geometry)
    for i, j in [(0, 0), (639, 479), (100, 7)]:
        np.testing.assert_allclose(matrix @ [i, j, 0, 1], [*geometry.pixel_to_ras(i, j), 1], atol=1e-9)
    assert np.linalg.det(matrix[:3, :3]) > 0


def test_geometry_attached_to_an_existing_volume(scene, phantom_dir):
    """An X-ray loaded some other way (Add Data, DICOM) gets placed when its geometry is attached."""
    image = read_xray(phantom_dir / "LAT.png").array
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    slicer.util.updateVolumeFromArray(node, image[None])
    geometry = load_geometry(phantom_dir / "LAT.json")
    logic.attach_geometry(scene, node, geometry, "LAT")
    np.testing.assert_allclose(logic.ijk_to_ras_of(node), logic.xray_ijk_to_ras(geometry), atol=1e-9)
    # Attaching again moves the same source point instead of making a second one.
    count = node_count(scene)
    logic.attach_geometry(scene, node, geometry, "LAT")
    assert node_count(scene) == count


# ---------------------------------------------------------------------- CT, segmentation, ROI boxes
def test_ct_and_segmentation_nodes_hold_the_files(scene, loaded, phantom_dir):
    ct = read_volume(phantom_dir / "ct.nii.gz")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded["ct"]), ct.array)
    np.testing.assert_allclose(logic.ijk_to_ras_of(loaded["ct"]), ct.ijk_to_ras)
    assert logic.vertebra_names(loaded["seg"]) == ["L1", "L2", "L3"]
    assert logic.vertebra_names(loaded["labels"]) == ["L1", "L2", "L3"]
    # Both kinds of segmentation node give back the file's labelmap on the CT grid.
    expected = read_labelmap(phantom_dir / "seg.nii.gz")
    for key in ("seg", "labels"):
        labelmap = logic.vertebra_labelmap(loaded[key], loaded["ct"])
        np.testing.assert_array_equal(labelmap.volume.array, expected.volume.array)
        np.testing.assert_allclose(labelmap.volume.ijk_to_ras, expected.volume.ijk_to_ras)


@pytest.mark.parametrize("key", ["seg", "labels"])
def test_roi_boxes_enclose_their_vertebra_and_not_the_neighbours(scene, loaded, key):
    labelmap = logic.vertebra_labelmap(loaded[key], loaded["ct"])
    rois = logic.create_vertebra_rois(scene, loaded[key], loaded["ct"])
    assert sorted(rois) == ["L1", "L2", "L3"]
    centroids = centroids_ras(labelmap)
    for name, roi in rois.items():
        world_to_object = np.linalg.inv(logic.matrix_of(roi.GetObjectToWorldMatrix()))
        half = np.array(roi.GetSize()) / 2

        def inside(points_ras):
            local = points_ras @ world_to_object[:3, :3].T + world_to_object[:3, 3]
            return np.all(np.abs(local) <= half + 1e-6, axis=-1)

        k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[name])
        voxels_ras = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(float))
        assert inside(voxels_ras).all(), f"{name}: voxels outside its box"
        for other, centroid in centroids.items():
            if other != name:
                assert not inside(centroid[None])[0], f"{name}'s box encloses {other}'s centroid"
        # Read back as a voxel box: it holds the vertebra's bounding box, plus at most the margin.
        start, stop = logic.roi_box_ijk(roi, loaded["ct"])
        from SpineRegistrationLib.core.volume import bounding_box_ijk

        tight_start, tight_stop = bounding_box_ijk(labelmap.volume.array == labelmap.labels[name])
        assert np.all(start <= tight_start) and np.all(stop >= tight_stop)
        margin_vox = np.ceil(logic.ROI_MARGIN_MM / labelmap.volume.spacing_mm).astype(int)
        assert np.all(tight_start - start <= margin_vox) and np.all(stop - tight_stop <= margin_vox)


def test_edited_roi_reads_back_as_the_edited_voxel_box(scene, loaded):
    roi = logic.create_vertebra_rois(scene, loaded["seg"], loaded["ct"], vertebrae=["L2"])["L2"]
    start, stop = logic.roi_box_ijk(roi, loaded["ct"])
    spacing = 2.0
    # Shrink by 4 mm in every direction (2 voxels a side) and shift 6 mm along the CT's i axis.
    roi.SetSize(*(np.array(roi.GetSize()) - 8.0))
    i_axis_ras = logic.ijk_to_ras_of(loaded["ct"])[:3, 0] / spacing
    roi.SetCenter(*(np.array(roi.GetCenter()) + 6.0 * i_axis_ras))
    new_start, new_stop = logic.roi_box_ijk(roi, loaded["ct"])
    np.testing.assert_array_equal(new_start, start + 2 + [3, 0, 0])
    np.testing.assert_array_equal(new_stop, stop - 2 + [3, 0, 0])
    # Creating the boxes again resets the edited box instead of adding another.
    count = node_count(scene)
    logic.create_vertebra_rois(scene, loaded["seg"], loaded["ct"], vertebrae=["L2"])
    assert node_count(scene) == count
    np.testing.assert_array_equal(logic.roi_box_ijk(roi, loaded["ct"])[0], start)


# ---------------------------------------------------------------------- results
def test_result_folder_becomes_transforms_drrs_surfaces_and_table(scene, loaded, phantom_dir, tmp_path):
    out = make_result_folder(tmp_path / "out", phantom_dir)
    xrays = {view: loaded[view] for view in logic.VIEWS}
    sizes = {view: logic.xray_size(node) for view, node in xrays.items()}
    result = logic.read_registration_result(out, sizes)
    labelmap = logic.vertebra_labelmap(loaded["seg"], loaded["ct"])
    made = logic.apply_registration_result(scene, result, xrays, labelmap)

    assert sorted(made["transforms"]) == ["L1", "L2", "L3"]
    for name, node in made["transforms"].items():
        np.testing.assert_allclose(logic.transform_to_parent_of(node), read_transform(out / f"{name}.h5"), atol=1e-6)
        np.testing.assert_allclose(logic.transform_to_parent_of(node), truth(phantom_dir)[name]["matrix_ras"], atol=1e-6)
        model = made["models"][name]
        assert model.GetParentTransformNode() is node
        assert model.GetPolyData().GetNumberOfPoints() > 100
        # The surface hugs the vertebra: its bounds match the voxels' (within a voxel).
        k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[name])
        voxels = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
        bounds = np.array(model.GetPolyData().GetBounds()).reshape(3, 2)
        np.testing.assert_allclose(bounds[:, 0], voxels.min(0), atol=2.5)
        np.testing.assert_allclose(bounds[:, 1], voxels.max(0), atol=2.5)
    for view in logic.VIEWS:
        drr = made["drrs"][view]
        assert logic.drr_node_of(loaded[view]) is drr
        assert drr.GetImageData().GetDimensions() == loaded[view].GetImageData().GetDimensions()
        np.testing.assert_allclose(logic.ijk_to_ras_of(drr), logic.ijk_to_ras_of(loaded[view]))
        display = drr.GetDisplayNode()
        assert display.GetColorNode().GetName() == logic.DRR_COLOR_NAME and display.GetApplyThreshold()
        expected = read_xray(phantom_dir / f"{view}.png").array * 0.5
        np.testing.assert_allclose(slicer.util.arrayFromVolume(drr)[0], expected, rtol=1e-6)
    rows = logic.results_table_rows(made["table"])
    assert [row[0] for row in rows] == ["L1", "L2", "L3"]
    assert rows[0][1] == pytest.approx(0.9) and rows[2][2] == "doubt" and rows[1][3] == pytest.approx(2.5)
    # Why a result is in doubt, the level margin and the vertebra evidence (NaN where not read).
    assert [row[6] for row in rows] == ["", "", "low similarity (0.700 < 0.73)"]
    assert np.isnan(rows[0][4]) and rows[2][4] == pytest.approx(0.2)
    assert np.isnan(rows[1][5]) and rows[2][5] == pytest.approx(0.21)

    # A second result updates the same nodes; Reset removes them and keeps the inputs.
    count = node_count(scene)
    logic.apply_registration_result(scene, logic.read_registration_result(out, sizes), xrays, labelmap)
    assert node_count(scene) == count
    removed = logic.reset_results(scene)
    assert removed == 3 + 3 + 2 + 1
    assert not logic.nodes_with(scene, logic.ROLE_TRANSFORM) and logic.drr_node_of(loaded["AP"]) is None
    assert scene.IsNodePresent(loaded["ct"]) and logic.source_node_of(loaded["AP"]) is not None


@pytest.mark.parametrize("damage", ["no-result-json", "missing-h5", "wrong-drr-size", "matrix-mismatch", "bad-json"])
def test_bad_result_folder_raises_and_leaves_the_scene_unchanged(scene, loaded, phantom_dir, tmp_path, damage):
    out = make_result_folder(tmp_path / "out", phantom_dir, sizes={"LAT": (100, 80)} if damage == "wrong-drr-size" else None)
    if damage == "no-result-json":
        (out / "result.json").unlink()
    elif damage == "missing-h5":
        (out / "L2.h5").unlink()
    elif damage == "matrix-mismatch":
        info = json.loads((out / "result.json").read_text())
        info["vertebrae"]["L1"]["matrix_ras"][0][3] += 5.0
        (out / "result.json").write_text(json.dumps(info))
    elif damage == "bad-json":
        (out / "result.json").write_text("{not json")
    xrays = {view: loaded[view] for view in logic.VIEWS}
    count = node_count(scene)
    with pytest.raises(ValueError) as error:
        sizes = {view: logic.xray_size(node) for view, node in xrays.items()}
        logic.apply_registration_result(scene, logic.read_registration_result(out, sizes), xrays)
    assert "\n" not in str(error.value)
    assert node_count(scene) == count


def test_slice_view_shows_the_xray_in_its_plane_with_the_drr_blended(scene, loaded, phantom_dir, tmp_path):
    out = make_result_folder(tmp_path / "out", phantom_dir)
    xrays = {view: loaded[view] for view in logic.VIEWS}
    logic.apply_registration_result(scene, logic.read_registration_result(out), xrays)
    for layout in ("Red", "Yellow"):
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetLayoutName(layout)
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(layout)
        scene.AddNode(composite)
    slice_node = logic.show_xray_in_slice_view(scene, "Red", loaded["AP"], opacity=0.3)
    composite = next(scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
                     if scene.GetNthNode(i).IsA("vtkMRMLSliceCompositeNode") and scene.GetNthNode(i).GetLayoutName() == "Red")
    assert composite.GetBackgroundVolumeID() == loaded["AP"].GetID()
    assert composite.GetForegroundVolumeID() == logic.drr_node_of(loaded["AP"]).GetID()
    geometry = logic.geometry_of(loaded["AP"])
    slice_to_ras = logic.matrix_of(slice_node.GetSliceToRAS())
    assert abs(abs(slice_to_ras[:3, 2] @ geometry.detector_normal) - 1) < 1e-9
    assert abs((slice_to_ras[:3, 3] - geometry.detector_origin) @ geometry.detector_normal) < 1e-6
    assert slice_node.GetSliceVisible()
    logic.set_drr_opacity(scene, 0.8)
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    logic.set_results_visibility(scene, xray_planes=False)
    assert not slice_node.GetSliceVisible()
    assert not logic.source_node_of(loaded["AP"]).GetDisplayNode().GetVisibility()


# ---------------------------------------------------------------------- bad input
def _inputs(loaded, **changes):
    inputs = logic.RegistrationInputs(loaded["ct"], loaded["seg"], {"AP": loaded["AP"], "LAT": loaded["LAT"]})
    for key, value in changes.items():
        setattr(inputs, key, value)
    return inputs


def _xray_without_geometry(scene, phantom_dir):
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("plain")
    scene.AddNode(node)
    slicer.util.updateVolumeFromArray(node, read_xray(phantom_dir / "AP.png").array[None])
    return node


def _segmentation_without_vertebrae(scene, loaded):
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    labelmap = logic.vertebra_labelmap(loaded["seg"], loaded["ct"])
    other = logic.add_segmentation_node(scene, labelmap, "tmp")
    segmentation = other.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(index).SetName(f"Organ {index}")
    return other


def _moved_far_away(scene, loaded, phantom_dir):
    geometry = load_geometry(phantom_dir / "LAT.json")
    shifted = XrayGeometry(geometry.source + [0, 0, 900.0], geometry.detector_origin + [0, 0, 900.0],
                           geometry.detector_u, geometry.detector_v, geometry.pixel_spacing, geometry.size)
    node = logic.load_xray(scene, phantom_dir / "LAT.png", phantom_dir / "LAT.json", "LAT", name="far LAT")
    logic.attach_geometry(scene, node, shifted, "LAT")
    return node


BAD_INPUTS = {
    "no CT": (lambda scene, loaded, d: {"ct_node": None}, "no CT"),
    "no LAT X-ray": (lambda scene, loaded, d: {"xrays": {"AP": loaded["AP"], "LAT": None}}, "no LAT X-ray"),
    "no segmentation": (lambda scene, loaded, d: {"segmentation_node": None}, "no segmentation"),
    "X-ray without geometry": (
        lambda scene, loaded, d: {"xrays": {"AP": _xray_without_geometry(scene, d), "LAT": loaded["LAT"]}},
        "has no geometry",
    ),
    "segmentation without vertebrae": (
        lambda scene, loaded, d: {"segmentation_node": _segmentation_without_vertebrae(scene, loaded)},
        "no vertebra labels",
    ),
    "no overlap": (
        lambda scene, loaded, d: {"xrays": {"AP": loaded["AP"], "LAT": _moved_far_away(scene, loaded, d)}},
        "do not overlap",
    ),
    "vertebra not in view": (
        lambda scene, loaded, d: {"xrays": {"AP": loaded["AP"], "LAT": _moved_far_away(scene, loaded, d)},
                                  "vertebrae": ["L2"]},
        "the LAT X-ray's geometry does not see L2",
    ),
    "unknown vertebra": (lambda scene, loaded, d: {"vertebrae": ["T4"]}, "'T4' .*is not in the labelmap; present: L1, L2, L3"),
    "bad method": (lambda scene, loaded, d: {"method": "magic"}, "unknown method 'magic'"),
    "bad device": (lambda scene, loaded, d: {"device": "tpu"}, "unknown device 'tpu'"),
    "constant X-ray": (
        lambda scene, loaded, d: {"xrays": {"AP": loaded["AP"], "LAT": _constant_xray(scene, d)}},
        "the LAT X-ray is a constant image",
    ),
}


def _constant_xray(scene, phantom_dir):
    geometry = load_geometry(phantom_dir / "LAT.json")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("blank LAT")
    scene.AddNode(node)
    slicer.util.updateVolumeFromArray(node, np.full((1, geometry.size[1], geometry.size[0]), 7.0, np.float32))
    logic.attach_geometry(scene, node, geometry, "LAT")
    return node


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_one_line_and_leave_the_scene_unchanged(scene, loaded, phantom_dir, tmp_path, case):
    make_changes, message = BAD_INPUTS[case]
    inputs = _inputs(loaded, **make_changes(scene, loaded, phantom_dir))
    count = node_count(scene)
    with pytest.raises(ValueError, match=message) as error:
        logic.RegistrationRun(inputs, work_dir=tmp_path).start()
    assert "\n" not in str(error.value)
    assert node_count(scene) == count
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started


@pytest.mark.parametrize(
    "case",
    ["no geometry for a png", "size mismatch", "missing file", "unknown view"],
)
def test_bad_xray_files_raise_and_add_no_node(scene, phantom_dir, tmp_path, case):
    image, geometry, view = phantom_dir / "AP.png", phantom_dir / "AP.json", "AP"
    if case == "no geometry for a png":
        geometry = None
    elif case == "size mismatch":
        g = load_geometry(geometry).to_json_dict()
        g["size"] = [300, 256]
        geometry = tmp_path / "bad.json"
        geometry.write_text(json.dumps(g))
    elif case == "missing file":
        image = tmp_path / "nothing.png"
    else:
        view = "PA-oblique"
    with pytest.raises(ValueError) as error:
        logic.load_xray(scene, image, geometry, view)
    assert "\n" not in str(error.value)
    assert node_count(scene) == 0


def test_size_mismatch_on_attach_changes_nothing(scene, loaded, phantom_dir):
    node = loaded["AP"]
    before = logic.ijk_to_ras_of(node)
    g = load_geometry(phantom_dir / "AP.json").to_json_dict()
    g["size"] = [128, 128]
    count = node_count(scene)
    with pytest.raises(InputError, match="pixels"):
        logic.attach_geometry(scene, node, XrayGeometry.from_json_dict(g), "AP")
    np.testing.assert_array_equal(logic.ijk_to_ras_of(node), before)
    assert node_count(scene) == count


# ---------------------------------------------------------------------- command line
def test_registration_inputs_are_written_for_the_cli(scene, loaded, phantom_dir, tmp_path):
    inputs = _inputs(loaded, vertebrae=["l2", "L1"], method="intensity", device="cpu")
    checked, args, work, out_dir = logic.prepare_registration(inputs, tmp_path)
    assert checked.vertebrae == ["L1", "L2"]
    assert args[0] == "register"
    assert args[args.index("--method") + 1] == "intensity" and args[args.index("--device") + 1] == "cpu"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--vertebra"] == ["L1", "L2"]
    assert Path(args[args.index("--out") + 1]) == out_dir and not out_dir.exists()
    xray_files = [args[i + 1] for i, a in enumerate(args) if a == "--xray"]
    geometry_files = [args[i + 1] for i, a in enumerate(args) if a == "--geometry"]
    assert len(xray_files) == len(geometry_files) == 2
    # The files hold what the scene holds.
    ct = read_volume(args[args.index("--ct") + 1])
    np.testing.assert_array_equal(ct.array, read_volume(phantom_dir / "ct.nii.gz").array)
    np.testing.assert_allclose(ct.ijk_to_ras, read_volume(phantom_dir / "ct.nii.gz").ijk_to_ras, atol=1e-6)
    labelmap = read_labelmap(args[args.index("--seg") + 1])
    assert list(labelmap.labels) == ["L1", "L2", "L3"]
    for view, image_file, geometry_file in zip(logic.VIEWS, xray_files, geometry_files):
        np.testing.assert_array_equal(read_xray(image_file).array, read_xray(phantom_dir / f"{view}.png").array)
        np.testing.assert_allclose(load_geometry(geometry_file).source, load_geometry(phantom_dir / f"{view}.json").source)
    # No vertebra asked: every vertebra both views see, named.
    _, args, _, _ = logic.prepare_registration(_inputs(loaded), tmp_path)
    assert [args[i + 1] for i, a in enumerate(args) if a == "--vertebra"] == ["L1", "L2", "L3"]


def test_register_cancelled_after_a_vertebra_goes_on_from_it(scene, loaded, tmp_path):
    """Cancel once a vertebra is done: the work folder stays; Register on the same inputs goes on
    from it (``--resume``), keeps that vertebra's pose and registers the rest; other settings
    start afresh elsewhere."""
    from SpineRegistrationLib.io.journal import journal_path

    inputs = _inputs(loaded, method="intensity", device="cpu")
    run = logic.RegistrationRun(inputs, work_dir=tmp_path).start()
    assert not run.resumed
    journal = journal_path(run.out_dir, "register")
    deadline = time.monotonic() + 300
    while run.running and not journal.is_file() and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.1)
    assert run.running, "the run ended before a cancel could find it with a vertebra done"
    run.cancel()
    assert run.kept and (run.work / "input").is_dir()
    done = json.loads(journal.read_text())["entries"]
    assert 1 <= len(done) < 3
    _, args, other, _ = logic.prepare_registration(_inputs(loaded, method="intensity", device="cpu",
                                                           vertebrae=["L1"]), tmp_path)
    assert "--resume" not in args and other != run.work
    shutil.rmtree(other)
    again = logic.RegistrationRun(inputs, work_dir=tmp_path).start()
    assert again.resumed and again.work == run.work
    logic.wait_or_cancel(again, 600)
    made = again.finish(scene)
    assert sorted(made["transforms"]) == ["L1", "L2", "L3"]
    for name, entry in done.items():  # taken over, not registered again
        np.testing.assert_allclose(logic.transform_to_parent_of(made["transforms"][name]), entry["matrix_ras"],
                                   atol=1e-5)
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_are_parsed():
    event = parse_progress_line("[2/4] rendering vertebra DRRs ...")
    assert event.fraction == pytest.approx(0.25) and event.message == "rendering vertebra DRRs ..."
    event = parse_progress_line("L1:  45%|####5     | 9/20 [00:01<00:02,  5.01it/s]")
    assert event.fraction == pytest.approx(0.45) and event.message == "L1"
    event = parse_progress_line("progress 0.7 refining L2")
    assert event.fraction == pytest.approx(0.7) and event.message == "refining L2"
    event = parse_progress_line("generating the phantom ...")
    assert event.fraction is None and event.message == "generating the phantom ..."


FAKE_CLI = r"""
import sys, time
print("[1/2] L1", file=sys.stderr, flush=True)
for pct in (0, 50, 100):
    sys.stderr.write(f"\rL1: {pct:3d}%|##        | {pct // 10}/10 [00:01<00:01]")
    sys.stderr.flush()
    time.sleep(0.05)
print("\n[2/2] L2", file=sys.stderr, flush=True)
sys.stderr.write("\rL2:  50%|#####     | 5/10 [00:01<00:01]\n")
print("done")
"""


def test_runner_reads_carriage_return_bars_and_makes_one_monotone_progress():
    events = []
    run = CliProcess(["-c", FAKE_CLI], program=[sys.executable]).start()
    assert run.wait(timeout_s=30, callback=events.append) == 0
    fractions = [e.fraction for e in events if e.fraction is not None]
    assert fractions == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.5, 0.75])
    assert [e.message for e in events][-1] == "done"


def test_runner_runs_a_spinereg_command_to_completion(tmp_path):
    out = tmp_path / "phantom"
    events = []
    run = CliProcess(["phantom", "--spacing", "2", "--vertebrae", "L1", "L2", "--out", str(out)]).start()
    assert run.wait(timeout_s=120, callback=events.append) == 0
    assert run.returncode == 0 and run.error is None
    assert any("generating the phantom" in event.message for event in events)
    assert any(event.message.startswith("wrote") for event in events)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["AP.json", "AP.png", "LAT.json", "LAT.png", "centroids.json", "ct.nii.gz", "seg.nii.gz", "truth.json"]
    )


def test_runner_reports_the_cli_error_in_one_line(tmp_path):
    run = CliProcess(["phantom", "--spacing", "99", "--out", str(tmp_path / "x")]).start()
    assert run.wait(timeout_s=60) == 2
    assert run.error.startswith("--spacing 99") and "\n" not in run.failure_message()
    assert not (tmp_path / "x").exists()


def test_cancel_kills_a_long_run_and_leaves_no_output(tmp_path):
    out = tmp_path / "demo"
    run = CliProcess(["demo", "--spacing", "1", "--out", str(out)]).start()
    time.sleep(1.0)
    assert run.running
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 20
    assert not run.running and run.returncode != 0 and run.cancelled
    assert run.failure_message() == "cancelled"
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a half-written staging folder


def test_a_run_killed_outright_leaves_no_staging_folder_either(tmp_path):
    out = tmp_path / "demo"
    run = CliProcess(["demo", "--spacing", "1", "--out", str(out)]).start()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".demo.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".demo.partial-*")), "the demo never staged its output"
    run.cancel(grace_s=0.0)  # SIGKILL at once: the CLI cannot clean up itself
    assert not run.running and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- the real register command
def test_register_help_lists_the_options_the_module_uses():
    run = CliProcess(["register", "--help"]).start()
    assert run.wait(timeout_s=60) == 0
    text = "\n".join(run.lines)
    for option in ("--ct", "--seg", "--vertebra", "--xray", "--geometry", "--boxes", "--method", "--device", "--out"):
        assert option in text, f"spinereg register --help does not mention {option}"
    for method in logic.METHODS:
        assert method in text


def test_register_from_the_scene_recovers_the_true_poses(scene, loaded, phantom_dir, tmp_path):
    events = []
    made = logic.RegistrationRun(_inputs(loaded, method="intensity"), work_dir=tmp_path).run(
        scene, callback=events.append, timeout_s=600
    )
    labelmap = logic.vertebra_labelmap(loaded["seg"], loaded["ct"])
    for name, entry in truth(phantom_dir).items():
        k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[name])
        points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
        estimated = logic.transform_to_parent_of(made["transforms"][name])
        true = np.array(entry["matrix_ras"])
        mtre = np.linalg.norm(points @ (estimated - true)[:3, :3].T + (estimated - true)[:3, 3], axis=1).mean()
        assert mtre < 2.0, f"{name}: mTRE {mtre:.2f} mm"
    assert list(tmp_path.iterdir()) == []  # the work folder is gone


# ---------------------------------------------------------------------- module files
PACKAGE_FILES = sorted(path.name for path in PACKAGE_DIR.glob("*.py"))
#: Import order inside the package: each module imports only modules left of it (no circles).
PACKAGE_LAYERS = ["process", "nodes", "xrays", "rois", "results", "registration", "patient_model", "boxes", "views",
                  "deformation", "__init__"]
ALLOWED_SCENE_LOGIC_IMPORTS = {"__future__", "json", "os", "re", "shutil", "tempfile", "time", "dataclasses", "pathlib",
                               "numpy", "vtk", "slicer", "SpineRegistrationLib"}


def _imports(tree) -> tuple[set[str], set[str]]:
    """(absolute module names, package-internal module names) a module imports."""
    absolute, internal = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            internal |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            absolute.add(node.module)
    return absolute, internal


def test_the_helper_package_holds_the_layered_modules():
    assert PACKAGE_FILES == sorted(f"{name}.py" for name in PACKAGE_LAYERS)


@pytest.mark.parametrize("filename", PACKAGE_FILES)
def test_helper_modules_import_no_app_qt_or_module_framework(filename):
    tree = ast.parse((PACKAGE_DIR / filename).read_text())
    assert ast.get_docstring(tree), f"{filename} has no docstring"
    imported, internal = _imports(tree)
    forbidden = {name for name in imported
                 if name.split(".")[0] in ("qt", "ctk", "slicer.app") or "ScriptedLoadableModule" in name
                 or "parameterNodeWrapper" in name}
    assert not forbidden
    if filename == "process.py":
        assert not any(name.split(".")[0] in ("slicer", "vtk", "numpy", "torch", "SpineRegistrationLib")
                       for name in imported)
    else:
        assert {name.split(".")[0] for name in imported} <= ALLOWED_SCENE_LOGIC_IMPORTS
    # Imports point one way: only to modules earlier in PACKAGE_LAYERS.
    layer = PACKAGE_LAYERS.index(filename[: -len(".py")])
    assert internal <= set(PACKAGE_LAYERS[:layer]), f"{filename} imports {sorted(internal - set(PACKAGE_LAYERS[:layer]))}"
    # No use of the application's globals either (slicer.app, slicer.mrmlScene, slicer.modules).
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer"}
    assert not used & {"app", "mrmlScene", "modules", "ScriptedLoadableModule", "parameterNodeWrapper"}


def test_package_exports_every_name_it_lists():
    assert set(logic.__all__) <= set(dir(logic))
    assert logic.METHODS == ("auto", "learned", "intensity") and "cpu" in logic.DEVICES


def test_only_module_files_lie_at_the_top_of_the_module_folder():
    """Helpers belong in the package (each top-level file is a module: test_extension_build.py)."""
    assert [path.name for path in sorted(MODULE_DIR.glob("*.py"))] == ["SpineRegistration.py"]


def test_module_file_compiles_and_its_ui_has_every_widget_it_uses():
    import re
    import xml.etree.ElementTree as ET

    source = (MODULE_DIR / "SpineRegistration.py").read_text()
    compile(source, "SpineRegistration.py", "exec")
    tree = ET.parse(MODULE_DIR / "Resources" / "UI" / "SpineRegistration.ui")
    widgets = {w.get("name"): w.get("class") for w in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    assert used and used <= set(widgets), f"widgets missing from the .ui: {sorted(used - set(widgets))}"
    # Every parameter-node field the .ui binds exists in the parameter node class.
    bound = {p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    fields = set(re.findall(r"^    (\w+): ", source.split("class SpineRegistrationParameterNode")[1].split("\nclass ")[0], re.M))
    assert bound and bound <= fields, f"unbound SlicerParameterName: {sorted(bound - fields)}"
    # Node selectors say which node types they take.
    for combo in (w for w in tree.iter("widget") if w.get("class") == "qMRMLNodeComboBox"):
        assert any(p.get("name") == "nodeTypes" for p in combo.iter("property")), combo.get("name")


def test_the_module_logic_reads_no_widget_and_only_parameter_node_fields():
    """The Logic runs without the widget (scripts, the self-test): it must not touch ``self.ui``, and
    every ``parameterNode.<field>`` the module file reads is a field of the parameter node class."""
    import re

    source = (MODULE_DIR / "SpineRegistration.py").read_text()
    logic_class = source.split("class SpineRegistrationLogic")[1].split("\nclass ")[0]
    assert "self.ui" not in logic_class
    fields = set(re.findall(r"^    (\w+): ", source.split("class SpineRegistrationParameterNode")[1].split("\nclass ")[0], re.M))
    read = set(re.findall(r"(?:parameterNode|self\._parameterNode|\bp)\.(\w+)\b(?!\()", source))
    methods = {"GetID", "GetName", "GetNodeReference", "SetParameter", "GetParameter", "StartModify", "EndModify"}
    assert read - methods <= fields, f"not parameter-node fields: {sorted(read - methods - fields)}"
