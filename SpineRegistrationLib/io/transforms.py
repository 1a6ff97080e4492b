"""Rigid/affine transforms on disk <-> ``matrix_ras`` (4x4, CT RAS -> world RAS).

``matrix_ras`` is the modelling transform (DESIGN.md): world = M @ p, the
``matrixTransformToParent`` of a Slicer linear transform node that is the CT's parent.

ITK transform files (``.h5``, ``.tfm``, ``.txt``, ``.mat``) hold the *resampling*
transform (fixed -> moving, here world -> CT) in *LPS*. So the file holds
``LPS_TO_RAS @ inv(M) @ LPS_TO_RAS``, and Slicer's vtkMRMLTransformStorageNode, which
undoes both conventions, loads it as exactly M. Slicer itself writes linear nodes the
same way (an ``AffineTransform_double_3_3``, sometimes with a centre), and any linear
ITK transform (Euler, Versor, Similarity, composite of linear ones) is read.

Initial poses may also come as JSON: ``{"matrix_ras": [[..4..] x4]}`` or a bare 4x4 list.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..core.frames import matrix_lps_to_ras, matrix_ras_to_lps
from .jsonfile import read_json

ITK_TRANSFORM_EXTENSIONS = (".h5", ".hdf5", ".tfm", ".txt", ".mat")
_RIGID_TOLERANCE = 1e-4


def _check_extension(path: Path) -> None:
    if not path.name.lower().endswith(ITK_TRANSFORM_EXTENSIONS):
        raise InputError(f"{path}: expected an ITK transform file ({', '.join(ITK_TRANSFORM_EXTENSIONS)})")


def _as_matrix(matrix, source: str) -> np.ndarray:
    """Anything array-like -> finite (4, 4) float64 with last row 0 0 0 1, else InputError."""
    try:
        matrix = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: matrix is not numeric") from None
    if matrix.shape != (4, 4):
        raise InputError(f"{source}: expected a 4x4 matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"{source}: matrix holds NaN or infinite values")
    if not np.allclose(matrix[3], [0, 0, 0, 1], atol=_RIGID_TOLERANCE):
        raise InputError(f"{source}: last row must be 0 0 0 1, got {matrix[3].tolist()}")
    return matrix


def check_rigid(matrix, source: str = "matrix") -> np.ndarray:
    """Return ``matrix`` as (4, 4) float64 if it is rigid (orthonormal rotation, det +1,
    last row 0 0 0 1, within 1e-4); InputError naming ``source`` otherwise."""
    matrix = _as_matrix(matrix, source)
    rotation = matrix[:3, :3]
    error = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if error > _RIGID_TOLERANCE:
        raise InputError(f"{source}: not a rigid transform (rotation part is not orthonormal, error {error:.2g})")
    if np.linalg.det(rotation) < 0:
        raise InputError(f"{source}: not a rigid transform (rotation part is a reflection, det -1)")
    return matrix


def resampling_transform(matrix_ras: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK transform of a (4, 4) matrix_ras (CT RAS -> world): its inverse (world -> CT,
    the resampling direction) in LPS, as ITK files and ``sitk.Resample`` take it."""
    resampling_lps = matrix_ras_to_lps(np.linalg.inv(matrix_ras))
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(resampling_lps[:3, :3].ravel().tolist())
    transform.SetTranslation(resampling_lps[:3, 3].tolist())
    return transform


def write_transform(matrix_ras, path: str | os.PathLike) -> None:
    """Write a 4x4 CT RAS -> world RAS matrix as an ITK AffineTransform file Slicer loads as it."""
    path = Path(path)
    _check_extension(path)
    matrix_ras = _as_matrix(matrix_ras, "transform to write")
    if abs(np.linalg.det(matrix_ras[:3, :3])) < 1e-12:
        raise InputError("transform to write is singular (cannot be inverted)")
    try:
        sitk.WriteTransform(resampling_transform(matrix_ras), str(path))
    except RuntimeError:
        raise InputError(f"cannot write transform {path} (folder missing or not writable)") from None


def _affine_of(transform: sitk.Transform) -> np.ndarray:
    """(4, 4) matrix of a linear SimpleITK transform, from where it sends the origin and
    the unit points (works for every linear kind, centre and composites included)."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(unit)) - origin
    matrix[:3, 3] = origin
    return matrix


def read_transform(path: str | os.PathLike) -> np.ndarray:
    """Read a linear ITK transform file -> (4, 4) matrix_ras (CT RAS -> world RAS).

    Raises InputError for a missing/corrupt file or a non-linear (deformable) transform.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file not found: {path}")
    _check_extension(path)
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"cannot read {path} as an ITK transform (corrupt or unsupported)") from None
    if not transform.IsLinear():
        raise InputError(f"{path} holds a non-linear transform ({transform.GetName()}); a rigid/affine one is expected")
    resampling_ras = matrix_lps_to_ras(_affine_of(transform))
    if abs(np.linalg.det(resampling_ras[:3, :3])) < 1e-12:
        raise InputError(f"{path} holds a singular transform (cannot be inverted)")
    return np.linalg.inv(resampling_ras)


def read_matrix_json(path: str | os.PathLike) -> np.ndarray:
    """Read a rigid initial pose from JSON: ``{"matrix_ras": 4x4}`` or a bare 4x4 list.

    Returns (4, 4) matrix_ras (CT RAS -> world RAS). InputError if not rigid.
    """
    data = read_json(path, "initial transform JSON")
    if isinstance(data, dict):
        if "matrix_ras" not in data:
            raise InputError(
                f"{path}: expected a 'matrix_ras' key (4x4, CT RAS -> world RAS), found keys {sorted(data)}"
            )
        data = data["matrix_ras"]
    return check_rigid(data, str(path))


def read_rigid_matrix(path: str | os.PathLike) -> np.ndarray:
    """An initial pose from ``.json`` (``read_matrix_json``) or an ITK transform file,
    checked to be rigid. Returns (4, 4) matrix_ras."""
    if str(path).lower().endswith(".json"):
        return read_matrix_json(path)
    return check_rigid(read_transform(path), str(path))
