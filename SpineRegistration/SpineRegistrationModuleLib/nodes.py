"""MRML node basics: matrices, tagging, all-or-nothing scene edits, volume and segmentation nodes.

Frames: every matrix is a (4, 4) float64 numpy array in RAS millimetres. A volume node's
voxels are read as a library :class:`~SpineRegistrationLib.core.volume.Volume` (array
(K, J, I), IJKToRAS of the node); a parent transform is never applied silently: it is
refused (:func:`require_untransformed`) or read as a pose (:func:`pose_of`, world <- node
RAS). Vertebra segmentations come back as a library
:class:`~SpineRegistrationLib.io.Labelmap` (VerSe numbering for segmentation nodes).
"""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, arrayFromVTKMatrix, updateVolumeFromArray, vtkMatrixFromArray
from vtk.util import numpy_support

from SpineRegistrationLib.core.labels import SCHEMES, canonical_name, guess_scheme_from_labels, sort_vertebrae
from SpineRegistrationLib.core.volume import Volume, bounding_box_ijk
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap, check_rigid, read_labelmap, read_volume

# ---------------------------------------------------------------------- node tagging
#: Node attribute names (all nodes this module makes carry ATTR_ROLE).
ATTR_ROLE = "SpineRegistration.Role"
ATTR_VIEW = "SpineRegistration.View"
ATTR_VERTEBRA = "SpineRegistration.Vertebra"
ATTR_GEOMETRY = "SpineRegistration.Geometry"
ATTR_GEOMETRY_FILE = "SpineRegistration.GeometryFile"
#: On a vertebra's registration transform: its result.json entry (JSON), so that the scene
#: alone can be written back as a result folder (:mod:`.deformation`).
ATTR_RESULT = "SpineRegistration.Result"

#: ATTR_ROLE values.
ROLE_XRAY, ROLE_SOURCE, ROLE_DRR = "xray", "source", "drr"
ROLE_ROI, ROLE_TRANSFORM, ROLE_MODEL, ROLE_TABLE, ROLE_DEFORMATION = (
    "roi", "transform", "model", "results-table", "deformation",
)
ROLE_DEFORMED_SEGMENTATION, ROLE_DEFORMED_DRR = "deformed-segmentation", "deformed-drr"
#: Nodes of the Deform step (grid transform, warped segmentation, DRRs of the warped vertebrae).
DEFORMATION_ROLES = (ROLE_DEFORMATION, ROLE_DEFORMED_SEGMENTATION, ROLE_DEFORMED_DRR)
#: Nodes that hold a result (removed by :func:`.results.reset_results`).
RESULT_ROLES = (ROLE_DRR, ROLE_TRANSFORM, ROLE_MODEL, ROLE_TABLE) + DEFORMATION_ROLES

#: Display colours of vertebrae (segments, boxes, surfaces), by region (RGB in [0, 1]).
_REGION_COLOR = {"C": (0.95, 0.75, 0.35), "T": (0.55, 0.8, 0.95), "L": (0.95, 0.85, 0.55), "S": (0.8, 0.6, 0.9)}


# ---------------------------------------------------------------------- matrices
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


# ---------------------------------------------------------------------- tagging and finding nodes
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


def first_node(scene, role: str, **attributes: str):
    """The first node :func:`nodes_with` finds, or None."""
    found = nodes_with(scene, role, **attributes)
    return found[0] if found else None


def tag_node(node, role: str, **attributes: str) -> None:
    """Set ATTR_ROLE and, when given, ATTR_VIEW (``view=``) and ATTR_VERTEBRA (``vertebra=``)."""
    node.SetAttribute(ATTR_ROLE, role)
    if "view" in attributes:
        node.SetAttribute(ATTR_VIEW, attributes["view"])
    if "vertebra" in attributes:
        node.SetAttribute(ATTR_VERTEBRA, attributes["vertebra"])


def remove_node(scene, node) -> None:
    """Remove ``node`` and its display nodes (the scene leaves a removed node's display nodes behind)."""
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] if hasattr(node, "GetNumberOfDisplayNodes") else []
    if scene.IsNodePresent(node):
        scene.RemoveNode(node)
    for display in displays:
        if display is not None and scene.IsNodePresent(display):
            scene.RemoveNode(display)


def require_untransformed(node, what: str) -> None:
    """InputError when ``node`` is under a transform: the logic reads voxel geometry straight
    from IJKToRAS, so a parent transform would be ignored."""
    if node.GetParentTransformNode() is not None:
        raise InputError(
            f"the {what} {node.GetName()!r} is under the transform {node.GetParentTransformNode().GetName()!r}; "
            "harden or remove that transform first"
        )


