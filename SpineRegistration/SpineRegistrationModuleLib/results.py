"""A ``spinereg register`` result folder, read and put into the scene; reset.

result.json is read by the library (:func:`SpineRegistrationLib.io.results.read_result_folder`,
the one home of its schema); each vertebra's ``<name>.h5`` and each view's
``drr_<VIEW>.nrrd`` are read by Slicer's own storage nodes, in a private scene, and the
.h5 must agree with result.json's ``matrix_ras``. In the scene, per vertebra: a linear
transform node whose matrixTransformToParent is ``matrix_ras`` (CT RAS -> world RAS, mm)
and the vertebra's surface (CT RAS mm) under it; per view: the DRR as a volume with the
X-ray's IJKToRAS (on its detector plane), green and transparent where no bone projects;
and a results table.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, vtkMatrixFromArray
from vtk.util import numpy_support

from SpineRegistrationLib.core.volume import bounding_box_ijk
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap
from SpineRegistrationLib.io.results import RESULT_FILE, ResultFolder, VertebraResult, read_result_folder

from .nodes import ATTR_RESULT, ATTR_ROLE, DEFORMATION_ROLES, RESULT_ROLES, ROLE_DRR, ROLE_MODEL
from .nodes import ROLE_TABLE, ROLE_TRANSFORM, remove_node
from .nodes import SceneChange, fill_volume_node, ijk_to_ras_of, nodes_with, region_color, tag_node
from .nodes import transform_to_parent_of
from .xrays import REF_DRR, VIEWS, drr_node_of, xray_size

#: Windowed-sinc pass band of vertebra surfaces (Slicer's segmentation smoothing factor 0.5).
SURFACE_PASS_BAND = 0.01

#: Name of the colour table the DRRs are shown with (black -> green, made once per scene).
DRR_COLOR_NAME = "SpineRegistration DRR"

#: RGB of the brightest DRR value, and the brightness of the faintest shown one.
DRR_GREEN = (0.15, 1.0, 0.25)
DRR_GREEN_FLOOR = 0.35

#: Fraction of a DRR's high value (99th percentile of its positive pixels) below which it is
#: transparent, so the X-ray shows unchanged wherever no registered vertebra projects.
DRR_TRANSPARENT_BELOW = 0.05

#: Tolerance (matrix entries, mm for the translation) between a .h5 pose and result.json's.
POSE_TOLERANCE = 1e-3


@dataclass
class RegistrationResult:
    """A ``spinereg register`` output folder, read and checked (nothing in the scene yet).

    vertebrae: name -> the library's VertebraResult, ``matrix_ras`` as Slicer read it from
    the .h5; drrs: view -> (rows, columns) float32 DRR; folder: result.json as the library read it.
    """

    vertebrae: dict[str, VertebraResult]
    drrs: dict[str, np.ndarray]
    folder: ResultFolder

    @property
    def document(self) -> dict:
        """result.json as parsed."""
        return self.folder.document


# ---------------------------------------------------------------------- reading
def _read_in_private_scene(node, storage, path: Path):
    """Read ``path`` into ``node`` through ``storage`` in a private scene, so the user's scene
    gets no storage node pointing at a temporary file. Returns that scene (keep it while
    ``node`` is used), or None when the file could not be read."""
    scratch = slicer.vtkMRMLScene()
    scratch.AddNode(node)
    scratch.AddNode(storage)
    storage.SetFileName(str(path))
    return scratch if storage.ReadData(node) else None


def _read_itk_transform_with_mrml(path: Path) -> np.ndarray:
    """matrixTransformToParent of an ITK transform file, read by vtkMRMLTransformStorageNode."""
    node = slicer.vtkMRMLLinearTransformNode()
    if _read_in_private_scene(node, slicer.vtkMRMLTransformStorageNode(), path) is None:
        raise InputError(f"cannot read the transform {path.name} (not a linear ITK transform)")
    return transform_to_parent_of(node)


def _read_image_with_mrml(path: Path) -> np.ndarray:
    """Voxels of an image file read by vtkMRMLVolumeArchetypeStorageNode, squeezed: a 2D
    image comes back (rows, columns)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetSingleFile(True)
    if _read_in_private_scene(node, storage, path) is None or node.GetImageData() is None:
        raise InputError(f"cannot read the image {path.name}")
    return np.squeeze(np.array(arrayFromVolume(node), dtype=np.float32))


