"""Vertebra boxes on the X-rays as editable markups planes: accepted state, export, import.

A box (the library's :class:`~SpineRegistrationLib.io.xray_boxes.XrayBox`: four corners
(column, row) in X-ray pixels, in order around the box) is a ``vtkMRMLMarkupsPlaneNode``
lying on its X-ray's detector plane: a rectangle the user moves, resizes and rotates with
the plane's interaction handles in the X-ray's slice view. Node name = vertebra name
(rename = rename the node), colour = accepted (green) or not (orange). The box node
references its X-ray (REF_XRAY) and carries ATTR_VIEW, ATTR_ACCEPTED, ATTR_SCORE and
ATTR_SOURCE. Corners map to world RAS mm through the X-ray node's IJKToRAS
(:func:`.xrays.xray_ijk_to_ras`: pixel (i, j) is voxel (i, j, 0)) and back through its
inverse. Corners 0, 1, 2, 3 are the plane's object-frame corners (-x, -y), (+x, -y),
(+x, +y), (-x, +y), so their order survives every edit. A quadrilateral that is not a
rectangle on the detector becomes the rectangle of the same centre, mean edge directions
and mean edge lengths (:func:`rectangle_of`).

Files: ``spinereg-xray-boxes`` JSON and COCO through the library's readers and writers
(:mod:`SpineRegistrationLib.io.xray_boxes`, the one home of both schemas). Boxes from the CT
come from the library's projection (:class:`SpineRegistrationLib.render.projected_boxes.VertebraOutlines`)
at the scene's registered poses; detected boxes from ``spinereg detect`` run out of process.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import slicer

from SpineRegistrationLib.core.labels import VERTEBRAE, canonical_name
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry.image_boxes import convex_intersection_area, polygon_area, rectangle_corners
from SpineRegistrationLib.io.xray_boxes import XrayBox, XrayImageInfo, check_boxes, read_coco, read_xray_boxes
from SpineRegistrationLib.io.xray_boxes import write_boxes_with_coco
from SpineRegistrationLib.pipeline.inputs import check_volume_seen
from SpineRegistrationLib.render.projected_boxes import VertebraOutlines

from .nodes import ATTR_VERTEBRA, ATTR_VIEW, ROLE_TRANSFORM, ROLE_XRAY, SceneChange, ijk_to_ras_of, nodes_with
from .nodes import pose_of, remove_node, tag_node, transform_to_parent_of, vertebra_labelmap, volume_of
from .process import CliProcess
from .registration import write_ct_inputs, write_xray_inputs, xray_arguments, xray_inputs
from .xrays import check_view, geometry_of, xray_size

#: ATTR_ROLE of box nodes (not a result: Reset keeps them).
ROLE_BOX = "xray-box"
#: Box node attributes: accepted ("1" / "0"), score in [0, 1], who made it (detector, projection, manual).
ATTR_ACCEPTED = "SpineRegistration.Accepted"
ATTR_SCORE = "SpineRegistration.Score"
ATTR_SOURCE = "SpineRegistration.BoxSource"
#: Reference from a box node to its X-ray node.
REF_XRAY = "spineregXray"

#: Box colours (RGB in [0, 1]): accepted green, not accepted orange.
ACCEPTED_COLOR = (0.2, 0.9, 0.3)
PENDING_COLOR = (1.0, 0.55, 0.1)
#: Fill opacity of a box in the slice view (the outline is opaque).
BOX_FILL_OPACITY = 0.1

#: Size (width, height) in detector mm of a box added by hand before the user resizes it.
NEW_BOX_SIZE_MM = (50.0, 35.0)

#: The plane's object-frame corner signs (x, y) for box corners 0..3 (see the module docstring).
_CORNER_SIGNS = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)


# ---------------------------------------------------------------------- geometry
def pixels_to_world(xray_node, corners_px: np.ndarray) -> np.ndarray:
    """(N, 2) pixel (column, row) of an X-ray -> (N, 3) world RAS mm on its detector plane."""
    corners_px = np.asarray(corners_px, dtype=np.float64).reshape(-1, 2)
    ijk = np.column_stack([corners_px, np.zeros(len(corners_px)), np.ones(len(corners_px))])
    return (ijk @ ijk_to_ras_of(xray_node).T)[:, :3]


def world_to_pixels(xray_node, points_ras: np.ndarray) -> np.ndarray:
    """(N, 3) world RAS mm -> (N, 2) pixel (column, row) of an X-ray, along its detector normal."""
    points_ras = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
    homogeneous = np.column_stack([points_ras, np.ones(len(points_ras))])
    return (homogeneous @ np.linalg.inv(ijk_to_ras_of(xray_node)).T)[:, :2]


def rectangle_of(corners_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(centre (3,), axes (3, 3) unit columns x, y, z, size (width, height) mm) of the rectangle
    through four corners (4, 3) RAS mm in order: x along 0 -> 1, y along 0 -> 3, z = x cross y."""
    c = np.asarray(corners_ras, dtype=np.float64)
    along_x = 0.5 * ((c[1] - c[0]) + (c[2] - c[3]))
    along_y = 0.5 * ((c[3] - c[0]) + (c[2] - c[1]))
    x = along_x / np.linalg.norm(along_x)
    y = along_y - (along_y @ x) * x
    y /= np.linalg.norm(y)
    axes = np.column_stack([x, y, np.cross(x, y)])
    return c.mean(axis=0), axes, (float(np.linalg.norm(along_x)), float(np.linalg.norm(along_y)))


