"""The vertebra detector shipped in Resources/Models, on views of a phantom it was not trained on.

It was trained on varied phantoms of seeds 3000-3005 (``spinereg train-detect --phantoms 6``); here a
phantom of another seed is seen by the training's C-arm distribution (rendered by our simulator) and
the detector must find about half of its vertebrae with boxes of IoU >= 0.5 (naming them is left to
the patient-specific model: see README, "Vertebra boxes on the X-rays").
"""

from __future__ import annotations

import numpy as np
import pytest

from SpineRegistrationLib.geometry.image_boxes import box_iou
from SpineRegistrationLib.io import Labelmap
from SpineRegistrationLib.learned.checkpoint import read_payload
from SpineRegistrationLib.learned.detector import DETECTOR_FORMAT, DetectorPredictor, shipped_detector
from SpineRegistrationLib.learned.detector_data import DetectorCT, DetectorSynthesis, detector_acquisition
from SpineRegistrationLib.render.xray_sim import XraySimConfig, simulate_xray
from SpineRegistrationLib.synthetic.phantom import generate_phantom, varied_phantom_config


@pytest.fixture(scope="module")
def shipped():
    path = shipped_detector()
    assert path is not None, "no vertebra detector shipped in Resources/Models"
    return path


def test_the_shipped_detector_is_small_and_says_what_it_was_trained_on(shipped):
    assert shipped.stat().st_size < 5 * 2**20
    payload = read_payload(shipped, (DETECTOR_FORMAT,))
    assert payload["info"]["steps"] > 0 and all(name.startswith("phantom-300") for name in payload["info"]["sources"])


def test_the_shipped_detector_finds_the_vertebrae_of_an_unseen_phantom(shipped):
    import torch

    phantom = generate_phantom(varied_phantom_config(7))
    predictor = DetectorPredictor(shipped)
    source = DetectorCT(phantom.ct, Labelmap(phantom.labels, "verse"), "unseen", predictor.model.config.mm_per_px)
    synthesis = DetectorSynthesis(acquisition=detector_acquisition(predictor.model.config.mm_per_px))
    found = total = 0
    for draw in range(3):
        rng = np.random.default_rng([11, draw])
        for geometry, depth, truth in source.draw(synthesis, rng):
            image = simulate_xray(torch.from_numpy(depth), XraySimConfig(), torch.Generator().manual_seed(draw)).numpy()
            boxes = predictor.detect(image, geometry)
            for box in truth:
                overlaps = [box_iou(box.corners_px, b.corners_px) for b in boxes]
                found += bool(overlaps) and max(overlaps) >= 0.5
            total += len(truth)
    # Measured when shipped (600 CPU steps): 23 of 41 boxes found, 1 of them named right: the phantoms'
    # levels look alike, so the phantom model finds vertebrae but cannot tell which they are.
    assert found >= 0.45 * total, (found, total)
