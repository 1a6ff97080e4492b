"""What the rigid registration compares: the context DRR around a vertebra, its weight, and the
fixed-context decomposition of the finest level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SpineRegistrationLib.core.labelmap import Labelmap, vertebra_mask
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.geometry import preset_geometry
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.rigid.problem import VertebraDRR
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom


@pytest.fixture(scope="module")
def spine():
    phantom = generate_phantom(PhantomConfig(vertebrae=("L1", "L2", "L3"), spacing_mm=2.0))
    mu = phantom.ct.with_array(hu_to_mu(phantom.ct.array))
    mask = vertebra_mask(Labelmap(phantom.labels, "verse"), "L2")
    return mu, mask, phantom.centroids_ras["L2"]


@pytest.mark.parametrize("view", ["AP", "LAT"])
def test_background_plus_excess_is_the_context_at_the_same_pose(spine, view):
    mu, mask, center = spine
    vertebra = VertebraDRR(mu, mask, 4.0, "cpu", context_mm=30.0, full_depth=True)
    geometry = preset_geometry(view, isocenter_ras=center, size=(96, 96), pixel_spacing=(1.6, 1.6))
    pose = torch.as_tensor(params_to_matrix(np.array([3.0, -2.0, 4.0, 2.0, -1.0, 3.0]), center),
                           dtype=torch.float32)[None]
    with torch.no_grad():
        context = vertebra.render(pose, geometry)[0]
        split = vertebra.render_over(pose, geometry, vertebra.background(pose, geometry))[0]
        alone = vertebra._draw("vertebra", pose, geometry)[0]
    assert torch.allclose(split, context, atol=1e-3 * float(context.max()))
    # The context is more than the vertebra: the whole depth of the body crosses every ray.
    assert float(context.min()) > 0.5 and float((context - alone).min()) > 0.5


def test_the_weight_is_where_the_vertebra_alone_projects_dilated(spine):
    mu, mask, center = spine
    vertebra = VertebraDRR(mu, mask, 4.0, "cpu", context_mm=30.0, full_depth=True)
    geometry = preset_geometry("AP", isocenter_ras=center, size=(96, 96), pixel_spacing=(1.6, 1.6))
    pose = torch.eye(4)[None]
    tight, wide = vertebra.support(pose, geometry, 1), vertebra.support(pose, geometry, 6)
    assert set(torch.unique(wide).tolist()) == {0.0, 1.0}
    assert bool((wide >= tight).all()) and wide.sum() > 1.3 * tight.sum()
    assert 0.02 < float(tight.mean()) < 0.5  # a vertebra, not the whole view
