"""The verdict: the similarity it reads at a final pose, how it judges, and that result.json
keeps what it read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SpineRegistrationLib.core.labelmap import Labelmap, centroids_ras, neighbour_offsets, vertebra_mask
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.core.volume import Volume, bounding_box_ijk, scan_axis, scan_end_distance_mm
from SpineRegistrationLib.io.results import VertebraResult
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.rigid import RigidConfig
from SpineRegistrationLib.rigid.problem import VertebraDRR, prepare_xray, pyramid
from SpineRegistrationLib.rigid.refine import level_problem
from SpineRegistrationLib.rigid.register import register_vertebra
from SpineRegistrationLib.rigid.verdict import (AT_CT_EDGE, CUT_BY_CT, LOW_SIMILARITY, RIVAL_LEVEL, VIEW_DISAGREES,
                                                 WEAK_EVIDENCE, final_similarities, judge, level_margin, needs_evidence,
                                                 vertebra_evidence)
from SpineRegistrationLib.synthetic.phantom import PhantomConfig
from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample


@pytest.fixture(scope="module")
def problem():
    """L2 of an L1-L3 phantom at 2 mm voxels, its AP/LAT pyramids and its true pose."""
    phantom, labelmap, case = make_sample(SampleConfig(phantom=PhantomConfig(spacing_mm=2.0, vertebrae=("L1", "L2", "L3")),
                                                       detector_size=(192, 192), pixel_spacing_mm=1.6))
    config = RigidConfig(pixel_mm=(3.2, 1.6), iterations=(10, 10))
    mu = phantom.ct.with_array(hu_to_mu(phantom.ct.array))
    vertebra = VertebraDRR(mu, vertebra_mask(Labelmap(phantom.labels, "verse"), "L2"), config.roi_margin_mm, "cpu",
                           config.context_mm, config.full_depth)
    levels = [pyramid(prepare_xray(x), g, config.pixel_mm) for x, g in zip(case.images, case.geometries)]
    offsets = neighbour_offsets(centroids_ras(Labelmap(phantom.labels, "verse")), "L2")
    return vertebra, levels, case.poses["L2"], config, offsets


def test_the_final_similarity_is_set_up_at_the_pose_it_judges(problem):
    vertebra, levels, truth, config, _ = problem
    right = final_similarities(vertebra, levels, truth, config, "cpu")
    wrong = final_similarities(vertebra, levels, truth @ params_to_matrix(np.array([4.0, -3.0, 5.0, 6.0, -5.0, 4.0]),
                                                                          vertebra.center_ras), config, "cpu")
    assert len(right) == len(wrong) == 2  # one per view
    assert min(right) > config.doubt_below > max(wrong)
    # The same as the finest level's objective built at the pose (what refinement would start from).
    problem_at_truth = level_problem(vertebra, [views[-1] for views in levels], truth, len(levels[0]) - 1, config, "cpu")
    score = problem_at_truth.similarity(torch.as_tensor(truth, dtype=torch.float32)[None])
    assert float(score) == pytest.approx(np.mean(right), abs=1e-6)


def test_result_json_keeps_each_views_similarity():
    result = VertebraResult(name="L2", matrix_ras=np.eye(4), params=np.zeros(6), center_ras=np.zeros(3),
                            similarity=0.75, verdict="pass", time_s=1.0, evaluations=10, view_similarities=[0.8, 0.7],
                            optimiser_similarity=0.77, level_margin=0.21)
    again = VertebraResult.from_json("L2", result.to_json())
    assert again.view_similarities == [0.8, 0.7] and again.optimiser_similarity == 0.77 and again.verdict == "pass"
    assert again.level_margin == 0.21 and again.vertebra_evidence is None
    read = VertebraResult.from_json("L2", {**result.to_json(), "vertebra_evidence": 0.31})
    assert read.vertebra_evidence == 0.31 and read.to_json()["vertebra_evidence"] == 0.31
    # result.json of an older version has none: read as None, not an error.
    old = result.to_json()
    del old["view_similarities"], old["optimiser_similarity"], old["level_margin"]
    older = VertebraResult.from_json("L2", old)
    assert older.view_similarities is None and older.optimiser_similarity is None and older.level_margin is None


@pytest.mark.parametrize("similarity, optimiser, margin, reason", [
    (0.80, 0.80, None, None),
    (0.80, 0.80, 0.20, None),
    (0.50, 0.60, None, "low similarity"),
    (0.50, None, None, "low similarity"),  # no refinement score: the similarity alone decides
    (0.50, 0.80, None, None),  # the refinement vouches for it (neighbours that moved on their own)
    (0.80, 0.50, None, None),  # set up afresh it is high: the refinement's score does not decide alone
    (0.80, 0.80, 0.005, "rival at another place"),
    (0.50, 0.60, 0.005, "low similarity"),  # the first reason that applies is the one written
])
def test_judge_names_the_first_reason_to_doubt(similarity, optimiser, margin, reason):
    verdict, why = judge(similarity, margin, RigidConfig(), optimiser)
    assert verdict == ("pass" if reason is None else "doubt")
    assert (why is None) if reason is None else why.startswith(reason)


@pytest.mark.parametrize("views, reason", [
    ([0.62, 0.70], None),
    ([0.70, 0.38], "a view disagrees (view 2: 0.380 < 0.4)"),  # the mean (0.54) alone, vouched for by the refinement, passed
    ([0.20, 0.62], "a view disagrees (view 1: 0.200 < 0.4)"),
    (None, None),  # not known (an older result): the other readings decide
])
def test_one_view_that_disagrees_is_doubted(views, reason):
    """The whole-spine chain's wrong poses (3-5 mm off) fitted one view and not the other."""
    similarity = 0.66 if views is None else float(np.mean(views))
    verdict, why = judge(similarity, None, RigidConfig(), 0.70, view_similarities=views)
    assert (verdict, why) == (("pass", None) if reason is None else ("doubt", reason))