def pose_of(node, what: str) -> np.ndarray:
    """(4, 4) world <- node RAS of ``node``'s parent transforms (identity when it has none).

    InputError (one line) when that transform is not linear or not rigid (scaling, shear):
    a registration pose is a rotation and a translation.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"the {what} {node.GetName()!r} is under the non-linear transform {parent.GetName()!r}; "
                         "only a rigid linear transform can serve as its starting pose: harden or remove it")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return check_rigid(matrix_of(matrix), f"the transform {parent.GetName()!r} above the {what} {node.GetName()!r}")


def region_color(name: str) -> tuple[float, float, float]:
    """Display colour of a vertebra: by region, alternating brightness between neighbours."""
    base = _REGION_COLOR.get(name[:1], (0.8, 0.8, 0.8))
    scale = 1.0 if name[1:].isdigit() and int(name[1:]) % 2 else 0.8
    return tuple(c * scale for c in base)


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

    def find_or_add(self, role: str, make, name: str, display: bool = True, **attributes: str) -> tuple:
        """(node, added): the first node tagged ``role`` and ``attributes`` (see :func:`nodes_with`),
        else a new one from ``make()``, added as by :meth:`add` and tagged."""
        node = first_node(self.scene, role, **attributes)
        if node is not None:
            return node, False
        node = self.add(make(), name, display)
        tag_node(node, role, **attributes)
        return node, True


# ---------------------------------------------------------------------- volumes
def volume_of(node) -> Volume:
    """A volume node's voxels and IJKToRAS as a library Volume (array (K, J, I), copied)."""
    if node is None or node.GetImageData() is None:
        raise InputError(f"volume {node.GetName() if node else None!r} holds no image data")
    return Volume(np.array(arrayFromVolume(node)), ijk_to_ras_of(node))


def fill_volume_node(node, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
    """Set a volume node's voxels ((K, J, I) array) and IJKToRAS."""
    if array.dtype == np.int64:
        array = array.astype(np.int32)  # VTK 'long long' volumes do not display (slicer.util refuses them)
    node.SetIJKToRASMatrix(vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=np.float64)))
    updateVolumeFromArray(node, np.ascontiguousarray(array))


def add_volume_node(scene, volume: Volume, name: str, labelmap: bool = False):
    """A new scalar (or labelmap) volume node holding ``volume``."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    fill_volume_node(node, volume.array, volume.ijk_to_ras)
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


# ---------------------------------------------------------------------- segmentations
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
        segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(image, vertebra, region_color(vertebra))
    with SceneChange(scene) as change:
        change.add(segmentation_node, name)
    return segmentation_node


def vertebra_labelmap(segmentation_node, reference_node=None) -> Labelmap:
    """The vertebra labelmap a segmentation or labelmap node holds (library Labelmap, VerSe numbering
    for segmentation nodes; the node's own numbering, auto-detected, for labelmap nodes).

    reference_node: a volume whose grid a segmentation node is rasterised on (the CT),
    under the same transform as the segmentation; default: the segmentation's own
    labelmap geometry. The labelmap is in the node's own RAS (the CT's, with a reference).
    Raises InputError when the node holds no vertebra (no segment named like L1, or no
    label value of a known scheme), or when it and ``reference_node`` sit under different transforms.
    """
    if segmentation_node is None:
        raise InputError("no segmentation selected: choose a segmentation or a labelmap of the vertebrae")
    name = segmentation_node.GetName()
    if reference_node is not None and not np.allclose(
        pose_of(segmentation_node, "segmentation"), pose_of(reference_node, "CT"), atol=1e-6
    ):
        raise InputError(f"the segmentation {name!r} and the CT {reference_node.GetName()!r} are under different "
                         "transforms: put both under the same one")
    if segmentation_node.IsA("vtkMRMLLabelMapVolumeNode"):
        volume = volume_of(segmentation_node)
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


def vertebra_checklist(segmentation_node, chosen=()) -> list[tuple[str, bool]]:
    """(name, checked) per vertebra of the segmentation (:func:`vertebra_names`): checked when
    in ``chosen``, every one when ``chosen`` is empty (the module's "all")."""
    names = vertebra_names(segmentation_node)
    chosen = set(chosen) or set(names)
    return [(name, name in chosen) for name in names]
