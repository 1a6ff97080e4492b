"""The verdict: the similarity it reads at a final pose, how it judges, and that result.json
keeps what it read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SpineRegistrationLib.core.labelmap import Labelmap, vertebra_mask
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.io.results import VertebraResult
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.rigid import RigidConfig
from SpineRegistrationLib.rigid.problem import VertebraDRR, prepare_xray, pyramid
from SpineRegistrationLib.rigid.refine import level_problem
from SpineRegistrationLib.rigid.verdict import final_similarities, judge
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
    return vertebra, levels, case.poses["L2"], config


def test_the_final_similarity_is_set_up_at_the_pose_it_judges(problem):
    vertebra, levels, truth, config = problem
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
                            optimiser_similarity=0.77)
    again = VertebraResult.from_json("L2", result.to_json())
    assert again.view_similarities == [0.8, 0.7] and again.optimiser_similarity == 0.77 and again.verdict == "pass"
    # result.json of an older version has none: read as None, not an error.
    old = result.to_json()
    del old["view_similarities"], old["optimiser_similarity"]
    older = VertebraResult.from_json("L2", old)
    assert older.view_similarities is None and older.optimiser_similarity is None


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
