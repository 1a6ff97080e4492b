"""Vertebra ROI boxes: one markups ROI per vertebra, an (edited) box read back as voxels, and the
scene's boxes written as the ``spinereg-roi`` file of ``spinereg register --roi``.

A box is made aligned with the segmentation's voxel axes (the CT's), centred and sized in world
RAS mm (its ObjectToNode matrix and size); the user may then move, resize and rotate it. Read
back against a volume it becomes the voxel box (start_ijk, stop_ijk), stop exclusive, that
:func:`SpineRegistrationLib.core.volume.bounding_box_ijk` also returns; written for the CLI
it is the oriented box as the user left it (:func:`roi_boxes`), in CT RAS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer
from slicer.util import vtkMatrixFromArray

from SpineRegistrationLib.core.box import OrientedBox
from SpineRegistrationLib.core.volume import bounding_box_ijk
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io.roi import write_roi

from .nodes import (ATTR_VERTEBRA, ROLE_ROI, SceneChange, ijk_to_ras_of, matrix_of, nodes_with, region_color,
                    require_untransformed, vertebra_labelmap)

#: Margin added around each vertebra's voxels for its ROI box (mm).
ROI_MARGIN_MM = 2.0


def _box_from_voxels(ijk_to_ras: np.ndarray, start_ijk, stop_ijk, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
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
    the segmentation's voxel axes (the CT's), with handles to move, resize and rotate it. An
    existing box of the same vertebra is reset.

    vertebrae: names (any spelling) to make boxes for; default: every vertebra. An unknown
    or absent one raises InputError (the library's :meth:`Labelmap.resolve`).
    Returns vertebra name -> vtkMRMLMarkupsROINode.
    """
    labelmap = vertebra_labelmap(segmentation_node, reference_node)
    requested = {labelmap.resolve(text)[0] for text in vertebrae or ()}
    names = [name for name in labelmap.labels if not requested or name in requested]  # cranial -> caudal
    boxes = {}
    for name in names:
        start, stop = bounding_box_ijk(labelmap.volume.array == labelmap.labels[name])
        boxes[name] = _box_from_voxels(labelmap.volume.ijk_to_ras, start, stop, margin_mm)
    rois = {}
    with SceneChange(scene) as change:
        for name, (object_to_node, size_mm) in boxes.items():
            roi, added = change.find_or_add(ROLE_ROI, slicer.vtkMRMLMarkupsROINode, f"{name} box", vertebra=name)
            if added:
                display = roi.GetDisplayNode()
                if display is not None:
                    display.SetSelectedColor(*region_color(name))
                    display.SetFillOpacity(0.05)
                    display.SetHandlesInteractive(True)  # move, resize and rotate it in the views
                    display.SetRotationHandleVisibility(True)
            roi.SetAndObserveObjectToNodeMatrix(vtkMatrixFromArray(object_to_node))
            roi.SetSize(*size_mm)
            rois[name] = roi
    return rois


def roi_box_ijk(roi_node, volume_node) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of ``volume_node`` whose centres lie in the ROI box (world coordinates,
    parent transforms of the ROI included) as (start_ijk, stop_ijk), stop exclusive, clipped
    to the volume; the form :func:`SpineRegistrationLib.core.volume.bounding_box_ijk` returns.

    Raises InputError when the box misses the volume.
    """
    require_untransformed(volume_node, "volume")
    object_to_world = matrix_of(roi_node.GetObjectToWorldMatrix())
    half = np.array(roi_node.GetSize(), float) / 2.0
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float) * half
    world = corners @ object_to_world[:3, :3].T + object_to_world[:3, 3]
    ras_to_ijk = np.linalg.inv(ijk_to_ras_of(volume_node))
    ijk = world @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]
    shape_ijk = np.array(volume_node.GetImageData().GetDimensions())
    start = np.maximum(np.ceil(ijk.min(axis=0) - 1e-6).astype(int), 0)
    stop = np.minimum(np.floor(ijk.max(axis=0) + 1e-6).astype(int) + 1, shape_ijk)
    if np.any(stop <= start):
        raise InputError(f"ROI {roi_node.GetName()!r} does not overlap the volume {volume_node.GetName()!r}")
    return start, stop


def roi_boxes(scene, ct_pose: np.ndarray | None = None) -> dict:
    """Vertebra name -> :class:`OrientedBox` in CT RAS mm of every vertebra ROI node of ``scene``, as
    the user left it (moved, resized, rotated; parent transforms of the ROI included).

    ct_pose: (4, 4) world <- CT RAS, the CT's parent transform (default identity): a box is
    taken back to the CT as scanned by its inverse.
    """
    world_to_ct = np.linalg.inv(np.eye(4) if ct_pose is None else np.asarray(ct_pose, float))
    boxes = {}
    for roi in nodes_with(scene, ROLE_ROI):
        object_to_ct = world_to_ct @ matrix_of(roi.GetObjectToWorldMatrix())
        scale = np.linalg.norm(object_to_ct[:3, :3], axis=0)  # a scaling parent transform stretches the box
        boxes[roi.GetAttribute(ATTR_VERTEBRA)] = OrientedBox(object_to_ct[:3, 3], object_to_ct[:3, :3] / scale,
                                                             np.array(roi.GetSize(), float) * scale)
    return boxes


def write_scene_rois(scene, folder, ct_pose: np.ndarray | None = None) -> dict:
    """Write :func:`roi_boxes` as ``folder``/roi.json (``spinereg-roi``); returns ``{"roi": path}``, or
    {} when the scene has no vertebra box."""
    boxes = roi_boxes(scene, ct_pose)
    return {"roi": write_roi(Path(folder) / "roi.json", boxes)} if boxes else {}
