"""X-ray geometry from the DICOM tags of a projection X-ray (CR, DX, RF, XA), through pydicom."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry import DEFAULT_SDD_MM, DEFAULT_SID_MM, XrayGeometry, as_vector, c_arm_frame, geometry_from_center

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
    row_spacing, column_spacing = as_vector("ImagerPixelSpacing", [float(x) for x in spacing], 2)
    sdd_mm = _dicom_float(dataset, "DistanceSourceToDetector") or DEFAULT_SDD_MM
    primary_deg, secondary_deg = _dicom_angles_deg(dataset)
    source, center, u, v = c_arm_frame(
        primary_deg, secondary_deg, sdd_mm, _dicom_sid_mm(dataset, sdd_mm), isocenter_ras
    )
    u, v = _orient_uv(_dicom_value(dataset, "PatientOrientation"), u, v)
    return geometry_from_center(source, center, u, v, (columns, rows), (column_spacing, row_spacing))


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