@pytest.mark.parametrize("similarity, optimiser, edge_verdict", [
    (0.66, 0.74, "doubt"),  # enough elsewhere, not next to the CT's end
    (0.70, 0.74, "pass"),  # high enough afresh even there
    (0.66, 0.78, "pass"),  # the refinement vouches for it even there
])
def test_a_vertebra_at_the_ct_edge_is_held_to_stricter_thresholds(similarity, optimiser, edge_verdict):
    config = RigidConfig()
    assert judge(similarity, None, config, optimiser) == ("pass", None)
    assert judge(similarity, None, config, optimiser, scan_end_mm=config.ct_edge_mm) == ("pass", None)
    verdict, why = judge(similarity, None, config, optimiser, scan_end_mm=2.5)
    assert verdict == edge_verdict
    assert (why is None) if verdict == "pass" else (why.startswith("low similarity") and AT_CT_EDGE in why)


def test_a_vertebra_the_ct_cuts_is_doubted_whatever_it_scores():
    """Part of it outside the scan (its mask on the first or last slice): the DRR lacks bone the X-ray
    shows (the real CT's C5-C7, 28.7 mm off, passed on 0.54 / 0.77 before)."""
    assert judge(0.95, None, RigidConfig(), 0.95, scan_end_mm=0.0) == ("doubt", CUT_BY_CT)
    assert judge(0.95, None, RigidConfig(), 0.95, scan_end_mm=2.5) == ("pass", None)


def test_scan_end_distance_follows_the_scan_axis():
    mask = np.zeros((20, 10, 12), bool)  # (K, J, I)
    mask[15:18, 3:6, 4:8] = True
    axial = Volume(mask.astype(np.uint8), np.diag([0.7, 0.7, 2.5, 1.0]))  # K along S
    assert scan_axis(axial) == 2
    assert scan_end_distance_mm(mask, axial) == pytest.approx(2 * 2.5)  # slices 18 and 19 lie beyond it
    # The same array stored with I along S (a sagittal stack): its scan axis is I, 4 voxels each side.
    sagittal = Volume(mask.astype(np.uint8), np.array([[0, 0, 2.5, 0], [0, 0.7, 0, 0], [0.7, 0, 0, 0], [0, 0, 0, 1.0]]))
    assert scan_axis(sagittal) == 0
    assert scan_end_distance_mm(mask, sagittal) == pytest.approx(4 * 0.7)


