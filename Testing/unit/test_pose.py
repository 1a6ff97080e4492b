"""Pose conventions: parameter round trips, the centre convention, group laws, so(3) exp."""

import numpy as np
import pytest
import torch

from SpineRegistrationLib.core.pose import (
    euler_to_rotation,
    invert_rigid,
    is_rigid,
    matrix_to_params,
    params_to_matrix,
    params_to_matrix_torch,
    rotation_to_euler,
    rotvec_to_matrix,
    transform_points,
)

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("seed", range(5))
def test_params_round_trip(seed):
    rng = np.random.default_rng(seed)
    params = np.concatenate([rng.uniform(-60, 60, 3), rng.uniform(-30, 30, 3)])
    center = rng.uniform(-100, 100, 3)
    matrix = params_to_matrix(params, center)
    assert is_rigid(matrix)
    np.testing.assert_allclose(matrix_to_params(matrix, center), params, atol=1e-9)


def test_rotation_keeps_centre_and_translation_moves_it():
    center = np.array([10.0, -20.0, 35.0])
    rotation_only = params_to_matrix([20, -10, 30, 0, 0, 0], center)
    np.testing.assert_allclose(rotation_only @ np.append(center, 1), np.append(center, 1), atol=1e-12)
    moved = params_to_matrix([20, -10, 30, 1, 2, 3], center)
    np.testing.assert_allclose(moved[:3, :3] @ center + moved[:3, 3], center + [1, 2, 3], atol=1e-12)


def test_euler_order_is_z_y_x():
    """M = Rz · Ry · Rx: rotating x-axis by rx alone leaves x fixed; rz alone rotates x toward y."""
    rz90 = params_to_matrix([0, 0, 90, 0, 0, 0], np.zeros(3))[:3, :3]
    np.testing.assert_allclose(rz90 @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    composed = params_to_matrix([90, 90, 0, 0, 0, 0], np.zeros(3))[:3, :3]
    rx = params_to_matrix([90, 0, 0, 0, 0, 0], np.zeros(3))[:3, :3]
    ry = params_to_matrix([0, 90, 0, 0, 0, 0], np.zeros(3))[:3, :3]
    np.testing.assert_allclose(composed, ry @ rx, atol=1e-12)


def test_torch_matches_numpy_and_batches():
    params_deg = np.concatenate([RNG.uniform(-40, 40, (4, 3)), RNG.uniform(-20, 20, (4, 3))], 1)
    center = RNG.uniform(-50, 50, 3)
    params_rad = torch.tensor(np.concatenate([np.radians(params_deg[:, :3]), params_deg[:, 3:]], 1))
    batched = params_to_matrix_torch(params_rad, torch.tensor(center)).numpy()
    for row, matrix in zip(params_deg, batched):
        np.testing.assert_allclose(matrix, params_to_matrix(row, center), atol=1e-12)


def test_inverse_and_compose_give_identity():
    params = torch.tensor(np.concatenate([RNG.uniform(-1, 1, (3, 3)), RNG.uniform(-20, 20, (3, 3))], 1))
    matrix = params_to_matrix_torch(params, torch.zeros(3, dtype=torch.float64))
    eye = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    torch.testing.assert_close(matrix @ invert_rigid(matrix), eye)
    points = torch.tensor(RNG.normal(size=(3, 5, 3)))
    torch.testing.assert_close(transform_points(invert_rigid(matrix), transform_points(matrix, points)), points)


def test_euler_round_trip_torch():
    angles = torch.tensor(RNG.uniform(-1.2, 1.2, (6, 3)))
    torch.testing.assert_close(rotation_to_euler(euler_to_rotation(angles)), angles)


def test_rotvec_matches_axis_angle_and_is_smooth_at_zero():
    axis = torch.tensor([1.0, 2.0, -2.0], dtype=torch.float64) / 3.0
    angle = 0.7
    rotation = rotvec_to_matrix((axis * angle)[None])[0]
    # Rodrigues by hand: rotating a vector perpendicular to the axis by `angle`.
    perpendicular = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64) / 5**0.5
    expected = perpendicular * np.cos(angle) + torch.linalg.cross(axis, perpendicular) * np.sin(angle)
    torch.testing.assert_close(rotation @ perpendicular, expected)
    torch.testing.assert_close(rotation @ axis, axis)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(rotvec_to_matrix, (zero,))
    small = torch.full((1, 3), 1e-3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(rotvec_to_matrix, (small,))


def test_is_rigid_rejects_scaling_and_reflection():
    assert not is_rigid(np.diag([2.0, 1, 1, 1]))
    assert not is_rigid(np.diag([-1.0, 1, 1, 1]))
    assert not is_rigid(np.ones((3, 3)))


def test_bad_parameter_count():
    with pytest.raises(ValueError, match="6 values"):
        params_to_matrix([1, 2, 3], np.zeros(3))
