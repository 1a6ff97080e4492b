"""Rigid poses: the 6 parameters of DESIGN.md <-> 4x4 matrices, in numpy and batched torch.

A pose moves a point p in CT RAS to world RAS: ``world = M @ p``. Its parameters are
(rx, ry, rz) rotation angles and (tx, ty, tz) mm about a centre c (the vertebra centroid,
CT RAS mm)::

    M = T(c + t) · Rz(rz) · Ry(ry) · Rx(rx) · T(-c)

so rotations leave the centre in place and t is the centre's displacement. Angles are in
degrees at the edges (CLI, JSON, GUI: ``*_deg``) and radians inside (torch functions).
For gradient descent the optimiser uses a rotation vector (so(3) exponential, no gimbal
lock near the identity) plus the centre's translation: :func:`rotvec_to_matrix`. The poly-rigid
deformation blends poses in se(3): :func:`se3_log` and :func:`se3_exp`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .frames import homogeneous


# --------------------------------------------------------------------------- numpy edge
def euler_zyx_to_rotation(angles_deg: np.ndarray) -> np.ndarray:
    """(rx, ry, rz) degrees -> 3x3 rotation Rz(rz) @ Ry(ry) @ Rx(rx)."""
    return euler_to_rotation(torch.as_tensor(np.radians(angles_deg), dtype=torch.float64)[None])[0].numpy()


def rotation_to_euler_zyx(rotation: np.ndarray) -> np.ndarray:
    """3x3 rotation -> (rx, ry, rz) degrees with R = Rz Ry Rx, ry in [-90, 90]."""
    r = torch.as_tensor(np.asarray(rotation, dtype=np.float64))[None]
    return np.degrees(rotation_to_euler(r)[0].numpy())


def params_to_matrix(params: np.ndarray, center_ras: np.ndarray) -> np.ndarray:
    """(rx, ry, rz deg, tx, ty, tz mm) about ``center_ras`` -> 4x4 CT RAS -> world RAS."""
    params = np.asarray(params, dtype=np.float64)
    if params.shape != (6,):
        raise ValueError(f"pose parameters must be 6 values (rx, ry, rz, tx, ty, tz), got shape {params.shape}")
    center = np.asarray(center_ras, dtype=np.float64)
    rotation = euler_zyx_to_rotation(params[:3])
    return homogeneous(rotation, center + params[3:] - rotation @ center)


def matrix_to_params(matrix: np.ndarray, center_ras: np.ndarray) -> np.ndarray:
    """Inverse of :func:`params_to_matrix`: 4x4 -> (rx, ry, rz deg, tx, ty, tz mm)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    center = np.asarray(center_ras, dtype=np.float64)
    rotation = matrix[:3, :3]
    translation = matrix[:3, 3] + rotation @ center - center
    return np.concatenate([rotation_to_euler_zyx(rotation), translation])


def is_rigid(matrix: np.ndarray, tol: float = 1e-4) -> bool:
    """True if ``matrix`` is a 4x4 proper rigid transform (orthonormal, det +1, last row 0001)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        return False
    rotation = matrix[:3, :3]
    return bool(
        np.allclose(rotation.T @ rotation, np.eye(3), atol=tol)
        and abs(np.linalg.det(rotation) - 1.0) < tol
        and np.allclose(matrix[3], [0, 0, 0, 1], atol=tol)
    )


# --------------------------------------------------------------------------- torch, batched
def euler_to_rotation(angles_rad: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles (rx, ry, rz) in radians -> (B, 3, 3) Rz @ Ry @ Rx."""
    cx, cy, cz = torch.cos(angles_rad).unbind(-1)
    sx, sy, sz = torch.sin(angles_rad).unbind(-1)
    row0 = torch.stack([cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx], -1)
    row1 = torch.stack([sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx], -1)
    row2 = torch.stack([-sy, cy * sx, cy * cx], -1)
    return torch.stack([row0, row1, row2], -2)


def rotation_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotation -> (B, 3) angles (rx, ry, rz) in radians, R = Rz Ry Rx."""
    ry = torch.asin(torch.clamp(-rotation[..., 2, 0], -1.0, 1.0))
    rx = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    rz = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return torch.stack([rx, ry, rz], -1)


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """(B, 3) rotation vectors (axis * angle, radians) -> (B, 3, 3), the so(3) exponential.

    Rodrigues' formula with Taylor expansions near zero so gradients stay finite at the
    identity (written here rather than taken from a library because it must be batched,
    differentiable at 0 and free of extra dependencies).
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]  # (B, 1, 1)
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta_safe = torch.sqrt(theta2_safe)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta_safe) / theta_safe)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta_safe)) / theta2_safe)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye + a * skew + b * (skew @ skew)