def test_registration_judges_a_vertebra_the_ct_ends_next_to_by_the_edge_thresholds(problem):
    vertebra, levels, truth, _, _ = problem
    # A verdict that always doubts at the CT's edge and never elsewhere shows which rule was applied.
    config = RigidConfig(pixel_mm=(3.2, 1.6), iterations=(0, 0), global_search="none", doubt_below=-2.0,
                         edge_doubt_below=2.0, edge_optimiser_doubt_below=2.0)
    _, stop = bounding_box_ijk(vertebra.mask)
    xrays = [views[0].image.numpy() for views in levels]
    geometries = [views[0].geometry for views in levels]
    whole = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth, config)
    assert whole.verdict == "pass"
    # The same CT cut one 2 mm slice past the vertebra along K, its scan axis: now it lies at the CT's edge.
    cut_stop = np.array(vertebra.mu.shape_ijk)
    cut_stop[2] = stop[2] + 1
    cut = vertebra.mu.cropped((0, 0, 0), cut_stop)
    mask = vertebra.mask[: cut_stop[2]]
    at_edge = register_vertebra("L2", cut, mask, xrays, geometries, truth, config)
    assert at_edge.verdict == "doubt" and AT_CT_EDGE in at_edge.verdict_reason


def test_neighbour_offsets_point_to_the_labelled_neighbours():
    centroids = {"T12": np.array([0.0, 0.0, 30.0]), "L1": np.array([1.0, 2.0, 0.0]), "L2": np.array([0.0, 5.0, -28.0])}
    above, below = neighbour_offsets(centroids, "L1")
    np.testing.assert_allclose(above, [-1.0, -2.0, 30.0])
    np.testing.assert_allclose(below, [-1.0, 3.0, -28.0])
    # The first labelled vertebra: the one neighbour's mirror stands for the missing side.
    np.testing.assert_allclose(np.array(neighbour_offsets(centroids, "T12")), [[1.0, 2.0, -30.0], [-1.0, -2.0, 30.0]])
    assert neighbour_offsets({"L1": np.zeros(3)}, "L1") == () and neighbour_offsets(centroids, "L5") == ()


def test_the_level_margin_is_positive_at_the_truth_and_negative_a_level_away(problem):
    vertebra, levels, truth, config, offsets = problem
    at_truth = level_margin(vertebra, levels, truth, offsets, config, "cpu")
    assert at_truth > config.level_vouch
    # The vertebra's DRR moved onto its cranial neighbour (a level mix-up): the truth is among its shifts.
    up = truth.copy()
    up[:3, 3] += truth[:3, :3] @ offsets[0]
    assert level_margin(vertebra, levels, up, offsets, config, "cpu") < 0.0
    assert level_margin(vertebra, levels, truth, (), config, "cpu") is None  # no neighbour: not read


@pytest.mark.parametrize("similarity, optimiser, level, edge_mm, reason", [
    (0.50, 0.60, None, None, "low similarity"),  # not read: as before
    (0.50, 0.60, 0.10, None, "low similarity"),  # above its neighbours, but not by enough to vouch
    (0.50, 0.60, 0.20, None, None),  # low, but it stands out from the neighbouring levels: vouched for
    (0.50, 0.52, 0.20, None, "low similarity"),  # vouched for, but under even the lower threshold
    (0.50, 0.72, 0.30, 2.5, "low similarity"),  # at the CT's edge the context is cut: no vouching
    (0.80, 0.80, -0.01, None, RIVAL_LEVEL),  # high, but another level scores higher
])
def test_the_level_margin_vouches_for_a_low_similarity_and_doubts_a_rival_level(similarity, optimiser, level, edge_mm,
                                                                                 reason):
    verdict, why = judge(similarity, None, RigidConfig(), optimiser, scan_end_mm=edge_mm, level_margin=level)
    assert verdict == ("pass" if reason is None else "doubt")
    assert (why is None) if reason is None else why.startswith(reason)


