"""The SpineRegistration module's scene logic: MRML nodes <-> SpineRegistrationLib.

Everything here takes a ``vtkMRMLScene`` explicitly and imports only ``slicer`` (MRML
classes and the ``slicer.util`` array helpers), ``vtk``, ``numpy`` and
SpineRegistrationLib: no ``slicer.app``, no Qt, no ScriptedLoadableModule. So it runs in
the Slicer application on ``slicer.mrmlScene`` and headless in tests on a
``slicer.vtkMRMLScene()`` of the ``slicer-core`` package.

Scene representation (DESIGN.md, issue 6):

- CT: a scalar volume; segmentation: a segmentation node (one segment per vertebra) or a
  labelmap volume node (VerSe or TotalSegmentator numbering).
- X-ray: a single-slice scalar volume lying on its detector plane (see
  :func:`xray_ijk_to_ras`), so it shows where it was taken in the 3D view; its geometry
  (the ``spinereg-xray-geometry`` JSON) is kept in the node attribute
  ``SpineRegistration.Geometry``; its focal spot is a locked markups point (referenced
  from the X-ray node as ``spineregSource``).
- Per vertebra: a markups ROI box (from the segmentation, aligned with the CT axes,
  editable, read back as a voxel box by :func:`roi_box_ijk`), a linear transform node
  holding the registered pose (``matrixTransformToParent`` = ``matrix_ras``, CT RAS ->
  world) and a surface model of the vertebra placed under that transform (the moved
  segmentation in 3D).
- Per view: the DRR of the registered vertebrae as a volume on the X-ray's plane (same
  IJKToRAS as the X-ray) for blending over it in a slice view.
- A results table (vertebra, similarity, verdict, time).

Registration runs out of process (``SpineRegistrationProcess``): :func:`prepare_registration`
checks the inputs and writes them to a work folder, :class:`RegistrationRun` runs
``spinereg register`` and, only when it succeeds, :func:`apply_registration_result`
changes the scene. Any failure raises a ``ValueError`` (the library's ``InputError``) with
a one-line message, and leaves the scene as it was: nodes are only added inside
:class:`SceneChange` blocks, which remove whatever they added when something fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, arrayFromVTKMatrix, updateVolumeFromArray, vtkMatrixFromArray
from vtk.util import numpy_support

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry import XrayGeometry, geometry_from_dicom, load_geometry, save_geometry
from SpineRegistrationLib.io import Labelmap, read_labelmap, read_volume, read_xray, write_labelmap, write_volume
from SpineRegistrationLib.io import write_xray
from SpineRegistrationLib.io.jsonfile import read_json
from SpineRegistrationLib.labels import SCHEMES, canonical_name, guess_scheme_from_labels, sort_vertebrae
from SpineRegistrationLib.volume import Volume, bounding_box_ijk

from SpineRegistrationProcess import CliProcess

# ---------------------------------------------------------------------- node tagging
#: Node attribute names (all nodes this module makes carry ATTR_ROLE).
ATTR_ROLE = "SpineRegistration.Role"
ATTR_VIEW = "SpineRegistration.View"
ATTR_VERTEBRA = "SpineRegistration.Vertebra"
ATTR_GEOMETRY = "SpineRegistration.Geometry"
ATTR_GEOMETRY_FILE = "SpineRegistration.GeometryFile"

#: ATTR_ROLE values.
ROLE_XRAY, ROLE_SOURCE, ROLE_DRR = "xray", "source", "drr"
ROLE_ROI, ROLE_TRANSFORM, ROLE_MODEL, ROLE_TABLE, ROLE_DEFORMATION = (
    "roi", "transform", "model", "results-table", "deformation",
)
#: Nodes that hold a result (removed by :func:`reset_results`).
RESULT_ROLES = (ROLE_DRR, ROLE_TRANSFORM, ROLE_MODEL, ROLE_TABLE, ROLE_DEFORMATION)

#: Node reference roles from an X-ray node to its source point and its DRR.
REF_SOURCE, REF_DRR = "spineregSource", "spineregDRR"

#: Thickness given to the X-ray's single slice along the detector normal (mm). Only its
#: display in slice views depends on it (the slice plane must cut the slab).
XRAY_SLAB_MM = 1.0

#: Margin added around each vertebra's voxels for its ROI box (mm).
ROI_MARGIN_MM = 2.0

#: Files of the ``spinereg register`` output folder (DESIGN.md).
RESULT_FILE = "result.json"
RESULT_FORMAT = "spinereg-result"
VIEWS = ("AP", "LAT")

#: Registration methods and devices the CLI accepts ("auto" device: the CLI chooses).
METHODS = ("auto", "learned", "intensity")
DEVICES = ("auto", "cpu", "cuda")

#: Display colours of vertebra surfaces, by region (RGB in [0, 1]).
_REGION_COLOR = {"C": (0.95, 0.75, 0.35), "T": (0.55, 0.8, 0.95), "L": (0.95, 0.85, 0.55), "S": (0.8, 0.6, 0.9)}


# ---------------------------------------------------------------------- small helpers
def matrix_of(vtk_matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """vtkMatrix4x4 -> (4, 4) float64."""
    return np.array(arrayFromVTKMatrix(vtk_matrix), dtype=np.float64)


def ijk_to_ras_of(volume_node) -> np.ndarray:
    """(4, 4) IJKToRAS of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_of(matrix)


def transform_to_parent_of(transform_node) -> np.ndarray:
    """(4, 4) matrixTransformToParent of a linear transform node."""
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(matrix)
    return matrix_of(matrix)


def nodes_with(scene, role: str | None = None, **attributes: str) -> list:
    """Nodes of ``scene`` tagged with ATTR_ROLE ``role`` (any role if None) and the given
    attributes (keyword ``view`` -> ATTR_VIEW, ``vertebra`` -> ATTR_VERTEBRA)."""
    names = {"view": ATTR_VIEW, "vertebra": ATTR_VERTEBRA}
    wanted = {names.get(key, key): value for key, value in attributes.items()}
    found = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        node_role = node.GetAttribute(ATTR_ROLE)
        if node_role is None or (role is not None and node_role != role):
            continue
        if all(node.GetAttribute(key) == value for key, value in wanted.items()):
            found.append(node)
    return found


def _first(scene, role: str, **attributes: str):
    found = nodes_with(scene, role, **attributes)
    return found[0] if found else None


