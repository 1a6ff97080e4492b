"""X-ray nodes on their detector planes: geometry attach/read, windowing, focal-spot sources.

An X-ray is a single-slice scalar volume: the image (rows, columns) becomes the volume
(K=1, J=rows, I=columns) whose IJKToRAS (:func:`xray_ijk_to_ras`) puts voxel (i, j, 0) on
detector pixel (column i, row j) in world RAS mm, so the X-ray shows where it was taken in
the 3D view. Its :class:`~SpineRegistrationLib.geometry.XrayGeometry` (the
``spinereg-xray-geometry`` JSON) rides in the node attribute ATTR_GEOMETRY; its focal spot
is a locked markups point referenced as REF_SOURCE, its DRR (made by :mod:`.results`) is
referenced as REF_DRR, the DRR of the deformed vertebrae (:mod:`.deformation`) as REF_DEFORMED_DRR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, vtkMatrixFromArray

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry import XrayGeometry
from SpineRegistrationLib.io import read_xray
from SpineRegistrationLib.io.dicom_geometry import geometry_from_dicom
from SpineRegistrationLib.io.geometry_json import load_geometry
from SpineRegistrationLib.pipeline.inputs import dicom_isocenter_ras, vertebra_centers_world

from .nodes import ATTR_GEOMETRY, ATTR_GEOMETRY_FILE, ATTR_VIEW, ROLE_SOURCE, ROLE_XRAY, SceneChange, fill_volume_node
from .nodes import pose_of, require_untransformed, tag_node, vertebra_labelmap

#: The two views of a biplanar registration (also the CLI's view and file names).
VIEWS = ("AP", "LAT")

#: Node reference roles from an X-ray node to its source point and its DRR.
REF_SOURCE, REF_DRR = "spineregSource", "spineregDRR"
#: Reference from an X-ray node to the DRR of the deformed vertebrae (shown instead of REF_DRR's).
REF_DEFORMED_DRR = "spineregDeformedDRR"

#: Thickness given to the X-ray's single slice along the detector normal (mm). Only its
#: display in slice views depends on it (the slice plane must cut the slab).
XRAY_SLAB_MM = 1.0

#: X-ray display window (percentiles of the exposed field: pixels above its 5th percentile):
#: soft tissue in the lower part of the grey range, bone bright. A starting point; the user
#: changes it as for any volume (left-drag in the slice view).
XRAY_WINDOW_PERCENTILES = (60.0, 99.9)


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


def read_geometry_file(path: str | os.PathLike, isocenter_ras=None) -> XrayGeometry:
    """A geometry from a ``spinereg-xray-geometry`` JSON sidecar or from a DICOM X-ray's tags,
    centred on ``isocenter_ras`` (world RAS mm, from :func:`dicom_isocenter`; required for DICOM)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return load_geometry(path)
    if isocenter_ras is None:
        raise InputError(f"{path.name}: a DICOM X-ray is centred on the vertebrae to register; "
                         "select the CT and its segmentation before loading it")
    return geometry_from_dicom(path, isocenter_ras=isocenter_ras)


def dicom_isocenter(segmentation_node, ct_node, vertebrae=()) -> np.ndarray:
    """(3,) world RAS mm: where a DICOM X-ray's beam is centred, by the CLI's rule
    (:func:`SpineRegistrationLib.pipeline.inputs.dicom_isocenter_ras`): the centroid of
    ``vertebrae`` (empty: all of the segmentation's) with the CT (None: the segmentation) at
    its parent transform."""
    labelmap = vertebra_labelmap(segmentation_node, ct_node)
    missing = [name for name in vertebrae if name not in labelmap.labels]
    if missing:
        raise InputError(f"{', '.join(missing)} not in the segmentation {segmentation_node.GetName()!r}")
    chosen = {name: labelmap.labels[name] for name in vertebrae}
    pose = pose_of(ct_node, "CT") if ct_node is not None else pose_of(segmentation_node, "segmentation")
    return dicom_isocenter_ras(vertebra_centers_world(labelmap, chosen, pose))


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
    """The DRR volume of the rigid result over an X-ray, or None."""
    return xray_node.GetNodeReference(REF_DRR) if xray_node is not None else None


def deformed_drr_node_of(xray_node):
    """The DRR volume of the deformed vertebrae over an X-ray (see :mod:`.deformation`), or None."""
    return xray_node.GetNodeReference(REF_DEFORMED_DRR) if xray_node is not None else None


def shown_drr_node_of(xray_node):
    """The DRR a slice view blends over the X-ray: the deformed one when there is one, else the rigid one."""
    return deformed_drr_node_of(xray_node) or drr_node_of(xray_node)