def test_registration_writes_the_level_margin_it_judged_by(problem):
    vertebra, levels, truth, _, offsets = problem
    config = RigidConfig(pixel_mm=(3.2, 1.6), iterations=(0, 0), global_search="none")
    xrays = [views[-1].image.numpy() for views in levels]
    geometries = [views[-1].geometry for views in levels]
    without = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth, config)
    assert without.level_margin is None
    result = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth, config,
                               neighbour_offsets=offsets)
    assert result.level_margin == pytest.approx(level_margin(vertebra, levels, truth, offsets, config, "cpu"), abs=1e-5)
    assert result.verdict == "pass"


def test_the_vertebra_evidence_is_high_at_the_truth_and_low_where_the_background_explains_the_x_ray(problem):
    vertebra, levels, truth, config, offsets = problem
    at_truth = vertebra_evidence(vertebra, levels, truth, config, "cpu")
    assert at_truth > 0.6
    # On its neighbour (a level mix-up) what lies under the vertebra is the neighbour's, which the
    # background already draws; half a level away, or rotated and shifted, nothing of it is there.
    up = truth.copy()
    up[:3, 3] += truth[:3, :3] @ offsets[0]
    half = truth.copy()
    half[:3, 3] += 0.5 * truth[:3, :3] @ offsets[0]
    off = truth @ params_to_matrix(np.array([4.0, -3.0, 5.0, 6.0, -5.0, 4.0]), vertebra.center_ras)
    assert vertebra_evidence(vertebra, levels, up, config, "cpu") < 0.5 * at_truth
    assert max(vertebra_evidence(vertebra, levels, pose, config, "cpu") for pose in (half, off)) < config.evidence_vouch


@pytest.mark.parametrize("similarity, optimiser, views, evidence, edge_mm, reason", [
    (0.50, 0.60, None, None, None, "low similarity (0.500 < 0.63)"),  # not read
    (0.50, 0.60, None, 0.27, None, "low similarity (0.500 < 0.63; vertebra evidence 0.270 < 0.28)"),
    (0.50, 0.60, None, 0.30, None, None),  # the X-ray holds the vertebra's own edges: vouched for
    (0.50, 0.60, [0.66, 0.34], 0.30, None, VIEW_DISAGREES),  # vouched for, but a view still disagrees
    (0.70, 0.70, [0.90, 0.37], 0.30, None, None),  # a view under 0.40, but its edges are there
    (0.70, 0.70, [0.90, 0.37], 0.27, None, "a view disagrees (view 2: 0.370 < 0.4; vertebra evidence 0.270 < 0.28)"),
    (0.70, 0.70, [0.90, 0.37], 0.20, None, "weak vertebra evidence (0.200 < 0.26)"),
    (0.70, 0.70, [0.90, 0.37], 0.30, 2.5, VIEW_DISAGREES),  # at the CT's edge: no vouching
    (0.60, 0.66, None, 0.40, 2.5, LOW_SIMILARITY),  # at the CT's edge the background is cut: no vouching
])
def test_the_vertebra_evidence_vouches_for_a_low_similarity_or_a_weak_view(similarity, optimiser, views, evidence, edge_mm, reason):
    verdict, why = judge(similarity, None, RigidConfig(), optimiser, scan_end_mm=edge_mm, view_similarities=views,
                         evidence=evidence)
    assert verdict == ("pass" if reason is None else "doubt")
    assert (why is None) if reason is None else why.startswith(reason)