def read_registration_result(out_dir: str | os.PathLike, xray_sizes: dict | None = None) -> RegistrationResult:
    """Read ``result.json``, one ``<name>.h5`` per vertebra and ``drr_<view>.nrrd`` per view.

    xray_sizes: view -> (columns, rows) the DRRs must have. Raises InputError (one line)
    for a missing or inconsistent file.
    """
    folder = read_result_folder(out_dir)
    vertebrae = {}
    for name, vertebra in folder.vertebrae.items():
        path = folder.transform_path(name)
        matrix = _read_itk_transform_with_mrml(path)
        if not np.allclose(vertebra.matrix_ras, matrix, atol=POSE_TOLERANCE):
            raise InputError(f"{path.name} and {RESULT_FILE} disagree on the pose of {name}")
        vertebrae[name] = dataclasses.replace(vertebra, matrix_ras=matrix)
    drrs = {}
    for view in VIEWS:
        path = folder.drr_path(view)
        if not path.is_file():
            continue
        array = _read_image_with_mrml(path)
        if array.ndim != 2:
            raise InputError(f"{path.name} is not a 2D image (shape {array.shape})")
        if xray_sizes and view in xray_sizes and tuple(xray_sizes[view]) != (array.shape[1], array.shape[0]):
            raise InputError(
                f"{path.name} is {array.shape[1]} x {array.shape[0]} pixels but the {view} X-ray is "
                f"{xray_sizes[view][0]} x {xray_sizes[view][1]}"
            )
        drrs[view] = array
    return RegistrationResult(vertebrae, drrs, folder)