def _place(plane, corners_ras: np.ndarray) -> None:
    center, axes, (width, height) = rectangle_of(corners_ras)
    plane.SetSizeMode(plane.SizeModeAbsolute)
    plane.SetAxesWorld(*(axes[:, k].tolist() for k in range(3)))
    plane.SetCenterWorld(*center.tolist())
    plane.SetPlaneBounds(-width / 2, width / 2, -height / 2, height / 2)


def corners_world_of(box_node) -> np.ndarray:
    """(4, 3) world RAS mm of a box node's corners 0..3 (its plane bounds in its axes: a
    moved, rotated or resized plane, asymmetric bounds included)."""
    bounds = box_node.GetPlaneBounds()
    x, y, z = [0.0] * 3, [0.0] * 3, [0.0] * 3
    box_node.GetAxesWorld(x, y, z)
    center = np.array(box_node.GetCenterWorld())
    half = np.array([(bounds[1] - bounds[0]) / 2, (bounds[3] - bounds[2]) / 2])
    middle = np.array([(bounds[1] + bounds[0]) / 2, (bounds[3] + bounds[2]) / 2])
    offsets = middle + _CORNER_SIGNS * half
    return center + offsets[:, :1] * np.array(x) + offsets[:, 1:] * np.array(y)


# ---------------------------------------------------------------------- nodes
def box_nodes(scene, xray_node=None) -> list:
    """Box nodes of ``scene`` (only those of ``xray_node`` when given), in scene order."""
    found = nodes_with(scene, ROLE_BOX)
    return [node for node in found if xray_node is None or node.GetNodeReference(REF_XRAY) is xray_node]


def xray_of(box_node):
    """The X-ray node a box lies on, or None."""
    return box_node.GetNodeReference(REF_XRAY)


def is_accepted(box_node) -> bool:
    return box_node.GetAttribute(ATTR_ACCEPTED) == "1"


def set_accepted(box_node, accepted: bool = True) -> None:
    """Mark a box accepted (green) or not (orange)."""
    box_node.SetAttribute(ATTR_ACCEPTED, "1" if accepted else "0")
    display = box_node.GetDisplayNode()
    if display is not None:
        color = ACCEPTED_COLOR if accepted else PENDING_COLOR
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetActiveColor(*color)


def accept_all(scene, xray_node=None, accepted: bool = True) -> int:
    """Accept (or unaccept) every box (of ``xray_node`` when given); returns how many."""
    nodes = box_nodes(scene, xray_node)
    for node in nodes:
        set_accepted(node, accepted)
    return len(nodes)


def _style(box_node) -> None:
    display = box_node.GetDisplayNode()
    if display is None:
        return
    display.SetNormalVisibility(False)
    display.SetFillOpacity(BOX_FILL_OPACITY)
    display.SetPropertiesLabelVisibility(True)
    display.SetHandlesInteractive(True)
    for name in ("Translation", "Rotation", "Scale"):
        getattr(display, f"Set{name}HandleVisibility")(True)


