"""The X-ray detector geometry: where the focal spot and each detector pixel are, in world RAS mm.

Follows the ``spinereg-xray-geometry`` v1 contract of DESIGN.md: pixel (i, j) (column i,
row j) sits at ``detector_origin + i*du*detector_u + j*dv*detector_v``. Pixel coordinates
are continuous: pixel (i, j) covers [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2], so the image
spans columns -1/2 ... columns - 1/2.

The JSON sidecar file is read and written by :mod:`SpineRegistrationLib.io.geometry_json`,
the DICOM tags by :mod:`SpineRegistrationLib.io.dicom_geometry`; C-arm presets are in
:mod:`.c_arm`. numpy only (no torch), so the CLI and loaders stay light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

#: JSON sidecar identification (DESIGN.md).
GEOMETRY_FORMAT = "spinereg-xray-geometry"
GEOMETRY_VERSION = 1
GEOMETRY_FRAME = "RAS"

#: Tolerance on |u| = |v| = 1 and u . v = 0 (dimensionless), and on the source's
#: distance to the detector plane (mm).
UNIT_TOLERANCE = 1e-3
PLANE_TOLERANCE_MM = 1e-3


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
        self.source = as_vector("source", self.source, 3)
        self.detector_origin = as_vector("detector_origin", self.detector_origin, 3)
        self.detector_u = as_vector("detector_u", self.detector_u, 3)
        self.detector_v = as_vector("detector_v", self.detector_v, 3)
        self.pixel_spacing = as_spacing(self.pixel_spacing)
        self.size = as_size(self.size)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise InputError unless every field is well formed (shapes, finite, spacing > 0 mm,
        size >= 1 whole pixels), u and v are orthonormal (within ``UNIT_TOLERANCE``) and the
        source lies off the detector plane (by more than ``PLANE_TOLERANCE_MM``).
        """
        for name in ("source", "detector_origin", "detector_u", "detector_v"):
            as_vector(name, getattr(self, name), 3)
        as_spacing(self.pixel_spacing)
        as_size(self.size)
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
                f"source {format_values(self.source)} lies on the detector plane (distance {abs(distance_mm):.3g} mm), "
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
        check_header(d)
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

    def sees_any(self, points_ras: np.ndarray) -> bool:
        """Does any part of the convex hull of ``points_ras`` ((N, 3) RAS mm, e.g. a box's
        corners) reach the image? True when the bounding rectangle of the projections of the
        points in front of the source overlaps the detector (conservative for a box cut by
        the source plane)."""
        points = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
        depth_mm = (points - self.source) @ self.detector_normal
        front = points[(depth_mm > 0.0) & (depth_mm < self.sdd_mm)]
        if len(front) == 0:
            return False
        pixel = self.project(front)
        low, high = pixel.min(0), pixel.max(0)
        return bool(high[0] >= -0.5 and low[0] <= self.columns - 0.5 and high[1] >= -0.5 and low[1] <= self.rows - 0.5)

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
        new_size = as_size((cols, rows))
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
        if not is_number(factor) or not math.isfinite(factor) or factor <= 0:
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
def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def format_values(values: Any) -> str:
    """Short one-line rendering of a value for error messages."""
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return "[" + ", ".join(f"{x:.6g}" for x in array.ravel()) + "]"
    return repr(values)


def as_vector(name: str, value: Any, length: int) -> np.ndarray:
    """``value`` as a finite float64 (length,) array, or InputError naming ``name``."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.size != length:
        raise InputError(f"{name} must be {length} numbers, got {value!r}")
    vector = array.astype(np.float64).reshape(length)
    if not np.all(np.isfinite(vector)):
        raise InputError(f"{name} must be finite, got {format_values(vector)}")
    return vector


def as_spacing(value: Any) -> tuple[float, float]:
    """(du, dv) mm, both > 0."""
    spacing = as_vector("pixel_spacing", value, 2)
    if np.any(spacing <= 0):
        raise InputError(f"pixel_spacing must be > 0 mm, got {format_values(spacing)}")
    return float(spacing[0]), float(spacing[1])


def as_size(value: Any) -> tuple[int, int]:
    """(columns, rows), whole numbers >= 1 (512.0 is accepted as 512)."""
    size = as_vector("size", value, 2)
    if np.any(size != np.round(size)):
        raise InputError(f"size must be whole numbers of pixels (columns, rows), got {format_values(size)}")
    if np.any(size < 1):
        raise InputError(f"size must be >= 1 pixel (columns, rows), got {format_values(size)}")
    return int(size[0]), int(size[1])


def check_header(d: dict[str, Any]) -> None:
    """format / version / frame of a sidecar dictionary."""
    if d.get("format") != GEOMETRY_FORMAT:
        raise InputError(f"format is {d.get('format')!r}, expected {GEOMETRY_FORMAT!r}")
    version = d.get("version")
    if not (is_number(version) and version == GEOMETRY_VERSION):
        raise InputError(f"version is {version!r}, expected {GEOMETRY_VERSION}")
    if d.get("frame") != GEOMETRY_FRAME:
        raise InputError(f"frame is {d.get('frame')!r}, expected {GEOMETRY_FRAME!r} (world RAS mm)")