@pytest.mark.parametrize("similarity, optimiser, views, evidence, edge_mm, reason", [
    (0.80, 0.80, [0.80, 0.80], 0.20, None, "weak vertebra evidence (0.200 < 0.26)"),  # scores well, on a neighbour's edges
    (0.80, 0.80, [0.80, 0.80], 0.27, None, None),  # under the vouch, over the floor
    (0.80, 0.80, [0.80, 0.80], 0.20, 2.5, None),  # at the CT's edge the background is cut: no floor
    (0.50, 0.60, None, 0.20, None, LOW_SIMILARITY),  # the first reason is named
])
def test_a_weak_vertebra_evidence_doubts_a_result_whatever_it_scores(similarity, optimiser, views, evidence, edge_mm,
                                                                     reason):
    verdict, why = judge(similarity, None, RigidConfig(), optimiser, scan_end_mm=edge_mm, view_similarities=views,
                         evidence=evidence)
    assert verdict == ("pass" if reason is None else "doubt")
    assert (why is None) if reason is None else why.startswith(reason)


@pytest.mark.parametrize("similarity, optimiser, edge_mm, views, level, needed", [
    (0.50, 0.60, 50.0, None, None, True),  # a low similarity
    (0.50, 0.60, None, [0.45, 0.55], None, True),
    (0.57, 0.70, 2.5, None, None, False),  # at the CT's edge: nothing vouches
    (0.70, 0.70, 50.0, [0.90, 0.37], None, True),  # a view the evidence can lift
    (0.70, 0.70, 50.0, [0.90, 0.34], None, False),  # a view under the vouched floor too
    (0.50, 0.60, 50.0, [0.66, 0.34], None, False),  # the evidence lifts the similarity, not that view
    (0.50, 0.60, 50.0, None, -0.05, False),  # another level scores higher
    (0.70, 0.70, 50.0, [0.70, 0.70], 0.20, True),  # passes: a weak evidence would doubt it
    (0.70, 0.70, 2.5, [0.70, 0.70], 0.20, False),  # passes at the CT's edge: the evidence is not judged there
    (0.70, 0.70, 50.0, [0.70, 0.70], -0.05, False),  # another level scores higher
])
def test_the_evidence_is_read_only_where_it_can_change_the_verdict(similarity, optimiser, edge_mm, views, level, needed):
    assert needs_evidence(similarity, None, RigidConfig(), optimiser, edge_mm, views, level) is needed


def test_registration_reads_the_evidence_where_it_can_change_the_verdict_and_writes_it(problem):
    vertebra, levels, truth, _, _ = problem
    xrays = [views[-1].image.numpy() for views in levels]
    geometries = [views[-1].geometry for views in levels]
    # Thresholds no similarity meets: the low-similarity rule fires, and the evidence decides.
    low = dict(pixel_mm=(3.2, 1.6), iterations=(0, 0), global_search="none", doubt_below=2.0, optimiser_doubt_below=2.0)
    vouched = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth, RigidConfig(**low))
    assert vouched.verdict == "pass" and vouched.vertebra_evidence > RigidConfig().evidence_vouch
    strict = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth,
                               RigidConfig(**low, evidence_vouch=1.5))
    assert strict.verdict == "doubt" and "vertebra evidence" in strict.verdict_reason
    assert strict.vertebra_evidence == pytest.approx(vouched.vertebra_evidence, abs=1e-6)
    # A result that passes on its similarity reads it too, and a floor it does not reach doubts it.
    plain = dict(pixel_mm=(3.2, 1.6), iterations=(0, 0), global_search="none")
    passed = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth, RigidConfig(**plain))
    assert passed.verdict == "pass"
    assert passed.vertebra_evidence == pytest.approx(vouched.vertebra_evidence, abs=1e-6)
    floored = register_vertebra("L2", vertebra.mu, vertebra.mask, xrays, geometries, truth,
                                RigidConfig(**plain, evidence_doubt_below=1.5))
    assert floored.verdict == "doubt" and floored.verdict_reason.startswith(WEAK_EVIDENCE)