def _add_box_node(change: SceneChange, xray_node, box: XrayBox):
    plane = slicer.vtkMRMLMarkupsPlaneNode()
    plane.SetName(box.vertebra)
    change.add(plane)
    tag_node(plane, ROLE_BOX, view=xray_node.GetAttribute(ATTR_VIEW))
    plane.SetNodeReferenceID(REF_XRAY, xray_node.GetID())
    plane.SetAttribute(ATTR_SCORE, repr(float(box.score)))
    plane.SetAttribute(ATTR_SOURCE, box.source or "manual")
    _place(plane, pixels_to_world(xray_node, box.corners_px))
    _style(plane)
    set_accepted(plane, box.accepted)
    return plane


def _xray_view(xray_node) -> str:
    """The view of an X-ray node with geometry; InputError otherwise."""
    if xray_node is None or xray_node.GetAttribute(ATTR_VIEW) is None or geometry_of(xray_node) is None:
        name = xray_node.GetName() if xray_node is not None else None
        raise InputError(f"{name!r} is not an X-ray with a geometry: load the X-ray with its geometry first")
    return check_view(xray_node.GetAttribute(ATTR_VIEW))


def _checked(xray_node, boxes) -> list[XrayBox]:
    """The boxes checked by the library for this X-ray (names, convex corners, centre in the image)."""
    view = _xray_view(xray_node)
    return check_boxes({view: list(boxes)}, {view: xray_size(xray_node)}, f"{view} X-ray")[view]


def _put(change: SceneChange, scene, xray_node, boxes: list[XrayBox], replace: bool) -> list:
    """Add checked boxes; then remove the X-ray's old boxes: all of them (``replace``), else
    the unaccepted ones of the same vertebrae (an accepted box is kept and the new one of its
    vertebra skipped)."""
    old = [(canonical_name(node.GetName()) or node.GetName(), node) for node in box_nodes(scene, xray_node)]
    kept = set() if replace else {name for name, node in old if is_accepted(node)}
    made = [_add_box_node(change, xray_node, box) for box in boxes if box.vertebra not in kept]
    new_names = {box.vertebra for box in boxes}
    for name, node in old:
        if replace or (name in new_names and name not in kept):
            remove_node(scene, node)
    return made


def boxes_to_scene(scene, xray_node, boxes, replace: bool = False) -> list:
    """Put boxes (XrayBox list) on an X-ray as box nodes; returns the new nodes.

    Without ``replace`` a box replaces the unaccepted box of its vertebra on that X-ray and
    leaves an accepted one alone; with ``replace`` the X-ray keeps only the new boxes.
    InputError (one line, scene unchanged) for a bad box or an X-ray without geometry.
    """
    boxes = _checked(xray_node, boxes)
    with SceneChange(scene) as change:
        return _put(change, scene, xray_node, boxes, replace)


def add_box(scene, xray_node, vertebra: str, corners_px=None):
    """A new unaccepted box named ``vertebra`` (NEW_BOX_SIZE_MM at the image centre unless
    ``corners_px`` (4, 2) is given); other boxes of that vertebra stay."""
    if corners_px is None:
        _xray_view(xray_node)
        geometry = geometry_of(xray_node)
        cols, rows = xray_size(xray_node)
        (width_px, height_px) = np.array(NEW_BOX_SIZE_MM) / np.array(geometry.pixel_spacing)
        corners_px = rectangle_corners(((cols - 1) / 2, (rows - 1) / 2), width_px, height_px, axis=(0.0, 1.0))
    (box,) = _checked(xray_node, [XrayBox(vertebra, corners_px, 1.0, False, "manual")])
    with SceneChange(scene) as change:
        return _add_box_node(change, xray_node, box)


