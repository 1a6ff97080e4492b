"""The verdict: what it measures at a final pose (:func:`assess`), how it judges, and that
result.json keeps what it read."""

from __future__ import annotations

import numpy as np
import pytest

from SpineRegistrationLib.core.labelmap import Labelmap, vertebra_mask
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.io.results import VertebraResult
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.rigid import RigidConfig
from SpineRegistrationLib.rigid.problem import VertebraDRR, prepare_xray, pyramid
from SpineRegistrationLib.rigid.verdict import assess
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


def test_the_true_pose_scores_higher_and_sits_on_a_sharper_peak_than_a_wrong_one(problem):
    vertebra, levels, truth, config = problem
    right = assess(vertebra, levels, truth, config, "cpu")
    wrong = assess(vertebra, levels, truth @ params_to_matrix(np.array([4.0, -3.0, 5.0, 6.0, -5.0, 4.0]),
                                                              vertebra.center_ras), config, "cpu")
    assert set(right) == {"fine", "context", "sharpness"} and all(len(v) == 2 for v in right.values())
    assert min(right["fine"]) > max(wrong["fine"]) + 0.1
    assert min(right["context"]) > max(wrong["context"])
    # At the truth any move of 1.5 mm / 1.5 deg costs similarity; 8 mm away it does not.
    assert min(right["sharpness"]) > 0.0 and np.mean(right["sharpness"]) > np.mean(wrong["sharpness"])


def test_result_json_keeps_what_the_verdict_read():
    quality = {"fine": [0.8, 0.7], "context": [0.9, 0.85], "sharpness": [0.02, 0.03]}
    result = VertebraResult(name="L2", matrix_ras=np.eye(4), params=np.zeros(6), center_ras=np.zeros(3),
                            similarity=0.75, verdict="pass", time_s=1.0, evaluations=10, quality=quality)
    again = VertebraResult.from_json("L2", result.to_json())
    assert again.quality == quality and again.verdict == "pass"
    # result.json of an older version has no quality: read as None, not an error.
    old = result.to_json()
    del old["quality"]
    assert VertebraResult.from_json("L2", old).quality is None
