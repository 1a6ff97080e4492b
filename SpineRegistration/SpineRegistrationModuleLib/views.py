"""Slice-view layout and display: an X-ray in its detector plane with its DRR blended over it
(the deformed vertebrae's DRR once Deform ran, else the rigid result's), DRR opacity,
visibility of the moved segmentation (the warped segmentation once Deform ran, else the
rigidly moved surfaces) and of the X-ray planes in 3D.

Works on the slice and slice-composite nodes of the scene (found by layout name, "Red",
"Yellow", ...), so it needs no layout manager: a headless scene has no views unless made.
A slice view's SliceToRAS is set in world RAS mm: screen x along the detector columns (u),
screen y against the rows (-v), so the image appears as stored (row 0 on top).
"""

from __future__ import annotations

import numpy as np
from slicer.util import vtkMatrixFromArray

from SpineRegistrationLib.errors import InputError

from .nodes import ROLE_DEFORMED_DRR, ROLE_DEFORMED_SEGMENTATION, ROLE_DRR, ROLE_MODEL, ROLE_SOURCE, ROLE_XRAY
from .nodes import nodes_with
from .xrays import XRAY_SLAB_MM, geometry_of, shown_drr_node_of


def _view_node(scene, class_name: str, layout_name: str):
    """The node of class ``class_name`` with layout name ``layout_name``, or None."""
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA(class_name) and node.GetLayoutName() == layout_name:
            return node
    return None


def _composite_nodes(scene) -> list:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())
            if scene.GetNthNode(i).IsA("vtkMRMLSliceCompositeNode")]


def show_xray_in_slice_view(scene, layout_name: str, xray_node, opacity: float = 0.5, visible_in_3d: bool = True):
    """Show an X-ray (background) and its DRR (foreground, ``opacity``; the deformed
    vertebrae's DRR when Deform made one, see :func:`.xrays.shown_drr_node_of`) in the slice view
    ``layout_name`` ("Red", "Yellow", ...), with the view lying in the detector plane:
    screen x along the columns (u), screen y up = against the rows (-v), so the image
    appears as stored (row 0 on top). With ``visible_in_3d`` the slice shows in 3D views,
    i.e. the X-ray appears where it was taken. Returns the slice node, or None when the
    scene has no such view (headless scenes have none unless made).
    """
    geometry = geometry_of(xray_node)
    if geometry is None:
        raise InputError(f"X-ray {xray_node.GetName()!r} has no geometry")
    slice_node = _view_node(scene, "vtkMRMLSliceNode", layout_name)
    composite = _view_node(scene, "vtkMRMLSliceCompositeNode", layout_name)
    if slice_node is None or composite is None:
        return None
    drr = shown_drr_node_of(xray_node)
    composite.SetBackgroundVolumeID(xray_node.GetID())
    composite.SetForegroundVolumeID(drr.GetID() if drr is not None else None)
    composite.SetForegroundOpacity(float(opacity))
    x_axis, y_axis = geometry.detector_u, -geometry.detector_v
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
    drr_ids = {node.GetID() for role in (ROLE_DRR, ROLE_DEFORMED_DRR) for node in nodes_with(scene, role)}
    for composite in _composite_nodes(scene):
        if composite.GetForegroundVolumeID() in drr_ids:
            composite.SetForegroundOpacity(float(opacity))


def set_results_visibility(scene, moved_segmentation: bool | None = None, xray_planes: bool | None = None) -> None:
    """Show or hide the moved segmentation, and the X-ray planes (slice views in 3D) with their sources.

    The moved segmentation is the warped segmentation of the Deform step when there is one
    (the rigidly moved surfaces are then hidden: inside each vertebra both are the same pose,
    and two coinciding surfaces only flicker), else the rigidly moved vertebra surfaces.
    """
    if moved_segmentation is not None:
        deformed = nodes_with(scene, ROLE_DEFORMED_SEGMENTATION)
        _set_visibility(deformed, moved_segmentation)
        _set_visibility(nodes_with(scene, ROLE_MODEL), moved_segmentation and not deformed)
    if xray_planes is not None:
        xray_ids = {node.GetID() for node in nodes_with(scene, ROLE_XRAY)}
        for composite in _composite_nodes(scene):
            if composite.GetBackgroundVolumeID() in xray_ids:
                slice_node = _view_node(scene, "vtkMRMLSliceNode", composite.GetLayoutName())
                if slice_node is not None:
                    slice_node.SetSliceVisible(bool(xray_planes))
        _set_visibility(nodes_with(scene, ROLE_SOURCE), xray_planes)


def _set_visibility(nodes: list, visible: bool) -> None:
    for node in nodes:
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetVisibility(bool(visible))
