"""Level names of detections (SpineRegistrationLib.learned.levels): a box between two vertebrae is
dropped rather than shifting its neighbours' names, and the CT's projected vertebrae name detections
whose own level scores cannot."""

from __future__ import annotations

import numpy as np

from SpineRegistrationLib.core.labels import VERTEBRAE
from SpineRegistrationLib.geometry import preset_geometry
from SpineRegistrationLib.learned.levels import CHAIN, ViewDetections, ct_level_scores, name_levels


def _log_probs(guesses, right=0.7, other=0.01):
    out = np.full((len(guesses), len(VERTEBRAE)), np.log(other))
    for n, guess in enumerate(guesses):
        if guess is not None:
            out[n, VERTEBRAE.index(guess)] = np.log(right)
    return out


def test_a_second_box_on_a_vertebra_is_dropped_not_named_by_shifting_the_others():
    rows = [10.0, 30.0, 46.0, 50.0, 70.0, 90.0]  # the box at row 46 is a second one on L1
    guesses = ["T11", "T12", "L1", "L1", "L2", "L3"]
    centers = np.stack([np.full(6, 50.0), rows], axis=1)
    names = name_levels(centers, _log_probs(guesses))
    assert [names[n] for n in (0, 1, 4, 5)] == ["T11", "T12", "L2", "L3"]
    assert sorted([names[2], names[3]], key=str) == ["L1", None]
    # made to name every box, the DP shifts the names below the extra box
    forced = name_levels(centers, _log_probs(guesses), skip_cost=None)
    assert None not in forced and [forced[n] for n in (0, 1, 4, 5)] != ["T11", "T12", "L2", "L3"]


def test_the_ct_names_detections_the_detector_cannot_name():
    levels = list(CHAIN[CHAIN.index("T5"):CHAIN.index("L2") + 1])  # 10 vertebrae, 25 mm apart
    centers_ras = {name: np.array([0.0, 5.0, 112.5 - 25.0 * n]) for n, name in enumerate(levels)}
    true_shift = np.array([7.0, -11.0, 14.0])  # the CT's start is this far from the truth
    geometries = [preset_geometry(view, size=(400, 400), pixel_spacing=(1.0, 1.0)) for view in ("AP", "LAT")]
    rng = np.random.default_rng(3)
    views = []
    for geometry in geometries:
        points = np.stack([centers_ras[name] + true_shift for name in levels])
        pixels = geometry.project(points) + rng.normal(0.0, 2.0, (len(levels), 2))
        views.append(ViewDetections(pixels, np.full((len(levels), len(VERTEBRAE)), np.log(1.0 / 26)), geometry))
    # level scores that say nothing: the names are where the chain happens to start
    assert name_levels(views[0].centers_px, views[0].level_log_probs) != levels
    positions = ct_level_scores(views, centers_ras)
    for view, position in zip(views, positions):
        assert position.shape == (len(levels), len(CHAIN))
        assert name_levels(view.centers_px, view.level_log_probs, position) == levels
    # T9 is missed and the network names the four above it a level low, as if nothing were missing:
    # the sequence alone cannot see the gap, where they lie can
    kept = [n for n, name in enumerate(levels) if name != "T9"]
    for view in views:
        view.centers_px = view.centers_px[kept]
        view.level_log_probs = _log_probs([CHAIN[CHAIN.index(levels[n]) + (1 if n < 4 else 0)] for n in kept],
                                          right=0.3, other=0.02)
    expected = [levels[n] for n in kept]
    assert name_levels(views[1].centers_px, views[1].level_log_probs)[:4] == ["T6", "T7", "T8", "T9"]
    for view, position in zip(views, ct_level_scores(views, centers_ras)):
        assert name_levels(view.centers_px, view.level_log_probs, position) == expected


def test_levels_the_ct_lacks_or_no_detection_leave_the_scores_at_their_floor():
    geometry = preset_geometry("AP", size=(200, 200), pixel_spacing=(1.0, 1.0))
    empty = ViewDetections(np.zeros((0, 2)), np.zeros((0, len(VERTEBRAE))), geometry)
    assert ct_level_scores([empty], {"L1": np.zeros(3)})[0].shape == (0, len(CHAIN))
    one = ViewDetections(geometry.project(np.zeros((1, 3))), np.zeros((1, len(VERTEBRAE))), geometry)
    scores = ct_level_scores([one], {"L1": np.zeros(3)})[0]
    assert scores[0, CHAIN.index("L1")] > -0.1  # right on its projection
    assert np.all(np.delete(scores[0], CHAIN.index("L1")) == -4.5)  # the others: far from every level


def test_the_similarity_fit_recovers_a_known_turn_scale_and_shift():
    from SpineRegistrationLib.learned.levels import _similarity

    source = np.random.default_rng(0).uniform(-50, 50, (7, 2))
    angle, scale, shift = np.radians(9.0), 1.07, np.array([12.0, -5.0])
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = source @ turn.T + shift
    points = np.array([[0.0, 0.0], [100.0, 40.0]])
    assert np.allclose(_similarity(source, target, points), points @ turn.T + shift, atol=1e-9)
