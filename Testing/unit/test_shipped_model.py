"""The pose network shipped in Resources/Models, on a phantom it was not trained on.

The shipped model was trained on varied phantoms of seeds 1000-1005
(``spinereg train --phantoms 6 --phantom-seed 1000``); here a phantom of another seed and
anatomy is posed like the evaluation's cases, seen from either side, and the network alone must
bring every start closer to the truth (within 6 mm), and the median much closer.
"""

from __future__ import annotations

import numpy as np
import pytest

from SpineRegistrationLib.evaluation import EvalConfig, make_cases
from SpineRegistrationLib.io import Labelmap
from SpineRegistrationLib.learned.checkpoint import read_payload
from SpineRegistrationLib.learned.inference import PosePredictor
from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom
from SpineRegistrationLib.learned.models import model_dirs, shipped_model


@pytest.fixture(scope="module")
def shipped():
    path = shipped_model()
    assert path is not None, f"no model shipped in {model_dirs()}"
    return path


def test_the_shipped_model_is_small_and_says_what_it_was_trained_on(shipped):
    assert shipped.stat().st_size < 50 * 2**20
    info = read_payload(shipped)["info"]
    assert info["steps"] > 0 and all(name.startswith("phantom-10") for name in info["sources"])


def test_the_shipped_model_improves_the_pose_from_either_side_on_a_phantom_it_never_saw(shipped):
    """AP or PA, the lateral from the left or the right, flipped detectors, offset principal points (the
    real-CT benchmark's C-arms and the operating room's): the patches undo the flips but not the
    perspective, which training from either side teaches."""
    phantom = generate_phantom(PhantomConfig(seed=7, anatomy_scale=0.95, lordosis_deg=30.0))
    labelmap = Labelmap(phantom.labels, "verse")
    cases = make_cases(phantom.ct, labelmap, config=EvalConfig(
        cases=12, rot_deg=8.0, trans_mm=15.0, seed=5, either_side=True, flip_detector=True, principal_offset_mm=20.0,
        detector_size=(384, 384), pixel_spacing_mm=1.3))
    predictor = PosePredictor(shipped)
    before, after, side = [], [], []
    for case in cases:
        points = vertebra_points(case.mask, case.ct, max_points=2000)
        predicted = predictor.predict(case.mu, case.mask, case.images, case.geometries, case.matrix_init)
        before.append(mtre_mm(case.matrix_init, case.matrix_true, points))
        after.append(mtre_mm(predicted, case.matrix_true, points))
        center = case.matrix_true[:3, :3] @ case.center_ras + case.matrix_true[:3, 3]
        side.append(case.geometries[0].source[1] > center[1])  # frontal source anterior
    before, after, side = np.array(before), np.array(after), np.array(side)
    assert 0 < side.sum() < len(side), side
    # Measured when shipped: median 14.4 mm -> 3.1 mm, worst 5.4 mm; median 4.2 mm with the frontal source
    # anterior, 2.5 mm posterior (the model before, trained 5 000 steps fewer and from one side: worst 7.4 mm,
    # 6.2 mm anterior).
    assert np.all(after < np.minimum(before, 6.0)), (before, after)
    assert np.median(after) < 0.3 * np.median(before), (before, after)
    assert np.median(after[side]) < 5.0 and np.median(after[~side]) < 5.0, (after, side)