def box_of(box_node, xray_node=None) -> XrayBox:
    """The XrayBox a box node holds (corners read back from the plane). InputError when its
    name is not a vertebra (canonical form accepted: ``l1`` -> ``L1``)."""
    xray_node = xray_node or xray_of(box_node)
    name = canonical_name(box_node.GetName())
    if name is None:
        raise InputError(
            f"box {box_node.GetName()!r} on the {box_node.GetAttribute(ATTR_VIEW)} X-ray is not named after a vertebra; "
            f"rename it to one of {VERTEBRAE[0]}..{VERTEBRAE[-1]} (e.g. L1)"
        )
    score = box_node.GetAttribute(ATTR_SCORE)
    return XrayBox(name, world_to_pixels(xray_node, corners_world_of(box_node)), float(score) if score else 1.0,
                   is_accepted(box_node), box_node.GetAttribute(ATTR_SOURCE))


def boxes_from_scene(scene, xray_node, accepted_only: bool = False) -> list[XrayBox]:
    """The boxes on an X-ray as XrayBox (corners in its pixels), checked as the files require.
    InputError (one line) for a box not named after a vertebra, two boxes of one vertebra, or a
    box whose centre left the image."""
    boxes = [box_of(node, xray_node) for node in box_nodes(scene, xray_node) if is_accepted(node) or not accepted_only]
    names = [box.vertebra for box in boxes]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"the {_xray_view(xray_node)} X-ray has more than one {' and '.join(twice)} box; delete or rename one")
    return _checked(xray_node, boxes)


def box_rows(scene) -> list[tuple]:
    """(view, name, score, accepted, node) per box node: what the module's table shows."""
    rows = []
    for node in box_nodes(scene):
        score = node.GetAttribute(ATTR_SCORE)
        rows.append((node.GetAttribute(ATTR_VIEW), node.GetName(), float(score) if score else 1.0, is_accepted(node), node))
    return rows


# ---------------------------------------------------------------------- files
def scene_xrays(scene) -> dict:
    """View -> the scene's X-ray node with geometry (the first of each view)."""
    xrays = {}
    for node in nodes_with(scene, ROLE_XRAY):
        view = node.GetAttribute(ATTR_VIEW)
        if view and view not in xrays and geometry_of(node) is not None:
            xrays[view] = node
    return xrays


def image_info(xray_node) -> XrayImageInfo:
    """The X-ray's image for the box files: its stored file's name (else ``<view>.nrrd``,
    as the module writes X-rays for the CLI) and its size (columns, rows)."""
    storage = xray_node.GetStorageNode()
    path = storage.GetFileName() if storage is not None else None
    return XrayImageInfo(Path(path).name if path else f"{xray_node.GetAttribute(ATTR_VIEW)}.nrrd", xray_size(xray_node))


def collect_boxes(scene, xrays: dict | None = None, accepted_only: bool = False) -> tuple[dict, dict]:
    """({view: [XrayBox]}, {view: XrayImageInfo}) of the X-rays (view -> node or None; default
    :func:`scene_xrays`) that have boxes (see :func:`boxes_from_scene`); the accepted ones only
    with ``accepted_only`` (what ``spinereg register --boxes`` gets)."""
    xrays = scene_xrays(scene) if xrays is None else xrays
    boxes, images = {}, {}
    for view, node in xrays.items():
        if node is None or not box_nodes(scene, node):
            continue
        view_boxes = boxes_from_scene(scene, node, accepted_only)
        if view_boxes:
            boxes[view], images[view] = view_boxes, image_info(node)
    return boxes, images


def export_boxes(scene, path: str | os.PathLike, xrays: dict | None = None, accepted_only: bool = False) -> tuple[Path, Path]:
    """Write the boxes of the X-rays (view -> node; default :func:`scene_xrays`) as
    ``spinereg-xray-boxes`` JSON at ``path`` and COCO beside it (the library's ``coco_path``). Returns
    both paths; InputError (nothing written) when there is no box or a box is bad (e.g. not
    named after a vertebra)."""
    boxes, images = collect_boxes(scene, xrays, accepted_only)
    if not boxes:
        raise InputError("no accepted vertebra boxes to export" if accepted_only else "no vertebra boxes to export")
    return write_boxes_with_coco(path, boxes, images)