def _skew(vector: torch.Tensor) -> torch.Tensor:
    """(B, 3) -> (B, 3, 3) cross-product matrices."""
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack(
        [torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1), torch.stack([-y, x, zero], -1)], -2
    )


def _so3_series(theta2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sin(t)/t, (1 - cos t)/t^2 and (t - sin t)/t^3 of (B, 1, 1) t^2, Taylor near 0."""
    small = theta2 < 1e-6
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (theta - torch.sin(theta)) / (theta2_safe * theta))
    return a, b, c


def se3_exp(twist: torch.Tensor) -> torch.Tensor:
    """(B, 6) twists (rotation vector rad, then translation part mm) -> (B, 4, 4) rigid matrices.

    The SE(3) exponential: R = exp([w]), t = V(w) v with V = I + b [w] + c [w]^2. With
    :func:`se3_log` it is the log-Euclidean blending of rigid transforms (poly-rigid
    deformation). Written by hand for the reason of :func:`rotvec_to_matrix`.
    """
    omega, v = twist[..., :3], twist[..., 3:]
    skew = _skew(omega)
    _, b, c = _so3_series((omega * omega).sum(-1, keepdim=True)[..., None])
    eye = torch.eye(3, dtype=twist.dtype, device=twist.device).expand_as(skew)
    jacobian = eye + b * skew + c * (skew @ skew)
    top = torch.cat([rotvec_to_matrix(omega), (jacobian @ v[..., None])], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def se3_log(matrix: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) rigid matrices with rotation angle < 180 deg -> (B, 6) twists, the inverse of :func:`se3_exp`."""
    rotation, translation = matrix[..., :3, :3], matrix[..., :3, 3]
    cos = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    if bool((theta > math.pi - 1e-3).any()):
        raise ValueError("se3_log: a rotation of (nearly) 180 degrees has no unique logarithm")
    axis_sin = torch.stack(
        [rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
         rotation[..., 1, 0] - rotation[..., 0, 1]], -1) / 2.0  # sin(theta) * axis
    a, b, _ = _so3_series((theta * theta)[..., None, None])
    omega = axis_sin / a[..., 0]
    skew = _skew(omega)
    theta2 = (theta * theta)[..., None, None]
    small = theta2 < 1e-6
    # V^-1 = I - [w]/2 + (1 - a / (2 b)) / t^2 [w]^2
    coefficient = torch.where(small, 1.0 / 12.0 + theta2 / 720.0,
                              (1.0 - a / (2.0 * b)) / torch.where(small, torch.ones_like(theta2), theta2))
    eye = torch.eye(3, dtype=matrix.dtype, device=matrix.device).expand_as(skew)
    inverse_jacobian = eye - 0.5 * skew + coefficient * (skew @ skew)
    return torch.cat([omega, (inverse_jacobian @ translation[..., None])[..., 0]], -1)


def pose_matrix(rotation: torch.Tensor, translation: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Rotation (B, 3, 3) about ``center`` (B, 3) or (3,), then centre moved by (B, 3) mm -> (B, 4, 4)."""
    center = center.expand_as(translation)
    offset = center + translation - (rotation @ center[..., None])[..., 0]
    top = torch.cat([rotation, offset[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], -2)


def params_to_matrix_torch(params: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """(B, 6) (rx, ry, rz rad, tx, ty, tz mm) about ``center`` -> (B, 4, 4); differentiable."""
    return pose_matrix(euler_to_rotation(params[..., :3]), params[..., 3:], center)


def invert_rigid(matrix: torch.Tensor) -> torch.Tensor:
    """(B, 4, 4) rigid -> its inverse, using R^T instead of a general inverse."""
    rotation_t = matrix[..., :3, :3].transpose(-1, -2)
    translation = -(rotation_t @ matrix[..., :3, 3:])
    top = torch.cat([rotation_t, translation], -1)
    return torch.cat([top, matrix[..., 3:, :]], -2)


def transform_points(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (B, 4, 4) to (B, N, 3) points (or (N, 3), broadcast) -> (B, N, 3)."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): the continuous 6D rotation representation (Zhou et al., CVPR 2019).

    The 6 numbers are two 3-vectors; Gram-Schmidt turns them into the first two columns of
    the rotation, their cross product is the third. Any input except parallel vectors
    maps to a rotation, which is what makes it suited to regression.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, the inverse of :func:`rotation_6d_to_matrix`."""
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1]], dim=-1)


def geodesic_deg(rotation_a: torch.Tensor, rotation_b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) x2 -> (...) angle of R_a^T R_b in degrees (differentiable, clamped off +-1)."""
    trace = (rotation_a * rotation_b).sum((-1, -2))
    cosine = ((trace - 1.0) / 2.0).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    return torch.rad2deg(torch.acos(cosine))