def xray_size(xray_node) -> tuple[int, int]:
    """(columns, rows) of an X-ray node; InputError unless it is a single 2D slice."""
    image = xray_node.GetImageData() if xray_node is not None else None
    if image is None:
        raise InputError(f"X-ray {xray_node.GetName() if xray_node else None!r} holds no image data")
    cols, rows, slices = image.GetDimensions()
    if slices != 1:
        raise InputError(f"{xray_node.GetName()!r} is a 3D volume ({slices} slices); an X-ray must be a single 2D image")
    return cols, rows


def check_xray_size(xray_node, geometry: XrayGeometry, what: str = "X-ray") -> None:
    """InputError (naming the node as ``what``) unless the node's image has the geometry's size."""
    cols, rows = xray_size(xray_node)
    if tuple(geometry.size) != (cols, rows):
        raise InputError(
            f"{what} {xray_node.GetName()!r} is {cols} x {rows} pixels but its geometry says "
            f"{geometry.size[0]} x {geometry.size[1]} (columns x rows)"
        )


def xray_window(array: np.ndarray) -> tuple[float, float]:
    """(min, max) display window of an X-ray (see XRAY_WINDOW_PERCENTILES)."""
    values = np.asarray(array, dtype=np.float64).ravel()
    field = values[values > np.percentile(values, 5.0)]
    if field.size == 0:
        field = values
    low, high = np.percentile(field, XRAY_WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def check_view(view: str) -> str:
    """The view name in upper case; InputError unless it is one of VIEWS."""
    view = str(view).upper()
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    return view


def attach_geometry(scene, xray_node, geometry: XrayGeometry, view: str, geometry_file: str | None = None):
    """Place an X-ray volume node on its detector plane and give it its focal spot.

    Sets the node's IJKToRAS to :func:`xray_ijk_to_ras`, stores the geometry (JSON) and
    the view name in node attributes, and creates (or moves) the source markups point.
    Raises InputError, changing nothing, when the image size differs from the geometry's.
    Returns the source markups node.
    """
    view = check_view(view)
    check_xray_size(xray_node, geometry)
    require_untransformed(xray_node, "X-ray")
    with SceneChange(scene) as change:
        source = source_node_of(xray_node)
        if source is None:
            source = change.add(slicer.vtkMRMLMarkupsFiducialNode(), f"{view} source")
            tag_node(source, ROLE_SOURCE, view=view)
            source.AddControlPoint(vtk.vtkVector3d(*geometry.source), f"{view} source")
            source.SetLocked(True)
            display = source.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(1.0, 0.85, 0.2)
                display.SetGlyphScale(4.0)
        else:
            source.SetNthControlPointPosition(0, *geometry.source)
            if source.GetAttribute(ATTR_VIEW) != view:  # the same image re-attached as the other view
                tag_node(source, ROLE_SOURCE, view=view)
                source.SetName(scene.GenerateUniqueName(f"{view} source"))
                source.SetNthControlPointLabel(0, f"{view} source")
        xray_node.SetIJKToRASMatrix(vtkMatrixFromArray(xray_ijk_to_ras(geometry)))
        tag_node(xray_node, ROLE_XRAY, view=view)
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


def load_xray(scene, image_path, geometry_path=None, view: str = "AP", invert: bool = False, name: str | None = None,
              isocenter_ras=None):
    """Read an X-ray and its geometry into a single-slice volume on the detector plane.

    geometry_path: the JSON sidecar, or a DICOM file to read the geometry tags from;
    default: the image itself when it is DICOM; isocenter_ras: see :func:`read_geometry_file`.
    Raises InputError (scene unchanged) for an unreadable file, a missing geometry or a
    size mismatch. Returns the volume node.
    """
    view = check_view(view)
    if geometry_path is None:
        if str(image_path).lower().endswith((".png", ".tif", ".tiff", ".jpg", ".jpeg", ".nrrd", ".mha", ".nii", ".nii.gz")):
            raise InputError(f"X-ray {image_path} has no geometry: give its geometry JSON (or load a DICOM X-ray)")
        geometry_path = image_path
    geometry = read_geometry_file(geometry_path, isocenter_ras)
    image = read_xray(image_path, geometry, invert=invert)
    node = slicer.vtkMRMLScalarVolumeNode()
    fill_volume_node(node, image.array[None], xray_ijk_to_ras(geometry))
    with SceneChange(scene) as change:
        change.add(node, name or f"{view} X-ray")
        attach_geometry(scene, node, geometry, view, str(geometry_path))
    return node