# ---------------------------------------------------------------------- surfaces
def vertebra_surface(labelmap: Labelmap, name: str, smoothing_iterations: int = 20) -> vtk.vtkPolyData:
    """Smoothed surface of one vertebra's voxels, in CT RAS mm (flying edges at 0.5 on its mask)."""
    mask = labelmap.volume.array == labelmap.labels[name]
    start, stop = bounding_box_ijk(mask, margin_vox=1)
    crop = np.ascontiguousarray(mask[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]].astype(np.float32))
    image = vtk.vtkImageData()
    image.SetDimensions(*crop.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(crop.ravel(), deep=True))
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(image)
    surface.SetValue(0, 0.5)
    surface.ComputeNormalsOff()  # recomputed after smoothing
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(surface.GetOutputPort())
    smoother.SetNumberOfIterations(smoothing_iterations)
    smoother.SetPassBand(SURFACE_PASS_BAND)
    smoother.NormalizeCoordinatesOn()
    smoother.NonManifoldSmoothingOn()
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    to_ras = vtk.vtkTransform()
    crop_to_ras = labelmap.volume.ijk_to_ras.copy()
    crop_to_ras[:3, 3] += crop_to_ras[:3, :3] @ start  # crop index 0 -> volume index start
    to_ras.SetMatrix(vtkMatrixFromArray(crop_to_ras))
    place = vtk.vtkTransformPolyDataFilter()
    place.SetInputConnection(smoother.GetOutputPort())
    place.SetTransform(to_ras)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(place.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    polydata = vtk.vtkPolyData()
    polydata.DeepCopy(normals.GetOutput())
    polydata.GetPointData().SetScalars(None)  # the mask value 0.5 everywhere: nothing to colour by
    return polydata


# ---------------------------------------------------------------------- into the scene
def apply_registration_result(scene, result: RegistrationResult, xrays: dict, labelmap: Labelmap | None = None) -> dict:
    """Put a read registration result into the scene (or update a previous one).

    Per vertebra: a linear transform node ``<name> registration`` at the scene's root with
    matrixTransformToParent = matrix_ras (CT RAS -> world, a CT's parent transform included:
    never put it under that transform), and (with ``labelmap``, in CT RAS) the vertebra's
    surface model under it. Per view with a DRR: a volume ``<view> DRR`` with the X-ray's
    IJKToRAS, referenced from the X-ray node. Plus the results table. Nodes of an earlier
    run are updated in place; the nodes of an earlier Deform step (:mod:`.deformation`) are
    removed, since they were made from the poses this result replaces. Each transform
    node keeps its vertebra's result.json entry in ATTR_RESULT, with the method that registered it. Returns {"transforms": {...}, "models": {...}, "drrs": {...},
    "table": node}.
    """
    # Everything that can fail on bad input happens before the scene changes.
    for view in result.drrs:
        if xrays.get(view) is None:
            raise InputError(f"the result has a {view} DRR but no {view} X-ray is selected")
        cols, rows = xray_size(xrays[view])
        if result.drrs[view].shape != (rows, cols):
            raise InputError(f"the {view} DRR is {result.drrs[view].shape[1]} x {result.drrs[view].shape[0]} pixels, the X-ray {cols} x {rows}")
    surfaces = {}
    if labelmap is not None:
        surfaces = {name: vertebra_surface(labelmap, name) for name in result.vertebrae if name in labelmap.labels}
    created = {"transforms": {}, "models": {}, "drrs": {}, "table": None}
    with SceneChange(scene) as change:
        for name, vertebra in result.vertebrae.items():
            transform, _ = change.find_or_add(
                ROLE_TRANSFORM, slicer.vtkMRMLLinearTransformNode, f"{name} registration", display=False, vertebra=name
            )
            transform.SetAndObserveTransformNodeID(None)  # matrix_ras is to world already (the CT's pose is in it)
            transform.SetMatrixTransformToParent(vtkMatrixFromArray(vertebra.matrix_ras))
            transform.SetAttribute(ATTR_RESULT, json.dumps(vertebra.to_json() | {"method": result.document.get("method")}))
            created["transforms"][name] = transform
            if name in surfaces:
                created["models"][name] = _update_surface_model(change, name, surfaces[name], transform)
        for view, array in result.drrs.items():
            xray = xrays[view]
            drr = drr_node_of(xray)
            if drr is None:
                drr = slicer.vtkMRMLScalarVolumeNode()
                fill_volume_node(drr, array[None], ijk_to_ras_of(xray))
                change.add(drr, f"{view} DRR")
                tag_node(drr, ROLE_DRR, view=view)
                xray.SetNodeReferenceID(REF_DRR, drr.GetID())
            else:
                fill_volume_node(drr, array[None], ijk_to_ras_of(xray))
            _style_drr(drr, array, _drr_color_node(scene, change))
            created["drrs"][view] = drr
        created["table"] = _update_results_table(change, result)
        for role in DEFORMATION_ROLES:  # stale now; removed last, once nothing can fail
            for node in nodes_with(scene, role):
                remove_node(scene, node)
    return created


def _update_surface_model(change: SceneChange, name: str, polydata: vtk.vtkPolyData, transform):
    """The vertebra's surface model (made on first use, in its region's colour) under ``transform``."""
    model, added = change.find_or_add(ROLE_MODEL, slicer.vtkMRMLModelNode, f"{name} registered", vertebra=name)
    if added:
        display = model.GetDisplayNode()
        if display is not None:
            display.SetColor(*region_color(name))
            display.SetVisibility2D(True)
            display.SetSliceIntersectionThickness(2)
    model.SetAndObservePolyData(polydata)
    model.SetAndObserveTransformNodeID(transform.GetID())
    return model


def _drr_color_node(scene, change: SceneChange):
    """The black -> green colour table of DRRs (made on first use, kept by Reset)."""
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLColorTableNode") and node.GetName() == DRR_COLOR_NAME:
            return node
    color = slicer.vtkMRMLColorTableNode()
    color.SetTypeToUser()
    color.SetNumberOfColors(256)
    for index in range(256):
        # Dim green -> bright green (not from black: faint bone must tint, not darken, the X-ray).
        brightness = DRR_GREEN_FLOOR + (1.0 - DRR_GREEN_FLOOR) * index / 255.0
        color.SetColor(index, f"drr{index}", *(brightness * c for c in DRR_GREEN), 1.0)
    color.SetAttribute("Category", "SpineRegistration")
    return change.add(color, DRR_COLOR_NAME, display=False)


def _style_drr(drr_node, array: np.ndarray, color_node) -> None:
    """Green, windowed to the DRR's range, transparent where it is (nearly) zero: blended as
    the foreground layer of a slice view it tints only the registered vertebrae."""
    display = drr_node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(color_node.GetID())
    positive = array[array > 0]
    high = float(np.percentile(positive, 99.0)) if positive.size else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, high)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(DRR_TRANSPARENT_BELOW * high)
    display.SetUpperThreshold(float(array.max()) + 1.0)


