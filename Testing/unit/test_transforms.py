"""ITK transform files and JSON init matrices <-> matrix_ras (CT RAS -> world RAS).

The contract (DESIGN.md): a file we write loads into Slicer with exactly matrix_ras as
the node's matrixTransformToParent, and a file Slicer writes reads back as it. Checked
with Slicer's own vtkMRMLTransformStorageNode from slicer-core.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.core.frames import apply_matrix, homogeneous, points_ras_to_lps
from SpineRegistrationLib.io import (
    check_rigid,
    read_matrix_json,
    read_rigid_matrix,
    read_transform,
    write_transform,
)


def rotation(axis, angle_rad):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


MATRIX_RAS = homogeneous(rotation([0.3, -1.0, 0.5], 0.7), [12.5, -40.0, 7.25])
EXTENSIONS = [".h5", ".tfm", ".txt"]


def to_vtk(matrix):
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    return vtk_matrix


def from_vtk(vtk_matrix):
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer")
    return slicer, slicer.vtkMRMLScene()


@pytest.mark.parametrize("suffix", EXTENSIONS)
def test_slicer_loads_our_file_as_matrix_to_parent(tmp_path, scene, suffix):
    slicer, mrml = scene
    path = tmp_path / f"L1{suffix}"
    write_transform(MATRIX_RAS, path)
    node = slicer.vtkMRMLLinearTransformNode()
    mrml.AddNode(node)
    storage = slicer.vtkMRMLTransformStorageNode()
    mrml.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    to_parent = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(to_parent)
    np.testing.assert_allclose(from_vtk(to_parent), MATRIX_RAS, atol=1e-6)


@pytest.mark.parametrize("suffix", EXTENSIONS)
def test_file_written_by_slicer_reads_back_as_matrix_to_parent(tmp_path, scene, suffix):
    slicer, mrml = scene
    node = slicer.vtkMRMLLinearTransformNode()
    mrml.AddNode(node)
    node.SetMatrixTransformToParent(to_vtk(MATRIX_RAS))
    storage = slicer.vtkMRMLTransformStorageNode()
    mrml.AddNode(storage)
    path = tmp_path / f"slicer{suffix}"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    np.testing.assert_allclose(read_transform(path), MATRIX_RAS, atol=1e-6)


def test_file_holds_the_lps_resampling_transform(tmp_path):
    """ITK semantics without Slicer: the stored transform maps world (LPS) to CT (LPS)."""
    write_transform(MATRIX_RAS, tmp_path / "t.h5")
    itk_transform = sitk.ReadTransform(str(tmp_path / "t.h5"))
    point_ct_ras = np.array([3.0, -7.0, 11.0])
    point_world_ras = apply_matrix(MATRIX_RAS, point_ct_ras)
    back = itk_transform.TransformPoint(points_ras_to_lps(point_world_ras).tolist())
    np.testing.assert_allclose(back, points_ras_to_lps(point_ct_ras), atol=1e-9)


def test_affine_and_centred_itk_transforms_read_back(tmp_path):
    affine = homogeneous(rotation([1, 0, 0], 0.2) @ np.diag([1.1, 0.9, 1.0]), [1.0, 2.0, 3.0])
    write_transform(affine, tmp_path / "a.tfm")
    np.testing.assert_allclose(read_transform(tmp_path / "a.tfm"), affine, atol=1e-9)
    # An Euler transform with a centre, composed with a translation (as other tools write them).
    euler = sitk.Euler3DTransform((5.0, -3.0, 2.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    composite = sitk.CompositeTransform([euler, sitk.TranslationTransform(3, (1.0, -1.0, 2.0))])
    sitk.WriteTransform(composite, str(tmp_path / "c.h5"))
    matrix = read_transform(tmp_path / "c.h5")
    point_ct_ras = np.array([10.0, 20.0, -5.0])
    world_lps = points_ras_to_lps(apply_matrix(matrix, point_ct_ras))
    np.testing.assert_allclose(composite.TransformPoint(world_lps.tolist()), points_ras_to_lps(point_ct_ras), atol=1e-9)


def test_bad_transform_files(tmp_path):
    with pytest.raises(InputError, match="transform file not found"):
        read_transform(tmp_path / "none.h5")
    (tmp_path / "corrupt.tfm").write_text("#Insight Transform File V1.0\nTransform: Nonsense\n")
    with pytest.raises(InputError, match="cannot read .* as an ITK transform"):
        read_transform(tmp_path / "corrupt.tfm")
    bspline = sitk.BSplineTransformInitializer(sitk.Image([4, 4, 4], sitk.sitkFloat32), [2, 2, 2])
    sitk.WriteTransform(bspline, str(tmp_path / "b.h5"))
    with pytest.raises(InputError, match="non-linear transform"):
        read_transform(tmp_path / "b.h5")
    (tmp_path / "t.json").write_text("[]")
    with pytest.raises(InputError, match="expected an ITK transform file"):
        read_transform(tmp_path / "t.json")
    with pytest.raises(InputError, match="expected an ITK transform file"):
        write_transform(MATRIX_RAS, tmp_path / "t.nrrd")
    with pytest.raises(InputError, match="cannot write transform"):
        write_transform(MATRIX_RAS, tmp_path / "missing" / "t.h5")


def test_read_matrix_json_both_layouts(tmp_path):
    (tmp_path / "init.json").write_text(json.dumps({"matrix_ras": MATRIX_RAS.tolist()}))
    np.testing.assert_allclose(read_matrix_json(tmp_path / "init.json"), MATRIX_RAS)
    (tmp_path / "bare.json").write_text(json.dumps(MATRIX_RAS.tolist()))
    np.testing.assert_allclose(read_matrix_json(tmp_path / "bare.json"), MATRIX_RAS)
    np.testing.assert_allclose(read_rigid_matrix(tmp_path / "bare.json"), MATRIX_RAS)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.diag([1.1, 1.0, 1.0, 1.0]), "not orthonormal"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "reflection"),
        (np.vstack([np.eye(4)[:3], [0, 0, 1, 1]]), "last row must be 0 0 0 1"),
        (np.eye(3), "expected a 4x4 matrix"),
    ],
)
def test_non_rigid_json_is_rejected(tmp_path, matrix, message):
    (tmp_path / "init.json").write_text(json.dumps({"matrix_ras": matrix.tolist()}))
    with pytest.raises(InputError, match=message):
        read_matrix_json(tmp_path / "init.json")


def test_json_errors_and_rigid_check_on_itk_files(tmp_path):
    (tmp_path / "keys.json").write_text(json.dumps({"matrix": np.eye(4).tolist()}))
    with pytest.raises(InputError, match="expected a 'matrix_ras' key"):
        read_matrix_json(tmp_path / "keys.json")
    (tmp_path / "text.json").write_text(json.dumps({"matrix_ras": "identity"}))
    with pytest.raises(InputError, match="expected a 4x4 matrix|not numeric"):
        read_matrix_json(tmp_path / "text.json")
    write_transform(np.diag([2.0, 1.0, 1.0, 1.0]), tmp_path / "scale.h5")
    with pytest.raises(InputError, match="not a rigid transform"):
        read_rigid_matrix(tmp_path / "scale.h5")
    np.testing.assert_allclose(check_rigid(MATRIX_RAS), MATRIX_RAS)
