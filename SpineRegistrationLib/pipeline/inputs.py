"""The inputs of a registration job, read and checked: the one validator of the CLI, the Python
API and the Slicer module.

:func:`load_case` does every check that can fail on bad input before any registration
starts (files, sizes, label scheme, grids, vertebrae, views, initial pose, method,
device), so a bad run fails in seconds, not after minutes of work. Inputs may be files
or in-memory objects (``Volume`` in HU, ``Labelmap``, (rows, columns) arrays,
``XrayGeometry``), so tests, notebooks and the Slicer module skip the disk.
:func:`check_seen` is the one "does this X-ray see it" check, with its one message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.box import OrientedBox, mask_box_center_ras
from ..core.labelmap import centroids_ras, check_same_grid, neighbour_offsets
from ..core.labels import get_scheme
from ..core.volume import Volume, bounding_box_ijk, box_corners
from ..errors import InputError
from ..geometry import XrayGeometry
from ..geometry.triangulation import DetectorBox, triangulate_boxes
from ..io import (
    Labelmap,
    centroid_ras,
    centroids_ras,
    check_rigid,
    read_labelmap,
    read_rigid_matrix,
    read_volume,
    read_xray,
)
from ..io.dicom_geometry import geometry_from_dicom
from ..io.geometry_json import load_geometry
from ..io.roi import read_roi
from ..io.xray_boxes import check_boxes, read_xray_boxes
from ..io.xray import checked_xray_array
from ..methods import resolve_device, resolve_method
from ..rigid import RigidConfig

#: A geometry given as this word is read from the X-ray's own DICOM tags.
DICOM_GEOMETRY = "dicom"

#: X-rays whose 1st and 99th intensity percentiles coincide have no usable contrast.
_CONTRAST_PERCENTILES = (1.0, 99.0)


@dataclass
class RegisterConfig:
    """One registration job, as ``spinereg register`` takes it (pass it whole).

    ct: CT in HU: a file (NIfTI, NRRD, MHA, DICOM folder) or a :class:`.volume.Volume`.
    seg: vertebra labelmap on the CT's voxel grid: a file (labelmap or Slicer .seg.nrrd)
        or a :class:`.io.Labelmap`.
    xrays: two or more X-rays: image files (PNG, TIFF, NRRD, MHA, DICOM) or
        (rows, columns) arrays, bone bright (see ``invert``).
    geometries: one per X-ray, in the same order: a ``spinereg-xray-geometry`` JSON file,
        an :class:`.geometry.XrayGeometry`, or ``"dicom"`` (read from the X-ray's DICOM
        tags, with the isocentre at the centroid of the vertebrae to register, at ``init``).
    vertebrae: names (``L1``, any spelling) or raw integer labels; empty: every vertebra
        of the segmentation whose centroid all X-rays see at the initial pose.
    label_scheme: numbering of a plain labelmap file: ``auto``, ``verse`` or ``totalseg``.
    invert: the X-rays are stored bone-dark; flip them (``max + min - x``) after reading.
    init: initial pose of the CT (4x4 matrix_ras, CT RAS -> world RAS): a JSON file
        (``{"matrix_ras": ...}``), an ITK transform file, an array, or None (identity).
    method: one of :data:`SpineRegistrationLib.methods.METHODS`.
    device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (cuda when available).
    rigid: the intensity-based registration's knobs (:class:`SpineRegistrationLib.rigid.RigidConfig`).
    views: names of the views (``AP``, ``LAT``), used in output file names; default: the
        geometry file stems (the X-ray file stem for ``dicom``), else ``view1``, ``view2``...
    threads: torch CPU threads while registering (None: leave torch's setting alone).
    model: the pose network's model file for ``learned``/``auto`` (default: the one shipped
        in Resources/Models).
    roi: vertebra boxes (``spinereg-roi`` file or name -> :class:`.core.box.OrientedBox`, CT
        RAS): see :meth:`CaseInputs.start` and :class:`..rigid.problem.VertebraDRR`.
    boxes: vertebra boxes on the X-rays (``spinereg-xray-boxes`` file or view -> list of
        :class:`..io.xray_boxes.XrayBox`); only accepted ones count (:meth:`CaseInputs.start`).
    """

    ct: str | os.PathLike | Volume
    seg: str | os.PathLike | Labelmap
    xrays: Sequence[str | os.PathLike | np.ndarray]
    geometries: Sequence[str | os.PathLike | XrayGeometry]
    vertebrae: Sequence[str | int] = ()
    label_scheme: str = "auto"
    invert: bool = False
    init: str | os.PathLike | np.ndarray | None = None
    method: str = "auto"
    device: str = "cpu"
    rigid: RigidConfig = field(default_factory=RigidConfig)
    views: Sequence[str] | None = None
    threads: int | None = None
    model: str | os.PathLike | None = None
    roi: str | os.PathLike | dict | None = None
    boxes: str | os.PathLike | dict | None = None


@dataclass
class CaseInputs:
    """A :class:`RegisterConfig` read and checked by :func:`load_case`: ready to register.

    ct: Volume in HU, array (K, J, I). labelmap: on the CT's grid.
    xrays: (rows, columns) float32 arrays, bone bright; geometries: one per X-ray (size
    matches). views: output names, one per X-ray. vertebrae: name -> label value, in
    registration order. init: (4, 4) matrix_ras. method: the method that will run (never
    ``auto``). device: torch device name. notes: one-line remarks for the user (e.g. the
    method ``auto`` fell back to ``intensity``). model / model_path: the loaded pose network
    and its file (learned and auto only). rois: name -> the user's box (CT RAS) of the
    vertebrae to register that have one; boxes: name -> its accepted X-ray boxes (two views or
    more); starts: name -> (4, 4) matrix_ras the vertebra's registration starts from.
    """

    config: RegisterConfig
    ct: Volume
    labelmap: Labelmap
    xrays: list[np.ndarray]
    geometries: list[XrayGeometry]
    views: list[str]
    vertebrae: dict[str, int]
    init: np.ndarray
    method: str
    device: str
    notes: list[str] = field(default_factory=list)
    model: object | None = None
    model_path: Path | None = None
    rois: dict[str, OrientedBox] = field(default_factory=dict)
    boxes: dict[str, list[DetectorBox]] = field(default_factory=dict)
    starts: dict[str, np.ndarray] = field(default_factory=dict)

    @cached_property
    def mu(self) -> Volume:
        """The CT as linear attenuation (1/mm), what the renderer integrates (computed once)."""
        from ..render.drr import hu_to_mu

        return self.ct.with_array(hu_to_mu(self.ct.array))

    def mask(self, name: str) -> np.ndarray:
        """(K, J, I) bool mask of one vertebra to register."""
        return self.labelmap.volume.array == self.vertebrae[name]

    @cached_property
    def centroids(self) -> dict[str, np.ndarray]:
        """Every labelled vertebra's centroid, CT RAS mm, cranial -> caudal (computed once)."""
        return centroids_ras(self.labelmap)

    def neighbour_offsets(self, name: str) -> tuple[np.ndarray, ...]:
        """CT RAS mm from vertebra ``name``'s centroid to its labelled neighbours' (the verdict's level margin)."""
        return neighbour_offsets(self.centroids, name)

    def start(self, name: str) -> np.ndarray:
        """(4, 4) matrix_ras the registration of vertebra ``name`` starts from (see :func:`start_pose`)."""
        return self.starts.get(name, self.init)


