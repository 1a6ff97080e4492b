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

from ..core.labelmap import check_same_grid
from ..core.labels import get_scheme
from ..core.volume import Volume, bounding_box_ijk
from ..errors import InputError
from ..geometry import XrayGeometry
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
from ..io.xray import checked_xray_array
from ..methods import resolve_device, resolve_method
from ..rigid import RigidConfig

#: A geometry given as this word is read from the X-ray's own DICOM tags.
DICOM_GEOMETRY = "dicom"

#: X-rays whose 1st and 99th intensity percentiles coincide have no usable contrast.
_CONTRAST_PERCENTILES = (1.0, 99.0)
#: CT and labelmap IJK->RAS matrices may differ by this (mm) and still share one grid.


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


@dataclass
class CaseInputs:
    """A :class:`RegisterConfig` read and checked by :func:`load_case`: ready to register.

    ct: Volume in HU, array (K, J, I). labelmap: on the CT's grid.
    xrays: (rows, columns) float32 arrays, bone bright; geometries: one per X-ray (size
    matches). views: output names, one per X-ray. vertebrae: name -> label value, in
    registration order. init: (4, 4) matrix_ras. method: the method that will run (never
    ``auto``). device: torch device name. notes: one-line remarks for the user (e.g. the
    method ``auto`` fell back to ``intensity``). model / model_path: the loaded pose network
    and its file (learned and auto only).
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

    @cached_property
    def mu(self) -> Volume:
        """The CT as linear attenuation (1/mm), what the renderer integrates (computed once)."""
        from ..render.drr import hu_to_mu

        return self.ct.with_array(hu_to_mu(self.ct.array))

    def mask(self, name: str) -> np.ndarray:
        """(K, J, I) bool mask of one vertebra to register."""
        return self.labelmap.volume.array == self.vertebrae[name]


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


def _view_names(config: RegisterConfig) -> list[str]:
    """Output names of the views: ``config.views``, else file stems, else ``view1``, ``view2`` ..."""
    count = len(config.xrays)
    if config.views is not None:
        names = [str(name) for name in config.views]
        if len(names) != count:
            raise InputError(f"{len(names)} view names for {count} X-rays")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
                raise InputError(f"view name {name!r}: use letters, digits, '_', '-' or '.' (it names output files)")
        if len(set(names)) != count:
            raise InputError(f"view names must differ, got {names}")
        return names
    names = []
    for index, (xray, geometry) in enumerate(zip(config.xrays, config.geometries)):
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
    box = np.array([[i, j, k] for i in (start[0] - 0.5, stop[0] - 0.5) for j in (start[1] - 0.5, stop[1] - 0.5)
                    for k in (start[2] - 0.5, stop[2] - 0.5)], float)
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
    views = _view_names(config)
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
        for name, center in centers_world.items():
            for view, geometry in zip(views, loaded_geometries):
                check_seen(geometry, center, f"{name} at the initial pose", view)
        vertebrae = requested
    else:
        vertebrae = {name: label for name, label in candidates.items()
                     if all(g.sees(centers_world[name][None])[0] for g in loaded_geometries)}
        if not vertebrae:
            raise InputError(
                "no vertebra of the segmentation is seen by every X-ray at the initial pose (their centres project "
                "outside a detector): the CT and the X-rays do not overlap; check the geometries and the initial pose"
            )
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
    )