def read_boxes_file(path: str | os.PathLike, sizes: dict) -> dict:
    """{view: [XrayBox]} of a ``spinereg-xray-boxes`` or a COCO file (told apart by its keys),
    checked against the X-ray sizes {view: (columns, rows)}; InputError (one line) if bad."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        document = None  # the library's reader says what is wrong
    if isinstance(document, dict) and "annotations" in document and "format" not in document:
        boxes, images = read_coco(path)
        for view, info in images.items():
            if view in sizes and tuple(info.size) != tuple(sizes[view]):
                raise InputError(f"{path}: the {view} image is {info.size[0]}x{info.size[1]}, the X-ray "
                                 f"{sizes[view][0]}x{sizes[view][1]}")
        return check_boxes(boxes, sizes, str(path))
    return read_xray_boxes(path, sizes)


def import_boxes(scene, path: str | os.PathLike, xrays: dict | None = None) -> dict:
    """Read a box file (JSON or COCO) onto the X-rays (view -> node; default :func:`scene_xrays`):
    each view in the file keeps only the file's boxes. Returns {view: [box nodes]}. InputError
    (one line, scene unchanged) for a malformed file, an unknown vertebra, a box off its image
    or a view with no X-ray."""
    xrays = scene_xrays(scene) if xrays is None else xrays
    boxes = read_boxes_file(path, {view: xray_size(node) for view, node in xrays.items()})
    missing = sorted(view for view in boxes if view not in xrays)
    if missing:
        raise InputError(f"{path} has boxes on {', '.join(missing)} but the scene has no such X-ray with a geometry")
    checked = {view: _checked(xrays[view], view_boxes) for view, view_boxes in boxes.items()}
    with SceneChange(scene) as change:
        return {view: _put(change, scene, xrays[view], view_boxes, replace=True) for view, view_boxes in checked.items()}


# ---------------------------------------------------------------------- from the CT
#: Least fraction of a vertebra's projected box (at its registered pose) that its box must cover.
CONTAIN_FRACTION = 0.95


def registered_poses(scene) -> dict[str, np.ndarray]:
    """Vertebra -> (4, 4) matrix_ras (CT RAS -> world) of the scene's registration transforms."""
    return {node.GetAttribute(ATTR_VERTEBRA): transform_to_parent_of(node)
            for node in nodes_with(scene, ROLE_TRANSFORM) if node.GetAttribute(ATTR_VERTEBRA)}


def project_boxes(scene, ct_node, segmentation_node, xrays: dict | None = None) -> dict:
    """Boxes of the CT's vertebrae projected onto each X-ray (library projection) at their
    registered poses (unregistered vertebrae at the CT's pose: its parent transform, if any),
    put into the scene as by :func:`boxes_to_scene` (accepted boxes kept). Returns {view: [new box nodes]}."""
    xrays = scene_xrays(scene) if xrays is None else xrays
    labelmap = vertebra_labelmap(segmentation_node, ct_node)
    registered, ct_pose = registered_poses(scene), pose_of(ct_node, "CT")
    poses = {name: registered.get(name, ct_pose) for name in labelmap.labels}
    outlines = VertebraOutlines(labelmap)
    boxes = {view: _checked(node, outlines.boxes(geometry_of(node), poses)) for view, node in xrays.items()}
    with SceneChange(scene) as change:
        return {view: _put(change, scene, xrays[view], boxes[view], replace=False) for view in boxes}


def projection_warnings(scene, ct_node, segmentation_node, xrays: dict | None = None) -> list[str]:
    """One line per box that does not hold its registered vertebra's projection: less than
    CONTAIN_FRACTION of the vertebra's projected box (library projection at its registered
    pose) inside the box. Boxes of unregistered vertebrae are not checked."""
    poses = registered_poses(scene)
    if not poses:
        return []
    xrays = scene_xrays(scene) if xrays is None else xrays
    outlines = VertebraOutlines(vertebra_labelmap(segmentation_node, ct_node), list(poses))
    warnings = []
    for view, xray_node in xrays.items():
        boxes = [box_of(node, xray_node) for node in box_nodes(scene, xray_node) if canonical_name(node.GetName())]
        projected = {box.vertebra: box.corners_px for box in outlines.boxes(geometry_of(xray_node), poses)}
        for box in boxes:
            if box.vertebra not in projected:
                continue
            target = projected[box.vertebra]
            covered = convex_intersection_area(box.corners_px, target) / abs(polygon_area(target))
            if covered < CONTAIN_FRACTION:
                warnings.append(f"the {view} box {box.vertebra} holds only {100 * covered:.0f} % of {box.vertebra}'s "
                                "projection at its registered pose: check the box or the registration")
    return warnings