def start_pose(init: np.ndarray, center_ct: np.ndarray, roi_shift_ct: np.ndarray | None = None,
               center_world: np.ndarray | None = None) -> np.ndarray:
    """Where a vertebra's registration starts: ``init`` (CT RAS -> world), then moved by the user's box.

    roi_shift_ct: its ROI box centre minus its default box centre (:func:`.core.box.mask_box_center_ras`),
    CT RAS mm: the start is ``init @ T(shift)`` (the box was moved where the vertebra is).
    center_world: where its accepted X-ray boxes triangulate its centre (world RAS mm): the start
    is then translated so that ``center_ct`` lands there (the X-rays' evidence wins over the ROI's).
    """
    start = np.array(init, dtype=np.float64)
    if roi_shift_ct is not None:
        start[:3, 3] += start[:3, :3] @ roi_shift_ct
    if center_world is not None:
        start[:3, 3] += center_world - (start[:3, :3] @ center_ct + start[:3, 3])
    return start


def is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def is_dicom_keyword(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == DICOM_GEOMETRY


def _xray_label(config: RegisterConfig, index: int) -> str:
    """How an X-ray is named in messages: its path, else its view (``the LAT X-ray``) when the
    views are named, else ``X-ray 2``."""
    xray = config.xrays[index]
    if is_path(xray):
        return str(xray)
    return f"the {config.views[index]} X-ray" if config.views is not None else f"X-ray {index + 1}"


def _check_contrast(array: np.ndarray, label: str) -> None:
    low, high = np.percentile(array, _CONTRAST_PERCENTILES)
    if not high > low:
        raise InputError(
            f"{label} has no usable contrast: its {_CONTRAST_PERCENTILES[0]:g}th and "
            f"{_CONTRAST_PERCENTILES[1]:g}th intensity percentiles are both {low:g}"
        )


def _xray_from(value, geometry: XrayGeometry, invert: bool, label: str) -> np.ndarray:
    """One X-ray (file or array) as float32 (rows, columns), bone bright, checked against ``geometry``."""
    if is_path(value):
        array = read_xray(value, geometry, invert).array
    else:
        array = checked_xray_array(value, label, geometry, invert)
    _check_contrast(array, label)
    return np.ascontiguousarray(array, dtype=np.float32)


def view_names(xrays: Sequence, geometries: Sequence, views: Sequence[str] | None = None) -> list[str]:
    """Output names of the views (``register``'s and ``detect``'s, which ``--boxes`` matches):
    ``views``, else the geometry files' stems (the X-ray's for a DICOM geometry), made safe for
    file names, else ``view1``, ``view2`` ... (also when two stems coincide)."""
    count = len(xrays)
    if views is not None:
        names = [str(name) for name in views]
        if len(names) != count:
            raise InputError(f"{len(names)} view names for {count} X-rays")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise InputError(f"view name {name!r}: use letters, digits, '_', '-' or '.' (it names output files)")
        if len(set(names)) != count:
            raise InputError(f"view names must differ, got {names}")
        return names
    names = []
    for index, (xray, geometry) in enumerate(zip(xrays, geometries)):
        source = xray if is_dicom_keyword(geometry) else geometry
        stem = None
        if is_path(source) and not is_dicom_keyword(source):
            name = Path(source).name
            for suffix in (".json", ".dcm", ".dicom"):
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("._") or None
        names.append(stem or f"view{index + 1}")
    if len(set(names)) != count:
        names = [f"view{index + 1}" for index in range(count)]
    return names


def _read_ct(value) -> Volume:
    if isinstance(value, Volume):
        return value
    if not is_path(value):
        raise InputError(f"the CT must be a file path or a Volume, got {type(value).__name__}")
    return read_volume(value)


def _read_labelmap(value, scheme: str) -> Labelmap:
    if isinstance(value, Labelmap):
        if not value.values:
            raise InputError("the labelmap is empty (no nonzero voxels)")
        if not value.labels:
            raise InputError(f"the labelmap has no vertebra labels of the {value.scheme.name!r} scheme")
        return value
    if not is_path(value):
        raise InputError(f"the segmentation must be a file path or a Labelmap, got {type(value).__name__}")
    return read_labelmap(value, scheme)


def _read_init(value) -> np.ndarray:
    if value is None:
        return np.eye(4)
    if is_path(value):
        return read_rigid_matrix(value)
    return check_rigid(value, "initial pose")


def why_unseen(geometry: XrayGeometry, point_ras: np.ndarray) -> str:
    """Why ``geometry`` does not see ``point_ras`` (world RAS mm), in words."""
    depth_mm = float((point_ras - geometry.source) @ geometry.detector_normal)
    if depth_mm <= 0:
        return f"lies {-depth_mm:.0f} mm behind the X-ray source"
    if depth_mm >= geometry.sdd_mm:
        return "lies beyond the detector"
    column, row = geometry.project(point_ras)
    return f"projects to pixel ({column:.0f}, {row:.0f}), outside the {geometry.columns}x{geometry.rows} detector"


def check_seen(geometry: XrayGeometry, point_ras: np.ndarray, what: str, view: str | None = None) -> None:
    """InputError unless ``point_ras`` (world RAS mm, the centre of ``what``) projects onto the
    detector in front of the source."""
    point = np.asarray(point_ras, dtype=np.float64)
    if not geometry.sees(point[None])[0]:
        name = f"the {view} X-ray's geometry" if view else "the X-ray geometry"
        raise InputError(f"{name} does not see {what}: its centre {why_unseen(geometry, point)}")


def check_volume_seen(geometry: XrayGeometry, volume: Volume, mask: np.ndarray | None, matrix_ras: np.ndarray,
                      what: str) -> None:
    """InputError unless some part of ``volume`` (its voxels where ``mask``, (K, J, I) bool, or
    all of it), moved by ``matrix_ras``, projects onto the detector: intraoperative fields of
    view are smaller than CTs, so only a volume wholly outside the view is refused."""
    if mask is None:
        start, stop = np.zeros(3, int), np.array(volume.shape_ijk)
    else:
        start, stop = bounding_box_ijk(mask)
    box = box_corners(start - 0.5, stop - 0.5)
    corners = volume.ijk_to_ras_points(box)
    corners = corners @ np.asarray(matrix_ras)[:3, :3].T + np.asarray(matrix_ras)[:3, 3]
    if geometry.sees_any(corners):
        return
    depth_mm = (corners - geometry.source) @ geometry.detector_normal
    if np.all(depth_mm <= 0):
        where = f"it lies {float(-depth_mm.max()):.0f} mm behind the X-ray source"
    elif np.all(depth_mm >= geometry.sdd_mm):
        where = "it lies beyond the detector"
    else:
        where = f"no part of it projects onto the {geometry.columns}x{geometry.rows} detector"
    raise InputError(f"the X-ray geometry does not see {what}: {where}")


#: Accepted X-ray boxes of one vertebra whose centres' rays pass farther than this (RMS, mm) from
#: their best meeting point disagree: one of them is taken as another level (about half a
#: vertebra's height from the other views'), or it belongs to another case.
MAX_RAY_DISTANCE_MM = 7.5


def _read_rois(value, labelmap: Labelmap, ct: Volume, vertebrae: dict[str, int]) -> dict[str, OrientedBox]:
    """The user's boxes of the vertebrae to register, checked: every name in the labelmap, each box
    overlapping the CT and holding its vertebra's centroid."""
    if value is None:
        return {}
    where = str(value) if is_path(value) else "the ROI boxes"
    boxes = read_roi(value) if is_path(value) else dict(value)
    chosen = {}
    for key, box in boxes.items():
        try:
            name, label = labelmap.resolve(key)
        except InputError as error:
            raise InputError(f"{where}: {error}") from None
        if name not in vertebrae:
            continue
        ijk = ct.ras_to_ijk_points(box.corners())
        if np.any(ijk.max(0) < -0.5) or np.any(ijk.min(0) > np.array(ct.shape_ijk) - 0.5):
            raise InputError(f"{where}: the box of {name} lies outside the CT (is it in CT RAS mm?)")
        center = centroid_ras(labelmap, label)
        if not box.contains(center):
            raise InputError(f"{where}: the box of {name} does not hold its centroid "
                             f"({', '.join(f'{x:.1f}' for x in center)}) mm")
        chosen[name] = box
    return chosen


def _read_boxes(value, views: list[str], geometries: list[XrayGeometry], labelmap: Labelmap,
                vertebrae: dict[str, int]) -> dict[str, list[DetectorBox]]:
    """The accepted X-ray boxes of the vertebrae to register, by vertebra (one per view at most);
    InputError for an unknown view, a box off its image, a name not in the labelmap."""
    if value is None:
        return {}
    sizes = {view: geometry.size for view, geometry in zip(views, geometries)}
    where = str(value) if is_path(value) else "the X-ray boxes"
    boxes = read_xray_boxes(value, sizes) if is_path(value) else check_boxes(value, sizes, where)
    unknown = [view for view in boxes if view not in sizes]
    if unknown:
        raise InputError(f"{where}: boxes for view(s) {', '.join(unknown)}, but the X-rays are {', '.join(views)}")
    by_vertebra: dict[str, list[DetectorBox]] = {}
    for view, view_boxes in boxes.items():
        seen = set()
        for box in view_boxes:
            if not box.accepted:
                continue
            try:
                name, _ = labelmap.resolve(box.vertebra)
            except InputError as error:
                raise InputError(f"{where}: {view} box: {error}") from None
            if name in seen:
                raise InputError(f"{where}: two accepted {view} boxes of {name}")
            seen.add(name)
            if name in vertebrae:
                by_vertebra.setdefault(name, []).append(DetectorBox(geometries[views.index(view)], box.corners_px, view))
    return by_vertebra


def _starts(init: np.ndarray, labelmap: Labelmap, ct: Volume, vertebrae: dict[str, int],
            rois: dict[str, OrientedBox], boxes: dict[str, list[DetectorBox]], where: str) -> dict[str, np.ndarray]:
    """name -> :func:`start_pose` of each vertebra with a ROI box or accepted boxes in two views or more."""
    starts = {}
    for name, label in vertebrae.items():
        shift = triangulated = None
        if name in rois:
            shift = rois[name].center_ras - mask_box_center_ras(labelmap.volume.array == label, ct)
        if len(boxes.get(name, ())) >= 2:
            triangulated, distance_mm = triangulate_boxes(boxes[name])
            if distance_mm > MAX_RAY_DISTANCE_MM:
                raise InputError(f"{where}: the accepted boxes of {name} do not meet: their rays pass {distance_mm:.0f} mm "
                                 f"(RMS) from their nearest point, over {MAX_RAY_DISTANCE_MM:g} mm (a box of another level?)")
        if shift is not None or triangulated is not None:
            starts[name] = start_pose(init, centroid_ras(labelmap, label), shift, triangulated)
    return starts


def _requested_vertebrae(config: RegisterConfig, labelmap: Labelmap) -> dict[str, int]:
    """The vertebrae asked for (name -> label), checked present; {} when none were asked for."""
    chosen: dict[str, int] = {}
    for vertebra in config.vertebrae:
        name, label = labelmap.resolve(vertebra)
        chosen.setdefault(name, label)
    return chosen


def vertebra_centers_world(labelmap: Labelmap, vertebrae: dict, init: np.ndarray) -> dict[str, np.ndarray]:
    """Centroids (world RAS mm) of ``vertebrae`` (name -> label; empty: every vertebra of
    ``labelmap``) with the CT at ``init`` (4x4, world <- CT RAS)."""
    if vertebrae:
        centers_ct = {name: centroid_ras(labelmap, label) for name, label in vertebrae.items()}
    else:
        centers_ct = centroids_ras(labelmap)  # one pass over the labelmap for all of them
    return {name: init[:3, :3] @ center + init[:3, 3] for name, center in centers_ct.items()}


def dicom_isocenter_ras(centers_world: dict) -> np.ndarray:
    """(3,) isocentre (world RAS mm) of an X-ray geometry read from DICOM tags, which do not
    place the patient: the mean of :func:`vertebra_centers_world` of the vertebrae to register."""
    return np.mean(list(centers_world.values()), axis=0)


def load_case(config: RegisterConfig) -> CaseInputs:
    """Read and check every input of ``config``; InputError (one line) for the first bad one.

    Cheap checks come first (counts, method, device, initial pose, geometry files, X-rays),
    then the CT and the segmentation. Nothing is registered or written.
    """
    xrays, geometries = list(config.xrays), list(config.geometries)
    if len(xrays) != len(geometries):
        raise InputError(
            f"got {len(xrays)} X-rays and {len(geometries)} geometries: give one geometry per X-ray, in the same order"
        )
    if len(xrays) < 2:
        raise InputError(f"got {len(xrays)} X-ray; biplanar registration needs at least 2 views (e.g. AP and LAT)")
    method, note, model_path = resolve_method(config.method, config.model)
    device = resolve_device(config.device)
    model = None
    if model_path is not None:  # a bad model file fails here, before any image is read
        from ..learned.checkpoint import load_model

        model = load_model(model_path)
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        raise InputError(f"threads must be a whole number >= 1, got {config.threads!r}")
    if str(config.label_scheme).strip().lower() != "auto":
        get_scheme(config.label_scheme)  # an unknown scheme fails before any file is read
    views = view_names(config.xrays, config.geometries, config.views)
    init = _read_init(config.init)

    # Geometry files and their X-rays first: cheap, and the commonest mistakes.
    loaded_geometries: list[XrayGeometry | None] = []
    loaded_xrays: list[np.ndarray | None] = []
    for index, (xray, geometry) in enumerate(zip(xrays, geometries)):
        label = _xray_label(config, index)
        if is_dicom_keyword(geometry):
            if not is_path(xray):
                raise InputError(f"X-ray {index + 1} is an array: its geometry cannot be read from DICOM tags")
            loaded_geometries.append(None)  # needs the isocentre, known once the segmentation is read
            loaded_xrays.append(None)
            continue
        if isinstance(geometry, XrayGeometry):
            geometry.validate()
        elif is_path(geometry):
            geometry = load_geometry(geometry)
        else:
            raise InputError(f"geometry {index + 1} must be a JSON file, 'dicom' or an XrayGeometry")
        loaded_geometries.append(geometry)
        loaded_xrays.append(_xray_from(xray, geometry, config.invert, label))

    ct = _read_ct(config.ct)
    labelmap = _read_labelmap(config.seg, config.label_scheme)
    check_same_grid(labelmap, ct, f"segmentation {config.seg}" if is_path(config.seg) else "the labelmap")
    requested = _requested_vertebrae(config, labelmap)
    candidates = requested or dict(labelmap.labels)
    centers_world = vertebra_centers_world(labelmap, requested, init)

    for index, (xray, geometry) in enumerate(zip(xrays, geometries)):
        if loaded_geometries[index] is None:
            isocenter = dicom_isocenter_ras(centers_world)
            loaded_geometries[index] = geometry_from_dicom(xray, isocenter_ras=isocenter)
            loaded_xrays[index] = _xray_from(xray, loaded_geometries[index], config.invert, str(xray))

    if requested:
        vertebrae = requested
    else:
        vertebrae = {name: label for name, label in candidates.items()
                     if all(g.sees(centers_world[name][None])[0] for g in loaded_geometries)}
        if not vertebrae:
            raise InputError(
                "no vertebra of the segmentation is seen by every X-ray at the initial pose (their centres project "
                "outside a detector): the CT and the X-rays do not overlap; check the geometries and the initial pose"
            )
    rois = _read_rois(config.roi, labelmap, ct, vertebrae)
    boxes = _read_boxes(config.boxes, views, loaded_geometries, labelmap, vertebrae)
    starts = _starts(init, labelmap, ct, vertebrae, rois, boxes,
                     str(config.boxes) if is_path(config.boxes) else "the X-ray boxes")
    for name in vertebrae:  # seen where each registration starts (the boxes may bring it into view)
        moved = starts[name] @ np.linalg.inv(init) if name in starts else np.eye(4)  # world -> world
        what = f"{name} at its start" if name in starts else f"{name} at the initial pose"
        for view, geometry in zip(views, loaded_geometries):
            check_seen(geometry, moved[:3, :3] @ centers_world[name] + moved[:3, 3], what, view)
    return CaseInputs(
        config=config,
        ct=ct,
        labelmap=labelmap,
        xrays=loaded_xrays,
        geometries=loaded_geometries,
        views=views,
        vertebrae=vertebrae,
        init=init,
        method=method,
        device=device,
        notes=[note] if note else [],
        model=model,
        model_path=model_path,
        rois=rois,
        boxes=boxes,
        starts=starts,
    )


