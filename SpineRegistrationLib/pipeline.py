"""The whole registration job of ``spinereg register``: inputs -> per-vertebra poses -> result folder.

Three steps, each usable alone from Python (the CLI is a thin layer over them)::

    config = RegisterConfig(ct="ct.nii.gz", seg="seg.nii.gz", xrays=["AP.png", "LAT.png"],
                            geometries=["AP.json", "LAT.json"], vertebrae=["L1", "L2"])
    case = load_case(config)              # read + check everything (InputError, one line)
    results = register_case(case)         # list[VertebraResult], one per vertebra
    write_result("out/", results, case)   # result.json, L1.h5, L2.h5, drr_AP.nrrd, drr_LAT.nrrd

:func:`load_case` does every check that can fail on bad input before any registration
starts (files, sizes, label scheme, grids, vertebrae, views, initial pose, method,
device), so a bad run fails in seconds, not after minutes of work. Inputs may be files
or in-memory objects (``Volume`` in HU, ``Labelmap``, (rows, columns) arrays,
``XrayGeometry``), so tests and notebooks skip the disk.

The result folder (format ``spinereg-result``, version 1; DESIGN.md):

- ``result.json``: per vertebra ``matrix_ras`` (4x4, CT RAS -> world RAS), ``params``
  (rx/ry/rz deg, tx/ty/tz mm about ``center_ras``, the vertebra centroid in CT RAS mm),
  final ``similarity``, ``verdict`` ("pass" or "doubt"), ``time_s``, ``evaluations``;
  plus the inputs, the method, the rigid configuration and the total time.
- ``<vertebra>.h5``: one ITK transform per vertebra, which Slicer loads as ``matrix_ras``.
- ``drr_<VIEW>.nrrd``: per X-ray, the sum of the registered vertebrae's DRRs (float32
  optical depth), the X-ray's size, for overlays.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .errors import InputError
from .geometry import XrayGeometry, geometry_from_dicom, load_geometry
from .io import (
    Labelmap,
    centroid_ras,
    centroids_ras,
    check_rigid,
    read_labelmap,
    read_rigid_matrix,
    read_volume,
    read_xray,
    write_transform,
    write_xray,
)
from .io.xray import checked_xray_array
from .labels import get_scheme
from .registration import RigidConfig, VertebraResult, register_vertebra
from .volume import Volume

#: Registration methods: ``intensity`` (DRR similarity, :func:`.registration.register_vertebra`),
#: ``learned`` (the pose network alone, :mod:`.learned`) and ``auto`` (the network's rotation, then
#: the intensity registration without its rotation search, and the full one when in doubt;
#: intensity alone when no model is shipped).
METHODS = ("auto", "learned", "intensity")
#: A geometry given as this word is read from the X-ray's own DICOM tags.
DICOM_GEOMETRY = "dicom"
#: Where shipped model weights live (DESIGN.md: Resources/Models/*.pt).
MODEL_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"

RESULT_FILE = "result.json"
RESULT_FORMAT = "spinereg-result"
RESULT_VERSION = 1
#: Names of the 6 pose parameters in JSON files (degrees, then mm).
PARAM_KEYS = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")

#: X-rays whose 1st and 99th intensity percentiles coincide have no usable contrast.
_CONTRAST_PERCENTILES = (1.0, 99.0)
#: CT and labelmap IJK->RAS matrices may differ by this (mm) and still share one grid.
_GRID_TOLERANCE_MM = 1e-3


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
    method: one of :data:`METHODS`.
    device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (cuda when available).
    rigid: the intensity-based registration's knobs (:class:`.registration.RigidConfig`).
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
        from .drr import hu_to_mu

        return self.ct.with_array(hu_to_mu(self.ct.array))

    def mask(self, name: str) -> np.ndarray:
        """(K, J, I) bool mask of one vertebra to register."""
        return self.labelmap.volume.array == self.vertebrae[name]


@dataclass(frozen=True)
class CaseProgress:
    """What :func:`register_case` reports: vertebra ``index`` (1-based) of ``count``, its
    name, the stage it is in and the fraction of that vertebra done, in [0, 1]."""

    index: int
    count: int
    vertebra: str
    stage: str
    fraction: float


# ---------------------------------------------------------------------- method and device
def learned_model() -> Path | None:
    """The shipped learned-registration weights (``Resources/Models/*.pt``), or None."""
    models = sorted(MODEL_DIR.glob("*.pt")) if MODEL_DIR.is_dir() else []
    return models[0] if models else None


def resolve_method(method: str, model: str | os.PathLike | None = None) -> tuple[str, str | None, Path | None]:
    """The method that will run for ``method``, a one-line note when it differs, and the model file.

    ``learned`` without a model (``model`` or a shipped one) raises InputError; ``auto`` then
    falls back to ``intensity`` with a note.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "intensity":
        return "intensity", None, None
    model = Path(model) if model is not None else learned_model()
    if model is None:
        if method == "learned":
            raise InputError(
                f"method 'learned' needs a trained model ({MODEL_DIR.name}/*.pt under Resources) and none is "
                "shipped with this version; use method 'intensity' (or 'auto', which falls back to it)"
            )
        return "intensity", "no learned model is shipped (Resources/Models/*.pt): using intensity-based registration", None
    return method, None, model


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` -> a torch device name; InputError otherwise
    (and for CUDA on a machine without a GPU)."""
    import torch

    if str(name).strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA GPU is available")
    return str(device)


# ---------------------------------------------------------------------- loading and checking
def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def _is_dicom_keyword(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == DICOM_GEOMETRY


def _label(value, index: int, what: str) -> str:
    """How an input is named in messages: its path, or ``X-ray 2`` for an array."""
    return str(value) if _is_path(value) else f"{what} {index + 1}"


def _check_contrast(array: np.ndarray, label: str) -> None:
    low, high = np.percentile(array, _CONTRAST_PERCENTILES)
    if not high > low:
        raise InputError(
            f"{label} has no usable contrast: its {_CONTRAST_PERCENTILES[0]:g}th and "
            f"{_CONTRAST_PERCENTILES[1]:g}th intensity percentiles are both {low:g}"
        )


def _xray_from(value, geometry: XrayGeometry, invert: bool, label: str) -> np.ndarray:
    """One X-ray (file or array) as float32 (rows, columns), bone bright, checked against ``geometry``."""
    if _is_path(value):
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
        source = xray if _is_dicom_keyword(geometry) else geometry
        stem = None
        if _is_path(source) and not _is_dicom_keyword(source):
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
    if not _is_path(value):
        raise InputError(f"the CT must be a file path or a Volume, got {type(value).__name__}")
    return read_volume(value)


def _read_labelmap(value, scheme: str) -> Labelmap:
    if isinstance(value, Labelmap):
        if not value.values:
            raise InputError("the labelmap is empty (no nonzero voxels)")
        if not value.labels:
            raise InputError(f"the labelmap has no vertebra labels of the {value.scheme.name!r} scheme")
        return value
    if not _is_path(value):
        raise InputError(f"the segmentation must be a file path or a Labelmap, got {type(value).__name__}")
    return read_labelmap(value, scheme)


def _read_init(value) -> np.ndarray:
    if value is None:
        return np.eye(4)
    if _is_path(value):
        return read_rigid_matrix(value)
    return check_rigid(value, "initial pose")


def _where(geometry: XrayGeometry, point_ras: np.ndarray) -> str:
    """Why ``geometry`` does not see ``point_ras``, in words."""
    depth_mm = float((point_ras - geometry.source) @ geometry.detector_normal)
    if depth_mm <= 0:
        return f"lies {-depth_mm:.0f} mm behind the X-ray source"
    if depth_mm >= geometry.sdd_mm:
        return "lies beyond the detector"
    column, row = geometry.project(point_ras)
    return f"projects to pixel ({column:.0f}, {row:.0f}), outside the {geometry.columns}x{geometry.rows} detector"


def _requested_vertebrae(config: RegisterConfig, labelmap: Labelmap) -> dict[str, int]:
    """The vertebrae asked for (name -> label), checked present; {} when none were asked for."""
    chosen: dict[str, int] = {}
    for vertebra in config.vertebrae:
        name, label = labelmap.resolve(vertebra)
        chosen.setdefault(name, label)
    return chosen


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
        from .learned.checkpoint import load_model

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
        label = _label(xray, index, "X-ray")
        if _is_dicom_keyword(geometry):
            if not _is_path(xray):
                raise InputError(f"X-ray {index + 1} is an array: its geometry cannot be read from DICOM tags")
            loaded_geometries.append(None)  # needs the isocentre, known once the segmentation is read
            loaded_xrays.append(None)
            continue
        if isinstance(geometry, XrayGeometry):
            geometry.validate()
        elif _is_path(geometry):
            geometry = load_geometry(geometry)
        else:
            raise InputError(f"geometry {index + 1} must be a JSON file, 'dicom' or an XrayGeometry")
        loaded_geometries.append(geometry)
        loaded_xrays.append(_xray_from(xray, geometry, config.invert, label))

    ct = _read_ct(config.ct)
    labelmap = _read_labelmap(config.seg, config.label_scheme)
    if labelmap.volume.array.shape != ct.array.shape or not np.allclose(
        labelmap.volume.ijk_to_ras, ct.ijk_to_ras, atol=_GRID_TOLERANCE_MM
    ):
        seg = config.seg if _is_path(config.seg) else "the labelmap"
        raise InputError(
            f"segmentation {seg} does not share the CT's voxel grid (size {labelmap.volume.shape_ijk} vs "
            f"{ct.shape_ijk}, or another origin/spacing/direction): resample it onto the CT"
        )
    requested = _requested_vertebrae(config, labelmap)
    if requested:
        candidates = requested
        centers_ct = {name: centroid_ras(labelmap, label) for name, label in requested.items()}
    else:
        candidates = dict(labelmap.labels)
        centers_ct = centroids_ras(labelmap)  # one pass over the labelmap for all of them
    centers_world = {name: init[:3, :3] @ centers_ct[name] + init[:3, 3] for name in candidates}

    for index, (xray, geometry) in enumerate(zip(xrays, geometries)):
        if loaded_geometries[index] is None:  # "dicom": centred on the vertebrae to register
            isocenter = np.mean(list(centers_world.values()), axis=0)
            loaded_geometries[index] = geometry_from_dicom(xray, isocenter_ras=isocenter)
            loaded_xrays[index] = _xray_from(xray, loaded_geometries[index], config.invert, str(xray))

    if requested:
        for name, center in centers_world.items():
            for view, geometry in zip(views, loaded_geometries):
                if not geometry.sees(center[None])[0]:
                    raise InputError(
                        f"the {view} X-ray's geometry does not see {name} at the initial pose: its centre "
                        f"{_where(geometry, center)}"
                    )
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


# ---------------------------------------------------------------------- registering
def register_case(
    case: CaseInputs | RegisterConfig, progress: Callable[[CaseProgress], None] | None = None
) -> list[VertebraResult]:
    """Register every vertebra of ``case`` (a :class:`RegisterConfig` is loaded first), one
    after the other, each from the initial pose; returns one result per vertebra, in order.

    progress: called with a :class:`CaseProgress` at each stage of each vertebra.
    """
    return list(iter_register_case(case, progress))


def iter_register_case(
    case: CaseInputs | RegisterConfig, progress: Callable[[CaseProgress], None] | None = None
) -> Iterator[VertebraResult]:
    """:func:`register_case` one vertebra at a time: yields each result as soon as it is done."""
    import torch

    if isinstance(case, RegisterConfig):
        case = load_case(case)
    threads = case.config.threads
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    predictor = None
    if case.method in ("learned", "auto"):
        from .learned.inference import PosePredictor, register_vertebra_learned

        predictor = PosePredictor(case.model, case.device)
    try:
        count = len(case.vertebrae)
        for index, name in enumerate(case.vertebrae, start=1):

            def report(stage: str, fraction: float, index=index, name=name) -> None:
                if progress is not None:
                    stage = stage.removeprefix(f"{name}: ")
                    progress(CaseProgress(index, count, name, stage, float(fraction)))

            report("start", 0.0)
            if predictor is not None:
                yield register_vertebra_learned(
                    name, case.mu, case.mask(name), case.xrays, case.geometries, predictor, init=case.init,
                    config=case.config.rigid, refine=case.method == "auto", device=case.device, progress=report,
                )
                continue
            yield register_vertebra(
                name, case.mu, case.mask(name), case.xrays, case.geometries, init=case.init,
                config=case.config.rigid, device=case.device, progress=report,
            )
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)


# ---------------------------------------------------------------------- results
def render_vertebra_drrs(case: CaseInputs, poses: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per view, the sum of the vertebrae's DRRs at ``poses`` (name -> matrix_ras): (rows,
    columns) float32 optical depth, the X-ray's size."""
    import torch

    from .drr import Detectors, DRRRenderer

    images = [np.zeros((g.rows, g.columns), np.float32) for g in case.geometries]
    detectors = [Detectors.from_geometries([g], device=case.device) for g in case.geometries]
    for name, matrix in poses.items():
        renderer = DRRRenderer(case.mu, mask=case.mask(name)).to(case.device)
        pose = torch.as_tensor(matrix, dtype=torch.float32, device=case.device)[None]
        with torch.no_grad():
            for image, detector in zip(images, detectors):
                image += renderer(pose, detector)[0, 0].cpu().numpy()
    return images


def _input_path(value) -> str | None:
    """An input as written to result.json: the absolute path of a file, None for an in-memory object."""
    if _is_dicom_keyword(value):
        return DICOM_GEOMETRY
    return str(Path(value).absolute()) if _is_path(value) else None


def result_dict(case: CaseInputs, results: Sequence[VertebraResult], total_time_s: float | None = None) -> dict:
    """The ``result.json`` content (format ``spinereg-result``, version 1)."""
    config = case.config
    vertebrae = {}
    for result in results:
        vertebrae[result.name] = {
            "matrix_ras": np.asarray(result.matrix_ras, dtype=float).tolist(),
            "params": {key: float(value) for key, value in zip(PARAM_KEYS, result.params)},
            "center_ras": np.asarray(result.center_ras, dtype=float).tolist(),
            "similarity": float(result.similarity),
            "verdict": result.verdict,
            "time_s": round(float(result.time_s), 3),
            "evaluations": int(result.evaluations),
            "stages": result.stages,
        }
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "software": f"SpineRegistration {__version__}",
        "frame": "RAS",
        "inputs": {
            "ct": _input_path(config.ct),
            "seg": _input_path(config.seg),
            "label_scheme": case.labelmap.scheme.name,
            "xrays": [_input_path(x) for x in config.xrays],
            "geometries": [_input_path(g) for g in config.geometries],
            "invert": bool(config.invert),
            "init": _input_path(config.init) if config.init is not None else None,
        },
        "views": {
            view: {"drr": f"drr_{view}.nrrd", "geometry": geometry.to_json_dict()}
            for view, geometry in zip(case.views, case.geometries)
        },
        "init_matrix_ras": case.init.tolist(),
        "method": case.method,
        "method_requested": config.method,
        "model": None if case.model_path is None else str(case.model_path.absolute()),
        "device": case.device,
        "rigid_config": asdict(config.rigid),
        "vertebrae": vertebrae,
        "total_time_s": round(float(sum(r.time_s for r in results) if total_time_s is None else total_time_s), 3),
    }


def _json_default(value):
    """numpy scalars and arrays (and tuples inside) in result.json."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_result(
    directory: str | os.PathLike,
    results: Sequence[VertebraResult],
    case: CaseInputs,
    total_time_s: float | None = None,
) -> dict[str, Path]:
    """Write the result folder's files into the existing folder ``directory``.

    Returns name -> path: ``result`` (result.json), each vertebra name (its .h5) and
    ``drr_<VIEW>`` per view. Writing into a staging folder that is renamed when complete
    (:func:`.cli.common.staged_output_dir`) is the caller's business.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"output folder does not exist: {directory}")
    paths: dict[str, Path] = {}
    for result in results:
        paths[result.name] = directory / f"{result.name}.h5"
        write_transform(result.matrix_ras, paths[result.name])
    for view, image in zip(case.views, render_vertebra_drrs(case, {r.name: r.matrix_ras for r in results})):
        paths[f"drr_{view}"] = directory / f"drr_{view}.nrrd"
        write_xray(image, paths[f"drr_{view}"])
    paths["result"] = directory / RESULT_FILE
    text = json.dumps(result_dict(case, results, total_time_s), indent=2, default=_json_default)
    paths["result"].write_text(text + "\n", encoding="utf-8")
    return paths


def read_result(directory: str | os.PathLike) -> list[VertebraResult]:
    """The vertebrae of a result folder's ``result.json`` (matrices as written there).

    Raises InputError for a missing file or one that is not ``spinereg-result`` v1.
    """
    from .io.jsonfile import read_json

    path = Path(directory) / RESULT_FILE
    data = read_json(path, RESULT_FORMAT)
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT or data.get("version") != RESULT_VERSION:
        raise InputError(f"{path} is not a {RESULT_FORMAT} version {RESULT_VERSION} file")
    results = []
    for name, entry in data.get("vertebrae", {}).items():
        results.append(
            VertebraResult(
                name=name,
                matrix_ras=np.asarray(entry["matrix_ras"], dtype=np.float64),
                params=np.array([entry["params"][key] for key in PARAM_KEYS], dtype=np.float64),
                center_ras=np.asarray(entry["center_ras"], dtype=np.float64),
                similarity=float(entry["similarity"]),
                verdict=str(entry["verdict"]),
                time_s=float(entry["time_s"]),
                evaluations=int(entry["evaluations"]),
                stages=list(entry.get("stages", [])),
            )
        )
    return results