def _tag(node, role: str, **attributes: str) -> None:
    node.SetAttribute(ATTR_ROLE, role)
    if "view" in attributes:
        node.SetAttribute(ATTR_VIEW, attributes["view"])
    if "vertebra" in attributes:
        node.SetAttribute(ATTR_VERTEBRA, attributes["vertebra"])


def _require_untransformed(node, what: str) -> None:
    """The Logic reads voxel geometry straight from IJKToRAS: a parent transform would be ignored."""
    if node.GetParentTransformNode() is not None:
        raise InputError(
            f"the {what} {node.GetName()!r} is under the transform {node.GetParentTransformNode().GetName()!r}; "
            "harden or remove that transform first"
        )


class SceneChange:
    """All-or-nothing scene edits.

    Nodes added to the scene inside the ``with`` block (display and storage nodes
    included) are removed again when the block raises, so a failure leaves the scene
    as it was. Edits of nodes that existed before are not undone: do every check and
    every file read before the block and only node creation and assignment inside it.
    """

    def __init__(self, scene) -> None:
        self.scene = scene
        self._before: set[str] = set()

    def __enter__(self) -> SceneChange:
        self._before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            added = [
                self.scene.GetNthNode(i).GetID()
                for i in range(self.scene.GetNumberOfNodes())
                if self.scene.GetNthNode(i).GetID() not in self._before
            ]
            for node_id in reversed(added):
                node = self.scene.GetNodeByID(node_id)
                if node is not None:
                    self.scene.RemoveNode(node)
        return False

    def add(self, node, name: str | None = None, display: bool = True):
        """Add ``node`` (with a unique ``name``) and its default display nodes."""
        if name is not None:
            node.SetName(self.scene.GenerateUniqueName(name))
        self.scene.AddNode(node)
        if display and hasattr(node, "CreateDefaultDisplayNodes"):
            node.CreateDefaultDisplayNodes()
        return node


# ---------------------------------------------------------------------- volumes
def _volume_of(node) -> Volume:
    """A volume node's voxels and IJKToRAS as a library Volume (array (K, J, I), copied)."""
    if node is None or node.GetImageData() is None:
        raise InputError(f"volume {node.GetName() if node else None!r} holds no image data")
    return Volume(np.array(arrayFromVolume(node)), ijk_to_ras_of(node))


def _fill_volume_node(node, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    if array.dtype == np.int64:
        array = array.astype(np.int32)  # VTK 'long long' volumes do not display (slicer.util refuses them)
    node.SetIJKToRASMatrix(vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=np.float64)))
    updateVolumeFromArray(node, np.ascontiguousarray(array))