# ---------------------------------------------------------------------- detection
def detect_arguments(paths: dict, views, out_path: Path, device: str = "cpu", model=None) -> list[str]:
    """``spinereg detect`` arguments (no program name) for the files of :func:`write_xray_inputs`
    (the geometry file stems name the views) and, when ``paths`` has them, of :func:`write_ct_inputs`
    (the CT then helps name the levels); ``--model`` when a detector file is given (else the shipped one)."""
    ct = [arg for key in ("ct", "seg", "init") if key in paths for arg in (f"--{key}", str(paths[key]))]
    chosen = [] if not model else ["--model", str(model)]
    return ["detect", *xray_arguments(paths, views), *ct, *chosen, "--device", device, "--out", str(out_path)]


def _sees(geometry, ct) -> bool:
    """Does the view see some of the segmentation (``ct``: volume, labelmap, pose) where it is?"""
    volume, labelmap, pose = ct
    try:
        check_volume_seen(geometry, volume, labelmap.volume.array > 0, pose, "the segmentation")
    except InputError:
        return False
    return True


def best_per_vertebra(boxes: list[XrayBox]) -> list[XrayBox]:
    """The highest-scoring box of each vertebra, in first-seen order (one box per vertebra and view)."""
    best: dict[str, XrayBox] = {}
    for box in boxes:
        if box.vertebra not in best or box.score > best[box.vertebra].score:
            best[box.vertebra] = box
    return list(best.values())


def detect_boxes(scene, xrays: dict | None = None, python: str | None = None, device: str = "cpu", work_dir=None,
                 callback=None, timeout_s: float | None = None, ct_node=None, segmentation_node=None,
                 model=None) -> dict:
    """Run the detector on the X-rays (``spinereg detect``, out of process, blocking) and put its
    boxes (the best of each vertebra) into the scene as by :func:`boxes_to_scene` (accepted
    boxes kept). With the CT and its segmentation, where their vertebrae project (at the CT's
    pose, its parent transform) helps name the detected levels, when every view sees them there.
    model: a detector file (e.g. trained on this CT, :data:`.patient_model.DETECTOR`); None: the
    shipped one. callback(ProgressEvent) per output line. Returns {view: [new box nodes]}. InputError (one line, scene unchanged) for bad
    inputs or a failed run; the work folder is always removed."""
    xrays = scene_xrays(scene) if xrays is None else xrays
    if not xrays:
        raise InputError("no X-ray with a geometry: load the X-rays first")
    geometries, arrays = xray_inputs(xrays)
    ct = None
    if ct_node is not None and segmentation_node is not None:
        ct = (volume_of(ct_node), vertebra_labelmap(segmentation_node, ct_node), pose_of(ct_node, "CT"))
        if not ct[1].labels or not all(_sees(geometry, ct) for geometry in geometries.values()):
            ct = None  # only a help with the names: the detector reads the X-rays without it
    work = Path(tempfile.mkdtemp(prefix="spinereg-detect-", dir=work_dir))
    try:
        paths = write_xray_inputs(arrays, geometries, work / "input")
        if ct is not None:
            paths.update(write_ct_inputs(*ct, work / "input"))
        out_path = work / "boxes.json"
        process = CliProcess(detect_arguments(paths, list(xrays), out_path, device, model), python=python).start()
        try:
            process.wait(timeout_s=timeout_s, callback=callback)
        except BaseException:
            process.cancel()
            raise
        if process.returncode != 0:
            raise InputError(f"detection failed: {process.failure_message()}")
        detected = read_xray_boxes(out_path, {view: xray_size(node) for view, node in xrays.items()})
    except OSError as error:
        raise InputError(f"cannot run spinereg detect: {error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the detector's boxes only: those the CT adds (source "projection") come from Project from CT
    found = {view: _checked(node, best_per_vertebra([box for box in detected.get(view, []) if box.source == "detector"]))
             for view, node in xrays.items()}
    with SceneChange(scene) as change:
        return {view: _put(change, scene, xrays[view], boxes, replace=False) for view, boxes in found.items()}
