"""X-ray (C-arm) geometry: where the focal spot and each detector pixel are, in world RAS mm.

Follows the ``spinereg-xray-geometry`` v1 contract of DESIGN.md: pixel (i, j) (column i,
row j) sits at ``detector_origin + i*du*detector_u + j*dv*detector_v``. Pixel coordinates
are continuous: pixel (i, j) covers [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2], so the image
spans columns -1/2 ... columns - 1/2.

Three ways to get one: the JSON sidecar (:func:`load_geometry`), a C-arm angle preset
(:func:`c_arm_geometry`, :func:`preset_geometry`) and the DICOM tags of the X-ray
(:func:`geometry_from_dicom`). numpy only (no torch), so the CLI and loaders stay light.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

#: JSON sidecar identification (DESIGN.md).
GEOMETRY_FORMAT = "spinereg-xray-geometry"
GEOMETRY_VERSION = 1
GEOMETRY_FRAME = "RAS"

#: C-arm defaults: source-detector and source-isocentre distances (mm), detector size
#: (columns, rows) and pixel spacing (du, dv) in mm at the detector.
DEFAULT_SDD_MM = 1020.0
DEFAULT_SID_MM = 620.0
DEFAULT_SIZE = (512, 512)
DEFAULT_PIXEL_SPACING_MM = (0.6, 0.6)

#: Named views -> primary angle in degrees (see :func:`c_arm_geometry`).
PRESET_PRIMARY_DEG = {"AP": 0.0, "LAT": 90.0}

#: Tolerance on |u| = |v| = 1 and u . v = 0 (dimensionless), and on the source's
#: distance to the detector plane (mm).
UNIT_TOLERANCE = 1e-3
PLANE_TOLERANCE_MM = 1e-3

#: DICOM modalities of projection X-rays whose geometry tags we read.
DICOM_XRAY_MODALITIES = ("CR", "DX", "RF", "XA")

#: DICOM ViewPosition (0018,5101) -> DICOM Positioner Primary Angle (the detector's
#: position, PS3.3 C.8.7.5.1.2): used only when no C-arm angle is stored.
#: PA: detector anterior (0); AP: posterior (180); LL (left side to the detector): +90; RL: -90.
VIEW_POSITION_PRIMARY_DEG = {"PA": 0.0, "AP": 180.0, "LL": 90.0, "RL": -90.0}

#: Patient orientation letters (DICOM PS3.3 C.7.6.1.1.1) as RAS unit vectors.
_ORIENTATION_LETTERS_RAS = {
    "R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0),
}


@dataclass(eq=False)
class XrayGeometry:
    """One X-ray view (pinhole camera), all in world RAS mm.

    source: (3,) focal spot, RAS mm.
    detector_origin: (3,) centre of pixel (column 0, row 0), RAS mm.
    detector_u / detector_v: (3,) orthonormal unit vectors along increasing column / row index.
    pixel_spacing: (du, dv) mm on the detector, du along columns (u), dv along rows (v).
    size: (columns, rows).

    The constructor converts to float64 / int and validates (:meth:`validate`): bad values
    raise :class:`InputError`.
    """

    source: np.ndarray
    detector_origin: np.ndarray
    detector_u: np.ndarray
    detector_v: np.ndarray
    pixel_spacing: tuple[float, float]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        self.source = _as_vector("source", self.source, 3)
        self.detector_origin = _as_vector("detector_origin", self.detector_origin, 3)
        self.detector_u = _as_vector("detector_u", self.detector_u, 3)
        self.detector_v = _as_vector("detector_v", self.detector_v, 3)
        self.pixel_spacing = _as_spacing(self.pixel_spacing)
        self.size = _as_size(self.size)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise InputError unless every field is well formed (shapes, finite, spacing > 0 mm,
        size >= 1 whole pixels), u and v are orthonormal (within ``UNIT_TOLERANCE``) and the
        source lies off the detector plane (by more than ``PLANE_TOLERANCE_MM``).
        """
        for name in ("source", "detector_origin", "detector_u", "detector_v"):
            _as_vector(name, getattr(self, name), 3)
        _as_spacing(self.pixel_spacing)
        _as_size(self.size)
        for name, vector in (("detector_u", self.detector_u), ("detector_v", self.detector_v)):
            norm = float(np.linalg.norm(vector))
            if abs(norm - 1.0) > UNIT_TOLERANCE:
                raise InputError(
                    f"{name} is not a unit vector: norm {norm:.6g}, expected 1 within {UNIT_TOLERANCE:g}"
                )
        dot = float(self.detector_u @ self.detector_v)
        if abs(dot) > UNIT_TOLERANCE:
            raise InputError(
                f"detector_u and detector_v are not orthogonal: dot product {dot:.6g}, "
                f"expected 0 within {UNIT_TOLERANCE:g}"
            )
        distance_mm = self._signed_source_distance_mm()
        if abs(distance_mm) <= PLANE_TOLERANCE_MM:
            raise InputError(
                f"source {_fmt(self.source)} lies on the detector plane (distance {abs(distance_mm):.3g} mm), "
                f"expected it at least {PLANE_TOLERANCE_MM:g} mm off the plane"
            )

    def _signed_source_distance_mm(self) -> float:
        """(detector_origin - source) . (u x v) / |u x v|, mm."""
        normal = np.cross(self.detector_u, self.detector_v)
        return float((self.detector_origin - self.source) @ normal / np.linalg.norm(normal))

    # ------------------------------------------------------------------ JSON sidecar
    def to_json_dict(self) -> dict[str, Any]:
        """The ``spinereg-xray-geometry`` v1 dictionary (plain Python floats / ints)."""
        return {
            "format": GEOMETRY_FORMAT,
            "version": GEOMETRY_VERSION,
            "frame": GEOMETRY_FRAME,
            "source": [float(x) for x in self.source],
            "detector_origin": [float(x) for x in self.detector_origin],
            "detector_u": [float(x) for x in self.detector_u],
            "detector_v": [float(x) for x in self.detector_v],
            "pixel_spacing": [float(x) for x in self.pixel_spacing],
            "size": [int(x) for x in self.size],
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> XrayGeometry:
        """Parse and validate a ``spinereg-xray-geometry`` v1 dictionary; InputError if bad.

        Keys other than those of the contract are ignored.
        """
        if not isinstance(d, dict):
            raise InputError(f"geometry must be a JSON object, got {type(d).__name__}")
        _check_header(d)
        fields = ("source", "detector_origin", "detector_u", "detector_v", "pixel_spacing", "size")
        missing = [name for name in fields if name not in d]
        if missing:
            raise InputError(f"missing field(s) {', '.join(missing)}; expected all of {', '.join(fields)}")
        return cls(**{name: d[name] for name in fields})

    # ------------------------------------------------------------------ derived quantities
    @property
    def columns(self) -> int:
        return self.size[0]

    @property
    def rows(self) -> int:
        return self.size[1]

    @property
    def detector_normal(self) -> np.ndarray:
        """(3,) unit normal of the detector plane, pointing from the source towards the detector."""
        normal = np.cross(self.detector_u, self.detector_v)
        normal /= np.linalg.norm(normal)
        return normal if self._signed_source_distance_mm() > 0 else -normal

    @property
    def sdd_mm(self) -> float:
        """Source-to-detector distance: from the source to the detector plane (perpendicular), mm."""
        return abs(self._signed_source_distance_mm())

    def magnification(self, point_ras: np.ndarray) -> float:
        """Detector magnification at a point (RAS mm): source-detector over source-point distance
        along the detector normal (how many detector mm one mm at that depth spans)."""
        return self.sdd_mm / float((np.asarray(point_ras, dtype=np.float64) - self.source) @ self.detector_normal)

    @property
    def principal_point(self) -> np.ndarray:
        """(2,) continuous pixel coordinates (column, row) of the foot of the perpendicular from the source."""
        foot_ras = self.source + self.sdd_mm * self.detector_normal
        return self._ras_to_pixel(foot_ras)

    @property
    def center_ras(self) -> np.ndarray:
        """(3,) RAS mm of the detector's centre (pixel coordinates ((columns-1)/2, (rows-1)/2))."""
        return self.pixel_to_ras((self.columns - 1) / 2.0, (self.rows - 1) / 2.0)

    # ------------------------------------------------------------------ pixels <-> RAS
    def pixel_to_ras(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Continuous pixel coordinates (column, row) -> (..., 3) RAS mm on the detector."""
        cols = np.asarray(cols, dtype=np.float64)[..., None]
        rows = np.asarray(rows, dtype=np.float64)[..., None]
        du, dv = self.pixel_spacing
        return self.detector_origin + cols * du * self.detector_u + rows * dv * self.detector_v

    def pixel_centers_ras(self) -> np.ndarray:
        """(rows, columns, 3) RAS mm of every pixel centre."""
        rows, cols = np.meshgrid(np.arange(self.rows), np.arange(self.columns), indexing="ij")
        return self.pixel_to_ras(cols, rows)

    def _ras_to_pixel(self, points_on_detector_ras: np.ndarray) -> np.ndarray:
        """(..., 3) RAS mm in the detector plane -> (..., 2) continuous (column, row)."""
        offset = points_on_detector_ras - self.detector_origin
        du, dv = self.pixel_spacing
        return np.stack([offset @ self.detector_u / du, offset @ self.detector_v / dv], axis=-1)

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """(..., 3) RAS mm -> (..., 2) continuous pixel coordinates (column, row), pinhole model.

        Points in the plane through the source parallel to the detector give non-finite
        coordinates; points behind the source project mirrored. Use :meth:`sees` to filter.
        """
        points = np.asarray(points_ras, dtype=np.float64)
        normal = self.detector_normal
        ray = points - self.source
        # Intersect the line source -> point with the detector plane.
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self.sdd_mm / (ray @ normal)
            return self._ras_to_pixel(self.source + t[..., None] * ray)

    def sees(self, points_ras: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
        """(..., 3) RAS mm -> (...) bool: is each point imaged by this view?

        True when the point lies strictly between the source and the detector plane (in
        front of the source) and projects onto the image, at least ``margin_px`` pixels
        inside its border (the border runs through pixel edges: columns -1/2 ... columns-1/2).
        A negative margin accepts points that far outside.
        """
        points = np.asarray(points_ras, dtype=np.float64)
        depth_mm = (points - self.source) @ self.detector_normal
        in_front = (depth_mm > 0.0) & (depth_mm < self.sdd_mm)
        pixel = self.project(points)
        low = -0.5 + margin_px
        inside = (
            (pixel[..., 0] >= low) & (pixel[..., 0] <= self.columns - 0.5 - margin_px)
            & (pixel[..., 1] >= low) & (pixel[..., 1] <= self.rows - 0.5 - margin_px)
        )
        return in_front & inside

    # ------------------------------------------------------------------ resampling
    def resized(self, cols: int, rows: int) -> XrayGeometry:
        """The same detector area sampled with ``cols`` x ``rows`` pixels.

        The outer pixel edges stay where they are: the new spacing is
        ``du * columns / cols`` (and ``dv * rows_old / rows``), so a new pixel covers a
        block of ``f = columns / cols`` old pixels (fractional when not a divisor). The
        origin moves to the centre of the first such block: new pixel (0, 0) is centred on
        old continuous pixel ((f_u - 1)/2, (f_v - 1)/2). A point at old pixel coordinates
        (c, r) is at new coordinates ((c + 1/2)/f_u - 1/2, (r + 1/2)/f_v - 1/2), the
        mapping of area averaging (and of torch ``interpolate(align_corners=False)``).
        The detector centre, the source and u, v are unchanged.
        """
        new_size = _as_size((cols, rows))
        factor_u = self.columns / new_size[0]
        factor_v = self.rows / new_size[1]
        origin = self.pixel_to_ras((factor_u - 1.0) / 2.0, (factor_v - 1.0) / 2.0)
        du, dv = self.pixel_spacing
        return XrayGeometry(
            source=self.source.copy(),
            detector_origin=origin,
            detector_u=self.detector_u.copy(),
            detector_v=self.detector_v.copy(),
            pixel_spacing=(du * factor_u, dv * factor_v),
            size=new_size,
        )

    def scaled(self, factor: float) -> XrayGeometry:
        """Down-sample by ``factor`` (> 0; < 1 up-samples): :meth:`resized` to size/factor.

        The new size is ``max(1, round_half_up(size / factor))`` in each direction, so the
        pixel spacing becomes exactly ``spacing * factor`` when ``factor`` divides the size
        and is adjusted otherwise to keep the same detector area (see :meth:`resized` for
        where the origin goes).
        """
        if not _is_number(factor) or not math.isfinite(factor) or factor <= 0:
            raise InputError(f"scale factor must be a finite number > 0, got {factor!r}")
        return self.resized(*(max(1, math.floor(n / factor + 0.5)) for n in self.size))

    def cropped(self, col0: int, row0: int, cols: int, rows: int) -> XrayGeometry:
        """The sub-detector of ``cols`` x ``rows`` pixels whose pixel (0, 0) is this one's (col0, row0).

        Matches ``image[row0:row0 + rows, col0:col0 + cols]``; the window may extend past
        the detector (a larger virtual detector in the same plane).
        """
        return XrayGeometry(
            source=self.source.copy(),
            detector_origin=self.pixel_to_ras(col0, row0),
            detector_u=self.detector_u.copy(),
            detector_v=self.detector_v.copy(),
            pixel_spacing=self.pixel_spacing,
            size=(cols, rows),
        )


# ---------------------------------------------------------------------- field parsing
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _fmt(values: Any) -> str:
    """Short one-line rendering of a value for error messages."""
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return "[" + ", ".join(f"{x:.6g}" for x in array.ravel()) + "]"
    return repr(values)


def _as_vector(name: str, value: Any, length: int) -> np.ndarray:
    """``value`` as a finite float64 (length,) array, or InputError naming ``name``."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.size != length:
        raise InputError(f"{name} must be {length} numbers, got {value!r}")
    vector = array.astype(np.float64).reshape(length)
    if not np.all(np.isfinite(vector)):
        raise InputError(f"{name} must be finite, got {_fmt(vector)}")
    return vector


def _as_spacing(value: Any) -> tuple[float, float]:
    """(du, dv) mm, both > 0."""
    spacing = _as_vector("pixel_spacing", value, 2)
    if np.any(spacing <= 0):
        raise InputError(f"pixel_spacing must be > 0 mm, got {_fmt(spacing)}")
    return float(spacing[0]), float(spacing[1])


def _as_size(value: Any) -> tuple[int, int]:
    """(columns, rows), whole numbers >= 1 (512.0 is accepted as 512)."""
    size = _as_vector("size", value, 2)
    if np.any(size != np.round(size)):
        raise InputError(f"size must be whole numbers of pixels (columns, rows), got {_fmt(size)}")
    if np.any(size < 1):
        raise InputError(f"size must be >= 1 pixel (columns, rows), got {_fmt(size)}")
    return int(size[0]), int(size[1])


def _check_header(d: dict[str, Any]) -> None:
    """format / version / frame of a sidecar dictionary."""
    if d.get("format") != GEOMETRY_FORMAT:
        raise InputError(f"format is {d.get('format')!r}, expected {GEOMETRY_FORMAT!r}")
    version = d.get("version")
    if not (_is_number(version) and version == GEOMETRY_VERSION):
        raise InputError(f"version is {version!r}, expected {GEOMETRY_VERSION}")
    if d.get("frame") != GEOMETRY_FRAME:
        raise InputError(f"frame is {d.get('frame')!r}, expected {GEOMETRY_FRAME!r} (world RAS mm)")


# ---------------------------------------------------------------------- sidecar files
def save_geometry(geometry: XrayGeometry, path: str | os.PathLike) -> Path:
    """Write ``geometry`` as a ``spinereg-xray-geometry`` JSON file (replaces ``path``).

    Written to a temporary file beside ``path`` and renamed, so a failure leaves any
    previous file intact. Refusing to overwrite is the caller's choice
    (:func:`SpineRegistrationLib.cli.common.new_output_file`). Returns the path.
    """
    target = Path(path)
    geometry.validate()
    text = json.dumps(geometry.to_json_dict(), indent=2) + "\n"
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def load_geometry(path: str | os.PathLike) -> XrayGeometry:
    """Read and validate a ``spinereg-xray-geometry`` JSON file; InputError naming the file if bad."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"geometry file not found: {source}")
    try:
        d = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{source}: not a JSON geometry file ({error})") from error
    try:
        return XrayGeometry.from_json_dict(d)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error


# ---------------------------------------------------------------------- C-arm presets
def _rotation_deg(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """3x3 right-handed rotation by ``angle_deg`` about the unit ``axis`` (Rodrigues).

    Written here (not taken from :mod:`.pose`) to keep this module free of torch.
    """
    k = np.asarray(axis, dtype=np.float64)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    angle = math.radians(angle_deg)
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def _c_arm_frame(
    primary_deg: float, secondary_deg: float, sdd_mm: float, sid_mm: float, isocenter_ras: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source, detector centre, u, v) in RAS mm of the C-arm convention of :func:`c_arm_geometry`."""
    for name, value in (("primary_deg", primary_deg), ("secondary_deg", secondary_deg),
                        ("sdd_mm", sdd_mm), ("sid_mm", sid_mm)):
        if not _is_number(value) or not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 < sid_mm < sdd_mm:
        raise InputError(
            f"need 0 < sid_mm < sdd_mm (isocentre between source and detector), "
            f"got sid_mm={sid_mm:g}, sdd_mm={sdd_mm:g}"
        )
    isocenter = _as_vector("isocenter_ras", isocenter_ras, 3)
    # Rz(primary) about +S, then the right-handed rotation about the rotated arm's u,
    # which equals Rz(primary) @ R_{-x}(secondary) since u is (-1, 0, 0) before Rz.
    rotation = _rotation_deg((0.0, 0.0, 1.0), primary_deg) @ _rotation_deg((-1.0, 0.0, 0.0), secondary_deg)
    beam = rotation @ np.array([0.0, 1.0, 0.0])  # source -> detector
    source = isocenter - sid_mm * beam
    center = source + sdd_mm * beam
    return source, center, rotation @ np.array([-1.0, 0.0, 0.0]), rotation @ np.array([0.0, 0.0, -1.0])


def _geometry_from_center(
    source: np.ndarray, center_ras: np.ndarray, u: np.ndarray, v: np.ndarray, size: Any, pixel_spacing: Any
) -> XrayGeometry:
    """A geometry whose pixel grid is centred on ``center_ras`` (the detector centre, RAS mm)."""
    cols, rows = _as_size(size)
    du, dv = _as_spacing(pixel_spacing)
    origin = center_ras - 0.5 * (cols - 1) * du * u - 0.5 * (rows - 1) * dv * v
    return XrayGeometry(source, origin, u, v, (du, dv), (cols, rows))


def c_arm_geometry(
    primary_deg: float = 0.0,
    secondary_deg: float = 0.0,
    sdd_mm: float = DEFAULT_SDD_MM,
    sid_mm: float = DEFAULT_SID_MM,
    isocenter_ras: Any = (0.0, 0.0, 0.0),
    size: Any = DEFAULT_SIZE,
    pixel_spacing: Any = DEFAULT_PIXEL_SPACING_MM,
) -> XrayGeometry:
    """An isocentric C-arm view, in world RAS mm.

    Convention (angles in degrees, distances in mm, ``size`` = (columns, rows),
    ``pixel_spacing`` = (du, dv) mm at the detector):

    - primary = secondary = 0 is the AP view with the source posterior:
      ``source = iso + sid_mm * (0, -1, 0)``; the beam runs posterior -> anterior; the
      detector plane is perpendicular to the beam at ``sdd_mm`` from the source, centred
      on the beam axis (the principal point is the detector centre);
      ``detector_u = (-1, 0, 0)`` (columns increase toward the patient's left, so the
      patient's right shows on the viewer's left: radiological display) and
      ``detector_v = (0, 0, -1)`` (rows increase toward the feet).
    - ``primary_deg`` rotates the whole arm (source, detector, u, v) about the patient's
      superior axis (+S, RAS z) through the isocentre, right-handed (Rz). primary = 90
      is the LAT view: source on the patient's right (+x), detector on the left,
      u = (0, -1, 0) (columns increase toward posterior).
    - ``secondary_deg`` then rotates the arm about its (rotated) detector_u axis through
      the isocentre, right-handed: positive moves the detector toward the feet and the
      source toward the head (a caudal tilt of the detector, like latitude below the
      equator). Overall rotation: ``Rz(primary) @ R_{-x}(secondary)``.

    DICOM: Positioner Primary Angle (0018,1510) equals ``primary_deg`` (both put the
    detector anterior at 0 and on the patient's left (LAO) at +90); Positioner Secondary
    Angle (0018,1511) is positive toward cranial (CRA), so ``secondary_deg = -DICOM``
    (see :func:`geometry_from_dicom`).
    """
    source, center, u, v = _c_arm_frame(primary_deg, secondary_deg, sdd_mm, sid_mm, isocenter_ras)
    return _geometry_from_center(source, center, u, v, size, pixel_spacing)


def preset_geometry(name: str, **kw: Any) -> XrayGeometry:
    """Named C-arm view: "AP" (primary 0 deg) or "LAT" (primary 90 deg), case-insensitive.

    "AP" is the frontal view as spine surgeons name it (source under the table, beam
    posterior -> anterior), which DICOM's ViewPosition would call PA.

    Other :func:`c_arm_geometry` arguments (secondary_deg, sdd_mm, ...) pass through ``kw``.
    """
    key = str(name).strip().upper()
    if key not in PRESET_PRIMARY_DEG:
        raise InputError(f"unknown geometry preset {name!r}, expected one of {', '.join(PRESET_PRIMARY_DEG)}")
    return c_arm_geometry(primary_deg=PRESET_PRIMARY_DEG[key], **kw)


# ---------------------------------------------------------------------- DICOM
def geometry_from_dicom(path_or_dataset: Any, isocenter_ras: Any = (0.0, 0.0, 0.0)) -> XrayGeometry:
    """The geometry of a projection X-ray (CR, DX, RF, XA) from its DICOM tags.

    ``path_or_dataset`` is a file path or a ``pydicom.Dataset``. Tags used:

    - Columns, Rows -> size; ImagerPixelSpacing (0018,1164) -> pixel_spacing. DICOM orders
      it (row spacing, column spacing), i.e. (dv, du). Required: PixelSpacing alone is
      measured in the patient (possibly magnification-corrected), not on the detector.
    - DistanceSourceToDetector (0018,1110) -> sdd_mm, default ``DEFAULT_SDD_MM``.
    - DistanceSourceToPatient (0018,1111) -> sid_mm (source to isocentre; for DX the
      source to the table/bucky, taken as the isocentre). If absent,
      ``sdd / EstimatedRadiographicMagnificationFactor`` (0018,1114), else
      ``sdd * DEFAULT_SID_MM / DEFAULT_SDD_MM`` (the default magnification; 620 mm when
      sdd is defaulted too).
    - PositionerPrimaryAngle (0018,1510) -> primary_deg unchanged;
      PositionerSecondaryAngle (0018,1511) -> secondary_deg = -value. PS3.3 C.8.7.5.1.2:
      the angles give the detector's position; at 0/0 the patient faces the detector
      (beam posterior -> anterior, our AP preset); primary +90 is the patient's left
      (LAO), -90 the right (RAO), our LAT at +90 likewise has the detector on the left;
      secondary +90 is cranial, and our secondary is positive caudal, hence the sign.
      Used when PositionerType is absent or CARM; otherwise, or when absent, ViewPosition
      (PA 0, AP 180, LL 90, RL -90) gives the primary angle, else 0 (both default 0).
    - PatientOrientation (0020,0020), when it names directions in the detector plane,
      chooses the signs (and order) of u and v among the arm's +-u, +-v, so flipped or
      transposed stored images keep the right geometry.

    The patient axes are taken to be the world RAS axes and the isocentre is
    ``isocenter_ras`` (RAS mm): the registration must still find the real pose.
    """
    dataset, label = _read_dicom(path_or_dataset)
    try:
        return _geometry_from_dataset(dataset, isocenter_ras)
    except InputError as error:
        raise InputError(f"{label}: {error}") from error


def _read_dicom(path_or_dataset: Any) -> tuple[Any, str]:
    """(pydicom Dataset, label for messages); InputError if pydicom is missing or the file is bad."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as error:
        raise InputError(
            "reading DICOM geometry needs pydicom: pip install pydicom (or SpineRegistration[dicom])"
        ) from error
    if isinstance(path_or_dataset, pydicom.Dataset):
        return path_or_dataset, "DICOM dataset"
    path = Path(path_or_dataset)
    if not path.is_file():
        raise InputError(f"DICOM file not found: {path}")
    try:
        return pydicom.dcmread(path, stop_before_pixels=True), str(path)
    except (InvalidDicomError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable DICOM file ({error})") from error


def _dicom_value(dataset: Any, keyword: str) -> Any:
    """The value of ``keyword``, or None when absent or empty."""
    value = dataset.get(keyword)
    return None if value is None or value == "" else value


def _dicom_float(dataset: Any, keyword: str) -> float | None:
    value = _dicom_value(dataset, keyword)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{keyword} is {value!r}, expected a number") from error


def _geometry_from_dataset(dataset: Any, isocenter_ras: Any) -> XrayGeometry:
    modality = str(dataset.get("Modality", "")).upper()
    if modality not in DICOM_XRAY_MODALITIES:
        raise InputError(
            f"modality is {modality or 'missing'!r}, expected a projection X-ray ({', '.join(DICOM_XRAY_MODALITIES)})"
        )
    columns, rows = _dicom_float(dataset, "Columns"), _dicom_float(dataset, "Rows")
    if columns is None or rows is None:
        raise InputError("Rows/Columns missing: cannot size the detector")
    spacing = _dicom_value(dataset, "ImagerPixelSpacing")
    if spacing is None:
        raise InputError(
            "ImagerPixelSpacing (0018,1164) missing: the detector pixel spacing is unknown "
            "(write a sidecar with `spinereg geometry` instead)"
        )
    row_spacing, column_spacing = _as_vector("ImagerPixelSpacing", [float(x) for x in spacing], 2)
    sdd_mm = _dicom_float(dataset, "DistanceSourceToDetector") or DEFAULT_SDD_MM
    primary_deg, secondary_deg = _dicom_angles_deg(dataset)
    source, center, u, v = _c_arm_frame(
        primary_deg, secondary_deg, sdd_mm, _dicom_sid_mm(dataset, sdd_mm), isocenter_ras
    )
    u, v = _orient_uv(_dicom_value(dataset, "PatientOrientation"), u, v)
    return _geometry_from_center(source, center, u, v, (columns, rows), (column_spacing, row_spacing))


def _dicom_sid_mm(dataset: Any, sdd_mm: float) -> float:
    """Source-isocentre distance, mm: DistanceSourceToPatient, else sdd / magnification, else default ratio."""
    sid_mm = _dicom_float(dataset, "DistanceSourceToPatient")
    if sid_mm:
        return sid_mm
    magnification = _dicom_float(dataset, "EstimatedRadiographicMagnificationFactor")
    if magnification and magnification > 1.0:
        return sdd_mm / magnification
    return sdd_mm * DEFAULT_SID_MM / DEFAULT_SDD_MM


def _dicom_angles_deg(dataset: Any) -> tuple[float, float]:
    """(primary_deg, secondary_deg) in the :func:`c_arm_geometry` convention (see geometry_from_dicom)."""
    primary = secondary = None
    if str(dataset.get("PositionerType", "") or "").upper() in ("", "CARM"):
        primary = _dicom_float(dataset, "PositionerPrimaryAngle")
        secondary = _dicom_float(dataset, "PositionerSecondaryAngle")
    if primary is None:
        view = str(dataset.get("ViewPosition", "") or "").upper()
        primary = VIEW_POSITION_PRIMARY_DEG.get(view, 0.0)
    # DICOM secondary is positive toward cranial; ours is positive caudal (right-hand rule about u).
    return primary, -(secondary or 0.0)


def _orientation_direction(text: str) -> np.ndarray | None:
    """A PatientOrientation entry ("L", "FP", ...) as a RAS unit vector, or None if unusable."""
    letters = str(text).strip().upper()
    if not letters or any(ch not in _ORIENTATION_LETTERS_RAS for ch in letters):
        return None
    direction = np.sum([_ORIENTATION_LETTERS_RAS[ch] for ch in letters], axis=0)
    norm = np.linalg.norm(direction)
    return direction / norm if norm > 0 else None


def _orient_uv(orientation: Any, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pick image (u, v) among the arm's +-u, +-v to match PatientOrientation (row dir, column dir).

    Returns the arm's (u, v) unchanged when the tag is absent, unparsable, or names a
    direction more than 60 degrees away from every candidate (e.g. along the beam).
    """
    if isinstance(orientation, str) or not isinstance(orientation, Sequence) or len(orientation) != 2:
        return u, v
    want_u, want_v = (_orientation_direction(entry) for entry in orientation)
    if want_u is None or want_v is None:
        return u, v
    first, second = (u, v) if abs(u @ want_u) >= abs(v @ want_u) else (v, u)
    if abs(first @ want_u) < 0.5 or abs(second @ want_v) < 0.5:
        return u, v
    return np.sign(first @ want_u) * first, np.sign(second @ want_v) * second