def add_volume_node(scene, volume: Volume, name: str, labelmap: bool = False):
    """A new scalar (or labelmap) volume node holding ``volume``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    _fill_volume_node(node, volume.array, volume.ijk_to_ras)
    with SceneChange(scene) as change:
        change.add(node, name)
    return node


def load_ct(scene, path: str | os.PathLike, name: str = "CT"):
    """Read a CT (NIfTI, NRRD, MHA, DICOM folder) into a new scalar volume node.

    Files are read by the library (SimpleITK, LPS -> RAS at the boundary), since slicer-core
    has no IO manager; inside Slicer, ``slicer.util.loadVolume`` gives the same node.
    """
    return add_volume_node(scene, read_volume(path), name)


def load_segmentation(scene, path: str | os.PathLike, name: str = "Segmentation", as_labelmap: bool = False):
    """Read a vertebra labelmap or .seg.nrrd into a segmentation node (one segment per
    vertebra, named L1, T12, ...) or, with ``as_labelmap``, a labelmap volume node."""
    labelmap = read_labelmap(path)
    if as_labelmap:
        return add_volume_node(scene, labelmap.volume, name, labelmap=True)
    return add_segmentation_node(scene, labelmap, name)


def _region_color(name: str) -> tuple[float, float, float]:
    base = _REGION_COLOR.get(name[:1], (0.8, 0.8, 0.8))
    scale = 1.0 if name[1:].isdigit() and int(name[1:]) % 2 else 0.8
    return tuple(c * scale for c in base)


def add_segmentation_node(scene, labelmap: Labelmap, name: str = "Segmentation"):
    """A segmentation node with one binary-labelmap segment per vertebra of ``labelmap``."""
    segmentation_node = slicer.vtkMRMLSegmentationNode()
    segmentation_node.SetSourceRepresentationToBinaryLabelmap()
    array = labelmap.volume.array
    # The grid segments are rasterised on by default (Slicer sets it from the "master" volume).
    geometry = slicer.vtkOrientedImageData()
    geometry.SetImageToWorldMatrix(vtkMatrixFromArray(labelmap.volume.ijk_to_ras))
    geometry.SetExtent(0, array.shape[2] - 1, 0, array.shape[1] - 1, 0, array.shape[0] - 1)
    segmentation_node.GetSegmentation().SetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
        slicer.vtkSegmentationConverter.SerializeImageGeometry(geometry),
    )
    for vertebra, value in labelmap.labels.items():
        mask = array == value
        start, stop = bounding_box_ijk(mask)
        crop = mask[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]]
        image = slicer.vtkOrientedImageData()
        image.SetExtent(start[0], stop[0] - 1, start[1], stop[1] - 1, start[2], stop[2] - 1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.SetImageToWorldMatrix(vtkMatrixFromArray(labelmap.volume.ijk_to_ras))
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = crop.astype(np.uint8).ravel()
        segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(image, vertebra, _region_color(vertebra))
    with SceneChange(scene) as change:
        change.add(segmentation_node, name)
    return segmentation_node


# ---------------------------------------------------------------------- vertebrae
def vertebra_labelmap(segmentation_node, reference_node=None) -> Labelmap:
    """The vertebra labelmap a segmentation or labelmap node holds (library Labelmap, VerSe numbering
    for segmentation nodes; the node's own numbering, auto-detected, for labelmap nodes).

    reference_node: a volume whose grid a segmentation node is rasterised on (the CT);
    default: the segmentation's own labelmap geometry.
    Raises InputError when the node holds no vertebra (no segment named like L1, or no
    label value of a known scheme).
    """
    if segmentation_node is None:
        raise InputError("no segmentation selected: choose a segmentation or a labelmap of the vertebrae")
    name = segmentation_node.GetName()
    _require_untransformed(segmentation_node, "segmentation")
    if segmentation_node.IsA("vtkMRMLLabelMapVolumeNode"):
        volume = _volume_of(segmentation_node)
        if not np.issubdtype(volume.array.dtype, np.integer):
            volume = volume.with_array(np.round(volume.array).astype(np.int32))
        values = [int(v) for v in np.unique(volume.array) if v != 0]
        labelmap = Labelmap(volume, guess_scheme_from_labels(values))
    elif segmentation_node.IsA("vtkMRMLSegmentationNode"):
        labelmap = _labelmap_from_segments(segmentation_node, reference_node)
    else:
        raise InputError(f"{name!r} is a {segmentation_node.GetClassName()}; expected a segmentation or labelmap node")
    if not labelmap.labels:
        raise InputError(
            f"segmentation {name!r} has no vertebra labels: name segments like L1, T12 or vertebrae_L1, "
            "or use VerSe / TotalSegmentator label values"
        )
    return labelmap


def _labelmap_from_segments(segmentation_node, reference_node) -> Labelmap:
    """Rasterise the vertebra segments of a segmentation node into one VerSe-numbered labelmap."""
    verse = SCHEMES["verse"]
    segmentation = segmentation_node.GetSegmentation()
    segment_ids = vtk.vtkStringArray()
    label_values = vtk.vtkIntArray()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        vertebra = canonical_name(segmentation.GetSegment(segment_id).GetName())
        if vertebra in verse.label_of:
            segment_ids.InsertNextValue(segment_id)
            label_values.InsertNextValue(verse.label_of[vertebra])
    empty = Labelmap(Volume(np.zeros((1, 1, 1), np.int16), np.eye(4)), verse)
    if segment_ids.GetNumberOfValues() == 0:
        return empty
    if not segmentation.ContainsRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()):
        segmentation_node.CreateBinaryLabelmapRepresentation()  # e.g. segments made from models
    merged = slicer.vtkOrientedImageData()
    reference = None
    if reference_node is not None:
        _require_untransformed(reference_node, "CT")
        reference = slicer.vtkOrientedImageData()
        reference.SetImageToWorldMatrix(vtkMatrixFromArray(ijk_to_ras_of(reference_node)))
        reference.SetExtent(reference_node.GetImageData().GetExtent())
    if not segmentation_node.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY if reference else slicer.vtkSegmentation.EXTENT_UNION_OF_SEGMENTS,
        reference, segment_ids, label_values,
    ):
        raise InputError(f"cannot rasterise the segments of {segmentation_node.GetName()!r} into a labelmap")
    extent = merged.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(dims) <= 0:
        return empty
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(dims[::-1]).astype(np.int16)
    image_to_world = vtk.vtkMatrix4x4()
    merged.GetImageToWorldMatrix(image_to_world)
    ijk_to_ras = matrix_of(image_to_world)
    ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ np.array(extent[::2], float) + ijk_to_ras[:3, 3]  # extent start -> index 0
    return Labelmap(Volume(array, ijk_to_ras), verse)


def vertebra_names(segmentation_node) -> list[str]:
    """Vertebrae of a segmentation or labelmap node, cranial -> caudal ([] if none or no node).

    Cheap for segmentation nodes (segment names only, no rasterising).
    """
    if segmentation_node is None:
        return []
    if segmentation_node.IsA("vtkMRMLSegmentationNode"):
        segmentation = segmentation_node.GetSegmentation()
        names = {
            canonical_name(segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName())
            for i in range(segmentation.GetNumberOfSegments())
        }
        return sort_vertebrae(name for name in names if name)
    try:
        return list(vertebra_labelmap(segmentation_node).labels)
    except InputError:
        return []


# ---------------------------------------------------------------------- X-rays
def xray_ijk_to_ras(geometry: XrayGeometry, slab_mm: float = XRAY_SLAB_MM) -> np.ndarray:
    """IJKToRAS (4, 4) of the single-slice volume that puts an X-ray on its detector plane.

    The X-ray array (rows, cols) becomes the volume (K=1, J=rows, I=cols), so voxel
    (i, j, 0) is pixel (column i, row j) and must sit at
    ``detector_origin + i*du*u + j*dv*v`` (DESIGN.md): the I column is ``du * u``, the J
    column ``dv * v``, the origin ``detector_origin``. The K column is ``slab_mm`` along
    ``u x v``, which makes the matrix right-handed (det > 0); for the presets it points
    back toward the source. The slice (k = 0) is exactly the detector plane.
    """
    du, dv = geometry.pixel_spacing
    normal = np.cross(geometry.detector_u, geometry.detector_v)
    normal /= np.linalg.norm(normal)
    matrix = np.eye(4)
    matrix[:3, 0] = du * geometry.detector_u
    matrix[:3, 1] = dv * geometry.detector_v
    matrix[:3, 2] = slab_mm * normal
    matrix[:3, 3] = geometry.detector_origin
    return matrix


def read_geometry_file(path: str | os.PathLike) -> XrayGeometry:
    """A geometry from a ``spinereg-xray-geometry`` JSON sidecar or from a DICOM X-ray's tags."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return load_geometry(path)
    return geometry_from_dicom(path)


def geometry_of(xray_node) -> XrayGeometry | None:
    """The geometry attached to an X-ray node, or None."""
    text = xray_node.GetAttribute(ATTR_GEOMETRY) if xray_node is not None else None
    if not text:
        return None
    try:
        return XrayGeometry.from_json_dict(json.loads(text))
    except (ValueError, json.JSONDecodeError) as error:
        raise InputError(f"X-ray {xray_node.GetName()!r} carries a bad geometry attribute: {error}") from None


def source_node_of(xray_node):
    """The markups point of an X-ray's focal spot, or None."""
    return xray_node.GetNodeReference(REF_SOURCE) if xray_node is not None else None


def drr_node_of(xray_node):
    """The DRR volume shown over an X-ray, or None."""
    return xray_node.GetNodeReference(REF_DRR) if xray_node is not None else None


def _xray_size(xray_node) -> tuple[int, int]:
    """(columns, rows) of an X-ray node; InputError unless it is a single 2D slice."""
    image = xray_node.GetImageData() if xray_node is not None else None
    if image is None:
        raise InputError(f"X-ray {xray_node.GetName() if xray_node else None!r} holds no image data")
    cols, rows, slices = image.GetDimensions()
    if slices != 1:
        raise InputError(f"{xray_node.GetName()!r} is a 3D volume ({slices} slices); an X-ray must be a single 2D image")
    return cols, rows


#: X-ray display window (percentiles of the exposed field: pixels above its 5th percentile):
#: soft tissue in the lower part of the grey range, bone bright. A starting point; the user
#: changes it as for any volume (left-drag in the slice view).
XRAY_WINDOW_PERCENTILES = (60.0, 99.9)


def xray_window(array: np.ndarray) -> tuple[float, float]:
    """(min, max) display window of an X-ray (see XRAY_WINDOW_PERCENTILES)."""
    values = np.asarray(array, dtype=np.float64).ravel()
    field = values[values > np.percentile(values, 5.0)]
    if field.size == 0:
        field = values
    low, high = np.percentile(field, XRAY_WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def attach_geometry(scene, xray_node, geometry: XrayGeometry, view: str, geometry_file: str | None = None):
    """Place an X-ray volume node on its detector plane and give it its focal spot.

    Sets the node's IJKToRAS to :func:`xray_ijk_to_ras`, stores the geometry (JSON) and
    the view name in node attributes, and creates (or moves) the source markups point.
    Raises InputError, changing nothing, when the image size differs from the geometry's.
    Returns the source markups node.
    """
    view = _check_view(view)
    cols, rows = _xray_size(xray_node)
    if tuple(geometry.size) != (cols, rows):
        raise InputError(
            f"X-ray {xray_node.GetName()!r} is {cols} x {rows} pixels but its geometry says "
            f"{geometry.size[0]} x {geometry.size[1]} (columns x rows)"
        )
    _require_untransformed(xray_node, "X-ray")
    with SceneChange(scene) as change:
        source = source_node_of(xray_node)
        if source is None:
            source = change.add(slicer.vtkMRMLMarkupsFiducialNode(), f"{view} source")
            _tag(source, ROLE_SOURCE, view=view)
            source.AddControlPoint(vtk.vtkVector3d(*geometry.source), f"{view} source")
            source.SetLocked(True)
            display = source.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(1.0, 0.85, 0.2)
                display.SetGlyphScale(4.0)
        else:
            source.SetNthControlPointPosition(0, *geometry.source)
            if source.GetAttribute(ATTR_VIEW) != view:  # the same image re-attached as the other view
                _tag(source, ROLE_SOURCE, view=view)
                source.SetName(scene.GenerateUniqueName(f"{view} source"))
                source.SetNthControlPointLabel(0, f"{view} source")
        xray_node.SetIJKToRASMatrix(vtkMatrixFromArray(xray_ijk_to_ras(geometry)))
        _tag(xray_node, ROLE_XRAY, view=view)
        xray_node.SetAttribute(ATTR_GEOMETRY, json.dumps(geometry.to_json_dict()))
        if geometry_file:
            xray_node.SetAttribute(ATTR_GEOMETRY_FILE, str(geometry_file))
        xray_node.SetNodeReferenceID(REF_SOURCE, source.GetID())
        if xray_node.GetDisplayNode() is None:
            xray_node.CreateDefaultDisplayNodes()
        display = xray_node.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(*xray_window(arrayFromVolume(xray_node)))
        xray_node.Modified()
    return source


def load_xray(scene, image_path, geometry_path=None, view: str = "AP", invert: bool = False, name: str | None = None):
    """Read an X-ray and its geometry into a single-slice volume on the detector plane.

    geometry_path: the JSON sidecar, or a DICOM file to read the geometry tags from;
    default: the image itself when it is DICOM. Raises InputError (scene unchanged) for
    an unreadable file, a missing geometry or a size mismatch. Returns the volume node.
    """
    view = _check_view(view)
    if geometry_path is None:
        if str(image_path).lower().endswith((".png", ".tif", ".tiff", ".jpg", ".jpeg", ".nrrd", ".mha", ".nii", ".nii.gz")):
            raise InputError(f"X-ray {image_path} has no geometry: give its geometry JSON (or load a DICOM X-ray)")
        geometry_path = image_path
    geometry = read_geometry_file(geometry_path)
    image = read_xray(image_path, geometry, invert=invert)
    node = slicer.vtkMRMLScalarVolumeNode()
    _fill_volume_node(node, image.array[None], xray_ijk_to_ras(geometry))
    with SceneChange(scene) as change:
        change.add(node, name or f"{view} X-ray")
        attach_geometry(scene, node, geometry, view, str(geometry_path))
    return node


def _check_view(view: str) -> str:
    view = str(view).upper()
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    return view


# ---------------------------------------------------------------------- ROI boxes
def _box_from_voxels(ijk_to_ras: np.ndarray, start_ijk, stop_ijk, margin_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(object_to_node (4, 4), size (3,) mm) of the box around voxels start..stop-1, oriented
    with the voxel axes, enclosing whole voxels plus ``margin_mm``."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axes = ijk_to_ras[:3, :3] / spacing
    if np.linalg.det(axes) < 0:
        axes[:, 2] *= -1.0  # a box is symmetric: flip one axis so the orientation is a rotation
    center_ijk = (np.asarray(start_ijk, float) + np.asarray(stop_ijk, float) - 1.0) / 2.0
    center_ras = ijk_to_ras[:3, :3] @ center_ijk + ijk_to_ras[:3, 3]
    size_mm = (np.asarray(stop_ijk, float) - np.asarray(start_ijk, float)) * spacing + 2.0 * margin_mm
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = center_ras
    return object_to_node, size_mm


def create_vertebra_rois(scene, segmentation_node, reference_node=None, vertebrae=None, margin_mm: float = ROI_MARGIN_MM) -> dict:
    """One markups ROI box per vertebra, enclosing its voxels (+ ``margin_mm``), aligned with
    the segmentation's voxel axes (the CT's). An existing box of the same vertebra is reset.

    Returns vertebra name -> vtkMRMLMarkupsROINode.
    """
    labelmap = vertebra_labelmap(segmentation_node, reference_node)
    names = _check_vertebrae(vertebrae, labelmap)
    boxes = {}
    for name in names:
        start, stop = bounding_box_ijk(labelmap.volume.array == labelmap.labels[name])
        boxes[name] = _box_from_voxels(labelmap.volume.ijk_to_ras, start, stop, margin_mm)
    rois = {}
    with SceneChange(scene) as change:
        for name, (object_to_node, size_mm) in boxes.items():
            roi = _first(scene, ROLE_ROI, vertebra=name)
            if roi is None:
                roi = change.add(slicer.vtkMRMLMarkupsROINode(), f"{name} box")
                _tag(roi, ROLE_ROI, vertebra=name)
                display = roi.GetDisplayNode()
                if display is not None:
                    display.SetSelectedColor(*_region_color(name))
                    display.SetFillOpacity(0.05)
            roi.SetAndObserveObjectToNodeMatrix(vtkMatrixFromArray(object_to_node))
            roi.SetSize(*size_mm)
            rois[name] = roi
    return rois


def roi_box_ijk(roi_node, volume_node) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of ``volume_node`` whose centres lie in the ROI box (world coordinates,
    parent transforms of the ROI included) as (start_ijk, stop_ijk), stop exclusive, clipped
    to the volume; the form :func:`SpineRegistrationLib.volume.bounding_box_ijk` returns.

    Raises InputError when the box misses the volume.
    """
    _require_untransformed(volume_node, "volume")
    object_to_world = roi_node.GetObjectToWorldMatrix()
    half = np.array(roi_node.GetSize(), float) / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * half
    world = corners @ matrix_of(object_to_world)[:3, :3].T + matrix_of(object_to_world)[:3, 3]
    ras_to_ijk = np.linalg.inv(ijk_to_ras_of(volume_node))
    ijk = world @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]
    shape_ijk = np.array(volume_node.GetImageData().GetDimensions())
    start = np.maximum(np.ceil(ijk.min(axis=0) - 1e-6).astype(int), 0)
    stop = np.minimum(np.floor(ijk.max(axis=0) + 1e-6).astype(int) + 1, shape_ijk)
    if np.any(stop <= start):
        raise InputError(f"ROI {roi_node.GetName()!r} does not overlap the volume {volume_node.GetName()!r}")
    return start, stop


def _check_vertebrae(vertebrae, labelmap: Labelmap) -> list[str]:
    """Requested names (any spelling) -> canonical names present in ``labelmap``; all if none asked."""
    if not vertebrae:
        return list(labelmap.labels)
    names = []
    for text in vertebrae:
        name = canonical_name(text)
        if name is None or name not in labelmap.labels:
            present = ", ".join(labelmap.labels) or "none"
            raise InputError(f"vertebra {text!r} is not in the segmentation; present: {present}")
        if name not in names:
            names.append(name)
    return sort_vertebrae(names)


# ---------------------------------------------------------------------- registration inputs
@dataclass
class RegistrationInputs:
    """What the user chose in the module.

    xrays: view name ("AP", "LAT") -> X-ray volume node with attached geometry.
    vertebrae: names to register; empty: every vertebra both views see.
    method: one of METHODS; device: one of DEVICES ("auto": the CLI's default).
    """

    ct_node: object
    segmentation_node: object
    xrays: dict
    vertebrae: list = field(default_factory=list)
    method: str = "auto"
    device: str = "auto"


@dataclass
class CheckedInputs:
    """Inputs that passed :func:`check_inputs`: the library objects the CLI will get."""

    ct: Volume
    labelmap: Labelmap
    vertebrae: list
    geometries: dict
    xray_arrays: dict


def check_inputs(inputs: RegistrationInputs) -> CheckedInputs:
    """Validate the user's inputs; InputError (one line, naming what is wrong) otherwise.

    Checks: CT, segmentation and both X-rays chosen; each X-ray has a geometry matching
    its size; the segmentation has vertebra labels and lies on the CT; each requested
    vertebra's centre (at the CT pose) projects inside every X-ray, i.e. the CT and the
    X-rays overlap. With no vertebra requested, takes those every view sees.
    """
    if inputs.ct_node is None:
        raise InputError("no CT selected")
    _require_untransformed(inputs.ct_node, "CT")
    missing = [view for view in VIEWS if inputs.xrays.get(view) is None]
    if missing:
        raise InputError(f"no {' and '.join(missing)} X-ray selected")
    if inputs.method not in METHODS:
        raise InputError(f"unknown method {inputs.method!r}; expected one of {', '.join(METHODS)}")
    if inputs.device not in DEVICES:
        raise InputError(f"unknown device {inputs.device!r}; expected one of {', '.join(DEVICES)}")
    ct = _volume_of(inputs.ct_node)
    geometries, arrays = {}, {}
    for view in VIEWS:
        node = inputs.xrays[view]
        geometry = geometry_of(node)
        if geometry is None:
            raise InputError(f"the {view} X-ray {node.GetName()!r} has no geometry: load its geometry file (JSON or DICOM)")
        cols, rows = _xray_size(node)
        if tuple(geometry.size) != (cols, rows):
            raise InputError(
                f"the {view} X-ray {node.GetName()!r} is {cols} x {rows} pixels but its geometry says "
                f"{geometry.size[0]} x {geometry.size[1]}"
            )
        geometries[view] = geometry
        arrays[view] = np.array(arrayFromVolume(node)[0], dtype=np.float32)
        if arrays[view].max() == arrays[view].min():
            raise InputError(f"the {view} X-ray {node.GetName()!r} is a constant image")
    labelmap = vertebra_labelmap(inputs.segmentation_node, inputs.ct_node)
    centroids = _centroids(labelmap)
    low, high = ct.bounds_ras()
    slack = ct.spacing_mm.max()
    off_ct = [n for n, c in centroids.items() if np.any(c < low - slack) or np.any(c > high + slack)]
    if off_ct:
        raise InputError(f"the segmentation does not lie on the CT: {', '.join(off_ct)} outside the CT's extent")
    if inputs.vertebrae:
        names = _check_vertebrae(inputs.vertebrae, labelmap)
        for name in names:
            for view, geometry in geometries.items():
                if not geometry.sees(centroids[name][None])[0]:
                    raise InputError(
                        f"{name} projects outside the {view} X-ray: the CT and the X-ray do not overlap "
                        f"(check the {view} geometry file)"
                    )
    else:
        names = [n for n in labelmap.labels if all(g.sees(centroids[n][None])[0] for g in geometries.values())]
        if not names:
            raise InputError(
                "the CT and the X-rays do not overlap: no vertebra of the segmentation projects inside both X-rays "
                "(check the geometry files)"
            )
    return CheckedInputs(ct, labelmap, names, geometries, arrays)


def _centroids(labelmap: Labelmap) -> dict[str, np.ndarray]:
    from SpineRegistrationLib.io import centroids_ras

    return centroids_ras(labelmap)


def _as_verse(labelmap: Labelmap) -> Labelmap:
    """The same labelmap numbered VerSe's way (the CLI's auto-detection then cannot misread it)."""
    verse = SCHEMES["verse"]
    if labelmap.scheme.name == "verse":
        return labelmap
    array = np.zeros(labelmap.volume.array.shape, np.int16)
    for name, value in labelmap.labels.items():
        if name in verse.label_of:
            array[labelmap.volume.array == value] = verse.label_of[name]
    return Labelmap(labelmap.volume.with_array(array), verse)


def write_registration_inputs(checked: CheckedInputs, folder: str | os.PathLike) -> dict[str, Path]:
    """Write the checked inputs as the files ``spinereg register`` reads: ct.nii.gz,
    seg.nii.gz (VerSe numbering), <view>.nrrd (float32, values kept) and <view>.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / "ct.nii.gz", "seg": folder / "seg.nii.gz"}
    write_volume(checked.ct, paths["ct"])
    write_labelmap(_as_verse(checked.labelmap), paths["seg"])
    for view in VIEWS:
        paths[view] = folder / f"{view}.nrrd"
        paths[f"{view}_geometry"] = folder / f"{view}.json"
        write_xray(checked.xray_arrays[view], paths[view])
        save_geometry(checked.geometries[view], paths[f"{view}_geometry"])
    return paths


def register_arguments(paths: dict, vertebrae: list, method: str, device: str, out_dir) -> list[str]:
    """The ``spinereg register`` arguments (without the program name) for files from
    :func:`write_registration_inputs`."""
    args = ["register", "--ct", str(paths["ct"]), "--seg", str(paths["seg"])]
    for name in vertebrae:
        args += ["--vertebra", name]
    for view in VIEWS:
        args += ["--xray", str(paths[view]), "--geometry", str(paths[f"{view}_geometry"])]
    args += ["--method", method]
    if device != "auto":
        args += ["--device", device]
    args += ["--out", str(out_dir)]
    return args


def prepare_registration(inputs: RegistrationInputs, work_dir: str | os.PathLike | None = None) -> tuple[CheckedInputs, list[str], Path, Path]:
    """Check the inputs, write them to a new work folder and build the command line.

    Returns (checked inputs, ``spinereg`` arguments, work folder, output folder). The work
    folder is new (under ``work_dir`` or the system's temporary folder); the caller owns
    it (:class:`RegistrationRun` removes it). Raises InputError before writing anything
    when the inputs are bad.
    """
    checked = check_inputs(inputs)
    work = Path(tempfile.mkdtemp(prefix="spinereg-", dir=work_dir))
    try:
        paths = write_registration_inputs(checked, work / "input")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    out_dir = work / "output"
    args = register_arguments(paths, checked.vertebrae, inputs.method, inputs.device, out_dir)
    return checked, args, work, out_dir


# ---------------------------------------------------------------------- results
@dataclass
class VertebraResult:
    name: str
    matrix_ras: np.ndarray
    similarity: float | None = None
    verdict: str = ""
    time_s: float | None = None
    params: dict = field(default_factory=dict)


@dataclass
class RegistrationResult:
    """A ``spinereg register`` output folder, read and checked (nothing in the scene yet)."""

    vertebrae: dict
    drrs: dict
    info: dict


def _read_itk_transform_with_mrml(path: Path) -> np.ndarray:
    """matrixTransformToParent of an ITK transform file, read by Slicer's own
    vtkMRMLTransformStorageNode in a private scene (so the user's scene gets no storage node
    pointing at a temporary file)."""
    scratch = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLLinearTransformNode()
    scratch.AddNode(node)
    storage = slicer.vtkMRMLTransformStorageNode()
    scratch.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise InputError(f"cannot read the transform {path.name} (not a linear ITK transform)")
    return transform_to_parent_of(node)


def _read_image_with_mrml(path: Path) -> np.ndarray:
    """Voxels of an image file read by Slicer's vtkMRMLVolumeArchetypeStorageNode (in a private
    scene), squeezed: a 2D image comes back (rows, columns)."""
    scratch = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLScalarVolumeNode()
    scratch.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scratch.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise InputError(f"cannot read the image {path.name}")
    return np.squeeze(np.array(arrayFromVolume(node), dtype=np.float32))


def read_registration_result(out_dir: str | os.PathLike, xray_sizes: dict | None = None) -> RegistrationResult:
    """Read ``result.json``, one ``<name>.h5`` per vertebra and ``drr_<view>.nrrd`` per view.

    xray_sizes: view -> (columns, rows) the DRRs must have. Raises InputError (one line)
    for a missing or inconsistent file.
    """
    out_dir = Path(out_dir)
    result_path = out_dir / RESULT_FILE
    info = read_json(result_path, RESULT_FORMAT)
    if not isinstance(info, dict) or info.get("format") not in (RESULT_FORMAT, None) or not isinstance(info.get("vertebrae"), dict):
        raise InputError(f"{result_path.name} is not a {RESULT_FORMAT} file (no 'vertebrae' object)")
    if not info["vertebrae"]:
        raise InputError(f"{result_path.name} holds no vertebra")
    vertebrae = {}
    for name, entry in info["vertebrae"].items():
        transform_path = out_dir / f"{name}.h5"
        if not transform_path.is_file():
            raise InputError(f"the registration wrote no transform file {transform_path.name}")
        matrix = _read_itk_transform_with_mrml(transform_path)
        if isinstance(entry, dict) and "matrix_ras" in entry:
            stated = np.asarray(entry["matrix_ras"], dtype=np.float64)
            if stated.shape != (4, 4) or not np.allclose(stated, matrix, atol=1e-3):
                raise InputError(f"{name}.h5 and {RESULT_FILE} disagree on the pose of {name}")
        entry = entry if isinstance(entry, dict) else {}
        vertebrae[name] = VertebraResult(
            name=name,
            matrix_ras=matrix,
            similarity=_float_or_none(entry.get("similarity")),
            verdict=str(entry.get("verdict", "")),
            time_s=_float_or_none(entry.get("time_s")),
            params=dict(entry.get("params") or {}),
        )
    drrs = {}
    for view in VIEWS:
        path = out_dir / f"drr_{view}.nrrd"
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
    return RegistrationResult(vertebrae, drrs, info)


def _float_or_none(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


#: Windowed-sinc pass band of vertebra surfaces (Slicer's segmentation smoothing factor 0.5).
SURFACE_PASS_BAND = 0.01


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


def apply_registration_result(scene, result: RegistrationResult, xrays: dict, labelmap: Labelmap | None = None) -> dict:
    """Put a read registration result into the scene (or update a previous one).

    Per vertebra: a linear transform node ``<name> registration`` with
    matrixTransformToParent = matrix_ras, and (with ``labelmap``) the vertebra's surface
    model under it. Per view with a DRR: a volume ``<view> DRR`` with the X-ray's
    IJKToRAS, referenced from the X-ray node. Plus the results table. Nodes of an earlier
    run are updated in place. Returns {"transforms": {...}, "models": {...}, "drrs": {...},
    "table": node}.
    """
    # Everything that can fail on bad input happens before the scene changes.
    for view in result.drrs:
        if xrays.get(view) is None:
            raise InputError(f"the result has a {view} DRR but no {view} X-ray is selected")
        cols, rows = _xray_size(xrays[view])
        if result.drrs[view].shape != (rows, cols):
            raise InputError(f"the {view} DRR is {result.drrs[view].shape[1]} x {result.drrs[view].shape[0]} pixels, the X-ray {cols} x {rows}")
    surfaces = {}
    if labelmap is not None:
        surfaces = {name: vertebra_surface(labelmap, name) for name in result.vertebrae if name in labelmap.labels}
    created = {"transforms": {}, "models": {}, "drrs": {}, "table": None}
    with SceneChange(scene) as change:
        for name, vertebra in result.vertebrae.items():
            transform = _first(scene, ROLE_TRANSFORM, vertebra=name)
            if transform is None:
                transform = change.add(slicer.vtkMRMLLinearTransformNode(), f"{name} registration", display=False)
                _tag(transform, ROLE_TRANSFORM, vertebra=name)
            transform.SetMatrixTransformToParent(vtkMatrixFromArray(vertebra.matrix_ras))
            created["transforms"][name] = transform
            if name in surfaces:
                model = _first(scene, ROLE_MODEL, vertebra=name)
                if model is None:
                    model = change.add(slicer.vtkMRMLModelNode(), f"{name} registered")
                    _tag(model, ROLE_MODEL, vertebra=name)
                    display = model.GetDisplayNode()
                    if display is not None:
                        display.SetColor(*_region_color(name))
                        display.SetVisibility2D(True)
                        display.SetSliceIntersectionThickness(2)
                model.SetAndObservePolyData(surfaces[name])
                model.SetAndObserveTransformNodeID(transform.GetID())
                created["models"][name] = model
        for view, array in result.drrs.items():
            xray = xrays[view]
            drr = drr_node_of(xray)
            if drr is None:
                drr = slicer.vtkMRMLScalarVolumeNode()
                _fill_volume_node(drr, array[None], ijk_to_ras_of(xray))
                change.add(drr, f"{view} DRR")
                _tag(drr, ROLE_DRR, view=view)
                xray.SetNodeReferenceID(REF_DRR, drr.GetID())
            else:
                _fill_volume_node(drr, array[None], ijk_to_ras_of(xray))
            _style_drr(drr, array, _drr_color_node(scene, change))
            created["drrs"][view] = drr
        created["table"] = _update_results_table(scene, change, result)
    return created


#: Name of the colour table the DRRs are shown with (black -> green, made once per scene).
DRR_COLOR_NAME = "SpineRegistration DRR"

#: RGB of the brightest DRR value, and the brightness of the faintest shown one.
DRR_GREEN = (0.15, 1.0, 0.25)
DRR_GREEN_FLOOR = 0.35

#: Fraction of a DRR's high value (99th percentile of its positive pixels) below which it is
#: transparent, so the X-ray shows unchanged wherever no registered vertebra projects.
DRR_TRANSPARENT_BELOW = 0.05


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


def _update_results_table(scene, change: SceneChange, result: RegistrationResult):
    table_node = _first(scene, ROLE_TABLE)
    if table_node is None:
        table_node = change.add(slicer.vtkMRMLTableNode(), "SpineRegistration results", display=False)
        _tag(table_node, ROLE_TABLE)
    columns = {
        "Vertebra": vtk.vtkStringArray(),
        "Similarity": vtk.vtkDoubleArray(),
        "Verdict": vtk.vtkStringArray(),
        "Time (s)": vtk.vtkDoubleArray(),
    }
    for title, array in columns.items():
        array.SetName(title)
    for name, vertebra in result.vertebrae.items():
        columns["Vertebra"].InsertNextValue(name)
        columns["Similarity"].InsertNextValue(np.nan if vertebra.similarity is None else vertebra.similarity)
        columns["Verdict"].InsertNextValue(vertebra.verdict)
        columns["Time (s)"].InsertNextValue(np.nan if vertebra.time_s is None else vertebra.time_s)
    table = vtk.vtkTable()
    for array in columns.values():
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)
    table_node.SetLocked(True)
    return table_node


def results_table_rows(table_node) -> list[tuple]:
    """The rows of a results table as (vertebra, similarity, verdict, time_s) tuples."""
    table = table_node.GetTable()
    return [
        tuple(table.GetValue(row, col).ToString() if col in (0, 2) else table.GetValue(row, col).ToDouble()
              for col in range(4))
        for row in range(table.GetNumberOfRows())
    ]


def reset_results(scene) -> int:
    """Remove every result node this module made (transforms, moved surfaces, DRRs, table,
    deformation). Inputs, X-rays, sources and ROI boxes stay. Returns how many were removed."""
    removed = 0
    for node in nodes_with(scene):
        if node.GetAttribute(ATTR_ROLE) in RESULT_ROLES and scene.IsNodePresent(node):
            scene.RemoveNode(node)
            removed += 1
    return removed


def apply_deformation(scene, transform_path: str | os.PathLike, nodes: list, name: str = "Deformation"):
    """Load a deformable (grid / B-spline / displacement-field) transform file written by
    ``spinereg deform`` and put ``nodes`` (CT, segmentation) under it.

    Read by Slicer's vtkMRMLTransformStorageNode in a private scene first, so a bad file
    raises InputError with the scene unchanged. An earlier deformation node is replaced.
    """
    path = Path(transform_path)
    if not path.is_file():
        raise InputError(f"deformation file not found: {path}")
    scratch = slicer.vtkMRMLScene()
    loaded = slicer.vtkMRMLTransformNode()
    scratch.AddNode(loaded)
    storage = slicer.vtkMRMLTransformStorageNode()
    scratch.AddNode(storage)
    storage.SetFileName(str(path))
    if not storage.ReadData(loaded) or loaded.GetTransformToParent() is None:
        raise InputError(f"cannot read the deformation {path.name} as a transform")
    for node in nodes:
        if node is not None and node.GetParentTransformNode() is not None and node.GetParentTransformNode().GetAttribute(ATTR_ROLE) != ROLE_DEFORMATION:
            raise InputError(f"{node.GetName()!r} is already under the transform {node.GetParentTransformNode().GetName()!r}")
    for old in nodes_with(scene, ROLE_DEFORMATION):
        scene.RemoveNode(old)
    with SceneChange(scene) as change:
        deformation = change.add(slicer.vtkMRMLTransformNode(), name, display=False)
        _tag(deformation, ROLE_DEFORMATION)
        deformation.SetAndObserveTransformToParent(loaded.GetTransformToParent())
        for node in nodes:
            if node is not None:
                node.SetAndObserveTransformNodeID(deformation.GetID())
    return deformation


# ---------------------------------------------------------------------- running the CLI
class RegistrationRun:
    """One ``spinereg register`` run in the background, from checked inputs to scene nodes.

    ``start`` checks and writes the inputs (InputError for bad ones, nothing started),
    then the caller polls (``poll`` -> progress events; ``running``), and calls ``finish``
    once ``running`` is False: it applies the result to the scene when the CLI succeeded,
    raises InputError with the CLI's one-line reason otherwise, and always removes the
    work folder. ``cancel`` ends the process tree and removes the work folder.
    """

    def __init__(self, inputs: RegistrationInputs, python: str | None = None, work_dir=None, env=None) -> None:
        self.inputs = inputs
        self._python = python
        self._work_dir = work_dir
        self._env = env
        self.checked: CheckedInputs | None = None
        self.process: CliProcess | None = None
        self.work: Path | None = None
        self.out_dir: Path | None = None

    def start(self) -> RegistrationRun:
        self.checked, args, self.work, self.out_dir = prepare_registration(self.inputs, self._work_dir)
        try:
            self.process = CliProcess(args, python=self._python, env=self._env).start()
        except OSError as error:
            self._cleanup()
            raise InputError(f"cannot start spinereg: {error}") from None
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def poll(self):
        return self.process.poll() if self.process else []

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()
        self._cleanup()

    def finish(self, scene) -> dict:
        """Apply the finished run's result to ``scene`` (see the class docstring)."""
        if self.process is None:
            raise RuntimeError("RegistrationRun.finish before start")
        if self.running:
            raise RuntimeError("RegistrationRun.finish while the process still runs")
        try:
            if self.process.returncode != 0:
                raise InputError(f"registration failed: {self.process.failure_message()}")
            sizes = {view: _xray_size(node) for view, node in self.inputs.xrays.items()}
            result = read_registration_result(self.out_dir, sizes)
            return apply_registration_result(scene, result, self.inputs.xrays, self.checked.labelmap)
        finally:
            self._cleanup()

    def run(self, scene, callback=None, timeout_s: float | None = None) -> dict:
        """start, wait (``callback(event)`` per progress line) and finish, blocking."""
        self.start()
        try:
            self.process.wait(timeout_s=timeout_s, callback=callback)
        except BaseException:
            self.cancel()
            raise
        return self.finish(scene)

    def _cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def available_commands() -> list[str]:
    """The ``spinereg`` subcommands of the installed library (without starting it)."""
    from SpineRegistrationLib.cli import COMMANDS

    return list(COMMANDS)


# ---------------------------------------------------------------------- display
def show_xray_in_slice_view(scene, layout_name: str, xray_node, opacity: float = 0.5, visible_in_3d: bool = True):
    """Show an X-ray (background) and its DRR (foreground, ``opacity``) in the slice view
    ``layout_name`` ("Red", "Yellow", ...), with the view lying in the detector plane:
    screen x along the columns (u), screen y up = against the rows (-v), so the image
    appears as stored (row 0 on top). With ``visible_in_3d`` the slice shows in 3D views,
    i.e. the X-ray appears where it was taken. Returns the slice node, or None when the
    scene has no such view (headless scenes have none unless made).
    """
    geometry = geometry_of(xray_node)
    if geometry is None:
        raise InputError(f"X-ray {xray_node.GetName()!r} has no geometry")
    slice_node = composite = None
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLSliceNode") and node.GetLayoutName() == layout_name:
            slice_node = node
        elif node.IsA("vtkMRMLSliceCompositeNode") and node.GetLayoutName() == layout_name:
            composite = node
    if slice_node is None or composite is None:
        return None
    drr = drr_node_of(xray_node)
    composite.SetBackgroundVolumeID(xray_node.GetID())
    composite.SetForegroundVolumeID(drr.GetID() if drr is not None else None)
    composite.SetForegroundOpacity(float(opacity))
    u, v = geometry.detector_u, geometry.detector_v
    x_axis, y_axis = u, -v
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, 0] = x_axis
    slice_to_ras[:3, 1] = y_axis
    slice_to_ras[:3, 2] = np.cross(x_axis, y_axis)
    slice_to_ras[:3, 3] = geometry.center_ras
    slice_node.GetSliceToRAS().DeepCopy(vtkMatrixFromArray(slice_to_ras))
    cols, rows = geometry.size
    slice_node.SetFieldOfView(cols * geometry.pixel_spacing[0], rows * geometry.pixel_spacing[1], XRAY_SLAB_MM)
    slice_node.UpdateMatrices()
    slice_node.SetSliceVisible(bool(visible_in_3d))
    return slice_node


def set_drr_opacity(scene, opacity: float) -> None:
    """Foreground opacity of every slice view that shows a DRR over an X-ray."""
    drr_ids = {node.GetID() for node in nodes_with(scene, ROLE_DRR)}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLSliceCompositeNode") and node.GetForegroundVolumeID() in drr_ids:
            node.SetForegroundOpacity(float(opacity))


def set_results_visibility(scene, moved_segmentation: bool | None = None, xray_planes: bool | None = None) -> None:
    """Show or hide the moved vertebra surfaces, and the X-ray planes (slice views in 3D) with their sources."""
    if moved_segmentation is not None:
        for model in nodes_with(scene, ROLE_MODEL):
            if model.GetDisplayNode() is not None:
                model.GetDisplayNode().SetVisibility(bool(moved_segmentation))
    if xray_planes is not None:
        xray_ids = {node.GetID() for node in nodes_with(scene, ROLE_XRAY)}
        for index in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(index)
            if node.IsA("vtkMRMLSliceCompositeNode") and node.GetBackgroundVolumeID() in xray_ids:
                slice_node = _slice_node_of(scene, node.GetLayoutName())
                if slice_node is not None:
                    slice_node.SetSliceVisible(bool(xray_planes))
        for source in nodes_with(scene, ROLE_SOURCE):
            if source.GetDisplayNode() is not None:
                source.GetDisplayNode().SetVisibility(bool(xray_planes))


def _slice_node_of(scene, layout_name: str):
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLSliceNode") and node.GetLayoutName() == layout_name:
            return node
    return None