# ---------------------------------------------------------------------- results table
#: Columns of the results table: title -> (VTK array class, value of a VertebraResult).
_TABLE_COLUMNS = {
    "Vertebra": (vtk.vtkStringArray, lambda v: v.name),
    "Similarity": (vtk.vtkDoubleArray, lambda v: float(v.similarity)),
    "Verdict": (vtk.vtkStringArray, lambda v: v.verdict),
    "Time (s)": (vtk.vtkDoubleArray, lambda v: float(v.time_s)),
    # The verdict's lead over the neighbouring levels, the vertebra's own evidence (NaN where not
    # read) and why a result is in doubt.
    "Level margin": (vtk.vtkDoubleArray, lambda v: float("nan") if v.level_margin is None else float(v.level_margin)),
    "Vertebra evidence": (vtk.vtkDoubleArray,
                          lambda v: float("nan") if v.vertebra_evidence is None else float(v.vertebra_evidence)),
    "Why in doubt": (vtk.vtkStringArray, lambda v: v.verdict_reason or ""),
}


def _update_results_table(change: SceneChange, result: RegistrationResult):
    table_node, _ = change.find_or_add(ROLE_TABLE, slicer.vtkMRMLTableNode, "SpineRegistration results", display=False)
    table = vtk.vtkTable()
    for title, (array_class, value_of) in _TABLE_COLUMNS.items():
        column = array_class()
        column.SetName(title)
        for vertebra in result.vertebrae.values():
            column.InsertNextValue(value_of(vertebra))
        table.AddColumn(column)
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)
    return table_node


def results_table_rows(table_node) -> list[tuple]:
    """The rows of a results table as (vertebra, similarity, verdict, time_s, level margin, vertebra
    evidence, why in doubt) tuples."""
    table = table_node.GetTable()
    strings = [array_class is vtk.vtkStringArray for array_class, _ in _TABLE_COLUMNS.values()]
    return [
        tuple(table.GetValue(row, col).ToString() if strings[col] else table.GetValue(row, col).ToDouble()
              for col in range(len(strings)))
        for row in range(table.GetNumberOfRows())
    ]


# ---------------------------------------------------------------------- reset
def reset_results(scene) -> int:
    """Remove every result node this module made (transforms, moved surfaces, DRRs, table,
    deformation). Inputs, X-rays, sources and ROI boxes stay. Returns how many were removed."""
    removed = 0
    for node in nodes_with(scene):
        if node.GetAttribute(ATTR_ROLE) in RESULT_ROLES and scene.IsNodePresent(node):
            remove_node(scene, node)
            removed += 1
    return removed
