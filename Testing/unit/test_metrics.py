"""Registration metrics against analytic answers: mTRE, rotation/translation errors, points, rates, capture range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SpineRegistrationLib.core.frames import homogeneous
from SpineRegistrationLib.core.metrics import (
    capture_range,
    mtre_mm,
    rotation_error_deg,
    success_rates,
    translation_error_mm,
    vertebra_points,
)
from SpineRegistrationLib.core.pose import euler_zyx_to_rotation, params_to_matrix
from SpineRegistrationLib.core.volume import Volume


def _rotation_about(axis, angle_deg) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(angle_deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def test_pure_translation_gives_its_length_for_any_points():
    rng = np.random.default_rng(1)
    points = rng.normal(scale=30.0, size=(200, 3))
    true = params_to_matrix([5.0, -3.0, 8.0, 1.0, 2.0, 3.0], [10.0, -20.0, 5.0])
    shift = np.array([3.0, -4.0, 12.0])  # |shift| = 13
    estimate = homogeneous(np.eye(3), shift) @ true
    assert mtre_mm(estimate, true, points) == pytest.approx(13.0, abs=1e-9)
    assert mtre_mm(true, true, points) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("angle_deg", [0.5, 10.0, 90.0, 180.0])
def test_rotation_about_the_centroid_of_a_circle_gives_the_chord(angle_deg):
    """Points on a circle of radius r rotated about its centre and normal move by 2 r sin(theta / 2)."""
    radius, center = 25.0, np.array([12.0, -7.0, 40.0])
    normal = np.array([1.0, 2.0, 2.0]) / 3.0
    u = np.cross(normal, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    phi = np.linspace(0, 2 * np.pi, 73)[:-1]
    points = center + radius * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    rotation = _rotation_about(normal, angle_deg)
    estimate = homogeneous(rotation, center - rotation @ center)
    expected = 2 * radius * math.sin(math.radians(angle_deg) / 2)
    assert mtre_mm(estimate, np.eye(4), points) == pytest.approx(expected, rel=1e-9)
    # The centre does not move: no translation error, the rotation error is the angle.
    assert translation_error_mm(estimate, np.eye(4), center) == pytest.approx(0.0, abs=1e-9)
    assert rotation_error_deg(estimate, np.eye(4)) == pytest.approx(angle_deg, abs=1e-6)


@pytest.mark.parametrize("angle_deg", [1e-4, 0.01, 3.0, 45.0, 120.0, 179.9])
def test_rotation_error_of_known_rotations(angle_deg):
    base = euler_zyx_to_rotation([20.0, -35.0, 50.0])
    relative = _rotation_about([0.3, -0.5, 0.8], angle_deg)
    assert rotation_error_deg(relative @ base, base) == pytest.approx(angle_deg, rel=1e-6, abs=1e-9)
    assert rotation_error_deg(base, relative @ base) == pytest.approx(angle_deg, rel=1e-6, abs=1e-9)


def test_rotation_error_accepts_matrices_and_ignores_translation():
    true = params_to_matrix([0.0, 0.0, 30.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0])
    estimate = params_to_matrix([0.0, 0.0, 0.0, -9.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    assert rotation_error_deg(estimate, true) == pytest.approx(30.0, abs=1e-9)


def test_translation_error_is_the_centroid_displacement():
    center = np.array([5.0, 6.0, 7.0])
    true = params_to_matrix([4.0, 5.0, 6.0, 1.0, 1.0, 1.0], center)
    estimate = params_to_matrix([4.0, 5.0, 6.0, 1.0, 4.0, 5.0], center)  # centre moved by (0, 3, 4) more
    assert translation_error_mm(estimate, true, center) == pytest.approx(5.0, abs=1e-9)


def test_vertebra_points_are_voxel_centres_in_ras():
    ijk_to_ras = np.array([[-2.0, 0, 0, 10.0], [0, -2.0, 0, 20.0], [0, 0, 3.0, -5.0], [0, 0, 0, 1]])
    mask = np.zeros((4, 5, 6), bool)  # (K, J, I)
    mask[1, 2, 3] = mask[3, 0, 5] = True
    volume = Volume(np.zeros(mask.shape, np.float32), ijk_to_ras)
    points = vertebra_points(mask, volume)
    expected = np.array([[10 - 2 * 3, 20 - 2 * 2, -5 + 3 * 1], [10 - 2 * 5, 20 - 0, -5 + 3 * 3]], float)
    np.testing.assert_allclose(points, expected)
    np.testing.assert_allclose(vertebra_points(mask, ijk_to_ras), expected)


def test_vertebra_points_subsample_deterministically():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 3:17, 4:16] = True
    first = vertebra_points(mask, np.eye(4), max_points=500, seed=3)
    again = vertebra_points(mask, np.eye(4), max_points=500, seed=3)
    other = vertebra_points(mask, np.eye(4), max_points=500, seed=4)
    assert first.shape == (500, 3)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(np.unique(first, axis=0)) == 500  # without replacement
    assert vertebra_points(mask, np.eye(4), max_points=10**6).shape == (mask.sum(), 3)


def test_vertebra_points_bad_input():
    with pytest.raises(ValueError, match="empty"):
        vertebra_points(np.zeros((3, 3, 3), bool), np.eye(4))
    with pytest.raises(ValueError, match="3D"):
        vertebra_points(np.ones((3, 3), bool), np.eye(4))
    with pytest.raises(ValueError, match="does not match"):
        vertebra_points(np.ones((3, 3, 3), bool), Volume(np.zeros((3, 3, 4)), np.eye(4)))


def test_metric_shape_errors_name_what_was_received():
    with pytest.raises(ValueError, match=r"matrix_est must be a \(4, 4\) matrix, got shape \(3, 3\)"):
        mtre_mm(np.eye(3), np.eye(4), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"points_ras must be \(N, 3\)"):
        mtre_mm(np.eye(4), np.eye(4), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="rotation_true"):
        rotation_error_deg(np.eye(3), np.eye(2))


def test_success_rates_are_strict_and_count_failed_runs_as_failures():
    rates = success_rates([0.5, 1.0, 1.5, 2.5, 12.0, float("inf"), float("nan"), 0.9])
    assert rates == {1.0: pytest.approx(2 / 8), 2.0: pytest.approx(4 / 8), 10.0: pytest.approx(5 / 8)}
    assert success_rates([0.1], thresholds=(0.05, 0.2)) == {0.05: 0.0, 0.2: 1.0}
    assert all(math.isnan(r) for r in success_rates([]).values())


def test_capture_range_bins_rates_and_reach():
    initial = [1.0, 4.0, 6.0, 9.0, 12.0, 14.0, 33.0, 45.0, 50.0]
    final = [0.3, 0.4, 0.5, 0.6, 0.7, 5.0, 0.2, 9.0, 0.1]
    result = capture_range(initial, final, bins=(0, 5, 10, 15, 20, 25, 30, 40), threshold=2.0)
    rows = {(b["low_mm"], b["high_mm"]): b for b in result["bins"]}
    assert rows[(0.0, 5.0)] == {"low_mm": 0.0, "high_mm": 5.0, "count": 2, "successes": 2, "success_rate": 1.0}
    assert rows[(10.0, 15.0)]["success_rate"] == 0.5
    assert rows[(15.0, 20.0)]["count"] == 0 and rows[(15.0, 20.0)]["success_rate"] is None
    assert rows[(40.0, None)]["count"] == 2 and rows[(40.0, None)]["success_rate"] == 0.5
    assert sum(b["count"] for b in result["bins"]) == len(initial)
    # Captured up to 10 mm; the 10-15 mm bin falls below 95 %.
    assert result["capture_range_mm"] == 10.0 and result["threshold_mm"] == 2.0


def test_capture_range_skips_empty_bins_and_reaches_the_open_bin():
    every = capture_range([2.0, 22.0, 47.0], [0.1, 0.1, 0.1])
    assert every["capture_range_mm"] == 47.0  # the open bin reaches its largest initial mTRE
    none = capture_range([7.0], [3.0])
    assert none["capture_range_mm"] == 0.0
    assert capture_range([], [])["capture_range_mm"] is None
    with pytest.raises(ValueError, match="same length"):
        capture_range([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        capture_range([1.0], [1.0], bins=(0, 5, 5))


def test_dice_and_hd95_of_a_shifted_box_against_the_analytic_answers():
    from SpineRegistrationLib.core.metrics import dice, hd95_mm

    box = np.zeros((30, 30, 30), dtype=bool)
    box[5:20, 5:20, 5:20] = True
    shifted = np.roll(box, 3, axis=2)  # 3 voxels along I
    assert dice(box, shifted) == pytest.approx(2 * 12 / 30)
    assert dice(box, box) == 1.0 and dice(box, ~box) == 0.0
    assert hd95_mm(box, shifted, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95_mm(box, shifted, (2.0, 1.0, 1.0)) == pytest.approx(6.0)  # I spacing 2 mm
    assert hd95_mm(box, box, (1.0, 1.0, 1.0)) == 0.0
    assert hd95_mm(box, np.zeros_like(box), (1.0, 1.0, 1.0)) == float("inf")
