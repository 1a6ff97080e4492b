"""C-arm views: the isocentric AP/LAT/oblique geometry from angles and distances (DESIGN.md defaults)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError
from .detector import XrayGeometry, as_size, as_spacing, as_vector, is_number

#: C-arm defaults: source-detector and source-isocentre distances (mm), detector size
#: (columns, rows) and pixel spacing (du, dv) in mm at the detector.
DEFAULT_SDD_MM = 1020.0
DEFAULT_SID_MM = 620.0
DEFAULT_SIZE = (512, 512)
DEFAULT_PIXEL_SPACING_MM = (0.6, 0.6)

#: Named views -> primary angle in degrees (see :func:`c_arm_geometry`).
PRESET_PRIMARY_DEG = {"AP": 0.0, "LAT": 90.0}


# ---------------------------------------------------------------------- C-arm presets
def _rotation_deg(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """3x3 right-handed rotation by ``angle_deg`` about the unit ``axis`` (Rodrigues).

    Written here (not taken from :mod:`.pose`) to keep this module free of torch.
    """
    k = np.asarray(axis, dtype=np.float64)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    angle = math.radians(angle_deg)
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def c_arm_frame(
    primary_deg: float, secondary_deg: float, sdd_mm: float, sid_mm: float, isocenter_ras: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(source, detector centre, u, v) in RAS mm of the C-arm convention of :func:`c_arm_geometry`."""
    for name, value in (("primary_deg", primary_deg), ("secondary_deg", secondary_deg),
                        ("sdd_mm", sdd_mm), ("sid_mm", sid_mm)):
        if not is_number(value) or not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
    if not 0.0 < sid_mm < sdd_mm:
        raise InputError(
            f"need 0 < sid_mm < sdd_mm (isocentre between source and detector), "
            f"got sid_mm={sid_mm:g}, sdd_mm={sdd_mm:g}"
        )
    isocenter = as_vector("isocenter_ras", isocenter_ras, 3)
    # Rz(primary) about +S, then the right-handed rotation about the rotated arm's u,
    # which equals Rz(primary) @ R_{-x}(secondary) since u is (-1, 0, 0) before Rz.
    rotation = _rotation_deg((0.0, 0.0, 1.0), primary_deg) @ _rotation_deg((-1.0, 0.0, 0.0), secondary_deg)
    beam = rotation @ np.array([0.0, 1.0, 0.0])  # source -> detector
    source = isocenter - sid_mm * beam
    center = source + sdd_mm * beam
    return source, center, rotation @ np.array([-1.0, 0.0, 0.0]), rotation @ np.array([0.0, 0.0, -1.0])


def geometry_from_center(
    source: np.ndarray, center_ras: np.ndarray, u: np.ndarray, v: np.ndarray, size: Any, pixel_spacing: Any
) -> XrayGeometry:
    """A geometry whose pixel grid is centred on ``center_ras`` (the detector centre, RAS mm)."""
    cols, rows = as_size(size)
    du, dv = as_spacing(pixel_spacing)
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
    source, center, u, v = c_arm_frame(primary_deg, secondary_deg, sdd_mm, sid_mm, isocenter_ras)
    return geometry_from_center(source, center, u, v, size, pixel_spacing)


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
