"""The DRR renderer against analytic answers, finite differences and itself (batching, ROI, pose)."""

import numpy as np
import pytest
import torch

from SpineRegistrationLib.render.drr import Detectors, DRRRenderer, hu_to_mu, render_drr
from SpineRegistrationLib.geometry import XrayGeometry
from SpineRegistrationLib.core.pose import params_to_matrix, params_to_matrix_torch
from SpineRegistrationLib.core.volume import Volume

SPACING = 2.0
N = 40  # voxels per axis; the grid spans +-39 mm around the origin


def grid_ras(n=N, spacing=SPACING):
    """An LPS-oriented grid (i -> left, j -> posterior, k -> superior) centred at the origin."""
    ijk_to_ras = np.diag([-spacing, -spacing, spacing, 1.0])
    ijk_to_ras[:3, 3] = [(n - 1) / 2 * spacing, (n - 1) / 2 * spacing, -(n - 1) / 2 * spacing]
    k, j, i = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    ras = np.stack([i, j, k], -1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    return ijk_to_ras, ras


def ap_geometry(size=65, spacing=1.5, sid=600.0, sdd=1000.0):
    half = (size - 1) / 2 * spacing
    return XrayGeometry(
        source=[0, -sid, 0], detector_origin=[half, sdd - sid, half],
        detector_u=[-1, 0, 0], detector_v=[0, 0, -1], pixel_spacing=(spacing, spacing), size=(size, size),
    )


def lat_geometry(size=65, spacing=1.5, sid=600.0, sdd=1000.0):
    half = (size - 1) / 2 * spacing
    return XrayGeometry(
        source=[sid, 0, 0], detector_origin=[sid - sdd, half, half],
        detector_u=[0, -1, 0], detector_v=[0, 0, -1], pixel_spacing=(spacing, spacing), size=(size, size),
    )


def smooth_volume():
    ijk_to_ras, ras = grid_ras()
    blob = 0.03 * np.exp(-(((ras - [6, -4, 8]) ** 2) / [160, 240, 120]).sum(-1))
    blob += 0.02 * np.exp(-(((ras + [12, 0, 6]) ** 2) / 80).sum(-1))
    return Volume(blob.astype(np.float32), ijk_to_ras)


def ray_box_chord(source, points, lower, upper):
    """Exact length (mm) of each segment source -> point inside the box [lower, upper] (slab method)."""
    direction = points - source
    with np.errstate(divide="ignore"):
        t_a = (lower - source) / direction
        t_b = (upper - source) / direction
    t_near = np.clip(np.minimum(t_a, t_b).max(-1), 0, 1)
    t_far = np.clip(np.maximum(t_a, t_b).min(-1), 0, 1)
    return np.clip(t_far - t_near, 0, None) * np.linalg.norm(direction, axis=-1)


@pytest.mark.parametrize("geometry", [ap_geometry(), lat_geometry()], ids=["AP", "LAT"])
def test_box_matches_chord_lengths(geometry):
    ijk_to_ras, ras = grid_ras()
    lower, upper = np.array([-20.0, -16.0, -24.0]), np.array([18.0, 16.0, 24.0])  # on voxel faces
    mu = 0.02
    inside = np.all((ras > lower) & (ras < upper), axis=-1)
    image = render_drr(Volume((mu * inside).astype(np.float32), ijk_to_ras), geometry)
    expected = mu * ray_box_chord(geometry.source, geometry.pixel_centers_ras(), lower, upper)
    # Away from the projected box edges (where a voxel-sized blur is expected) the integral is exact:
    # keep pixels whose 7x7 neighbourhood lies entirely inside the box's shadow.
    shadow = expected > 0
    core = shadow.copy()
    for dr in range(-3, 4):
        for dc in range(-3, 4):
            core &= np.roll(np.roll(shadow, dr, 0), dc, 1)
    assert core.sum() > 500
    np.testing.assert_allclose(image[core], expected[core], rtol=5e-3)
    # The integral over the detector conserves mass everywhere, edges included.
    assert image.sum() == pytest.approx(expected.sum(), rel=5e-3)


def test_ball_matches_chord_lengths():
    ijk_to_ras, ras = grid_ras(n=64, spacing=1.0)
    radius, mu = 20.0, 0.02
    # Partial-volume ball: each voxel holds its covered fraction, estimated with a 1 mm ramp.
    values = mu * np.clip(radius + 0.5 - np.linalg.norm(ras, axis=-1), 0, 1)
    geometry = ap_geometry(size=81, spacing=1.0)
    image = render_drr(Volume(values.astype(np.float32), ijk_to_ras), geometry)
    pixels = geometry.pixel_centers_ras()
    direction = pixels - geometry.source
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    closest = geometry.source + ((-geometry.source) * direction).sum(-1, keepdims=True) * direction
    distance = np.linalg.norm(closest, axis=-1)
    expected = 2 * mu * np.sqrt(np.clip(radius**2 - distance**2, 0, None))
    core = distance < radius - 3
    np.testing.assert_allclose(image[core], expected[core], rtol=1e-2)


@pytest.mark.parametrize("params", [np.zeros(6), np.array([8.0, -5.0, 12.0, 6.0, -9.0, 4.0])])
def test_bead_projects_where_the_pinhole_model_puts_it(params):
    ijk_to_ras, ras = grid_ras()
    bead_ras = np.array([10.0, 6.0, -14.0])  # a voxel centre
    values = np.exp(-((ras - bead_ras) ** 2).sum(-1) / (2 * 2.0**2)).astype(np.float32)
    matrix = params_to_matrix(params, np.array([2.0, 3.0, 4.0]))
    for geometry in (ap_geometry(size=129, spacing=0.75), lat_geometry(size=129, spacing=0.75)):
        image = render_drr(Volume(values, ijk_to_ras), geometry, matrix_ras=matrix).astype(np.float64)
        rows, cols = np.indices(image.shape)
        weights = np.where(image > 0.05 * image.max(), image, 0.0)
        centroid = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
        expected = geometry.project(matrix[:3, :3] @ bead_ras + matrix[:3, 3])
        assert np.linalg.norm(centroid - expected) < 0.5


def test_posed_volume_equals_regridded_volume():
    """Rendering with pose M equals rendering a volume whose grid was moved by M."""
    volume = smooth_volume()
    matrix = params_to_matrix([10, -6, 15, 5, -3, 7], np.array([1.0, 2.0, 3.0]))
    moved_grid = Volume(volume.array, matrix @ volume.ijk_to_ras)
    for geometry in (ap_geometry(), lat_geometry()):
        np.testing.assert_allclose(
            render_drr(volume, geometry, matrix_ras=matrix), render_drr(moved_grid, geometry), rtol=1e-4, atol=1e-6
        )


def test_batch_over_poses_and_views_equals_single_renders():
    volume = smooth_volume()
    renderer = DRRRenderer(volume)
    geometries = [ap_geometry(), lat_geometry()]
    poses = torch.stack(
        [params_to_matrix_torch(torch.tensor([[0.1, -0.05, 0.2, 3.0, -2.0, 1.0]]), torch.zeros(3))[0], torch.eye(4)]
    )
    with torch.no_grad():
        batched = renderer(poses, Detectors.from_geometries(geometries))
    assert batched.shape == (2, 2, 65, 65)
    for b in range(2):
        for v, geometry in enumerate(geometries):
            single = render_drr(volume, geometry, matrix_ras=poses[b].numpy())
            np.testing.assert_allclose(batched[b, v].numpy(), single, rtol=1e-5, atol=1e-7)


def test_gradients_match_finite_differences():
    renderer = DRRRenderer(smooth_volume()).double()
    detectors = Detectors.from_geometries([ap_geometry(size=33, spacing=3.0), lat_geometry(size=33, spacing=3.0)],
                                          dtype=torch.float64)
    center = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    weights = torch.rand(1, 2, 33, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss(params):
        return (renderer(params_to_matrix_torch(params, center), detectors) * weights).sum()

    params = torch.tensor([[0.05, -0.03, 0.08, 2.0, -1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    loss(params).backward()
    eps = 1e-5
    numeric = torch.zeros(6, dtype=torch.float64)
    for index in range(6):
        step = torch.zeros_like(params)
        step[0, index] = eps
        numeric[index] = (loss(params.detach() + step) - loss(params.detach() - step)) / (2 * eps)
    torch.testing.assert_close(params.grad[0], numeric, rtol=2e-3, atol=2e-3 * numeric.abs().max().item())


def test_gradient_with_respect_to_geometry_exists():
    renderer = DRRRenderer(smooth_volume())
    detectors = Detectors.from_geometries([ap_geometry(size=17, spacing=6.0)])
    detectors.source.requires_grad_(True)
    renderer(torch.eye(4)[None], detectors).sum().backward()
    assert torch.isfinite(detectors.source.grad).all() and detectors.source.grad.abs().sum() > 0


def test_mask_and_roi_render_only_the_vertebra():
    volume = smooth_volume()
    mask = np.zeros(volume.array.shape, bool)
    mask[10:25, 12:30, 8:22] = True
    geometry = ap_geometry()
    masked = render_drr(volume, geometry, mask=mask)
    zeroed = render_drr(volume.with_array(np.where(mask, volume.array, 0).astype(np.float32)), geometry)
    np.testing.assert_allclose(masked, zeroed, rtol=1e-5, atol=1e-7)
    assert masked.sum() < 0.9 * render_drr(volume, geometry).sum()



def test_a_cropped_volume_renders_as_the_renderer_s_own_roi():
    """Volume.cropped keeps the voxels in their RAS place: rendering the crop (masked, block-averaged)
    is rendering the whole volume with that ROI."""
    volume = smooth_volume()
    mask = np.zeros(volume.array.shape, bool)
    mask[10:25, 12:30, 8:22] = True
    start, stop = (5, 9, 7), (31, 33, 29)
    crop = volume.cropped(start, stop)
    assert crop.shape_ijk == (26, 24, 22)
    np.testing.assert_allclose(crop.ijk_to_ras_points(np.zeros(3)), volume.ijk_to_ras_points(np.array(start, float)))
    detectors = Detectors.from_geometries([ap_geometry()])
    whole = DRRRenderer(volume, mask=mask, roi_ijk=(start, stop), downsample=(2, 1, 3))
    cropped = DRRRenderer(crop, mask=volume.with_array(mask).cropped(start, stop).array,
                          roi_ijk=((0, 0, 0), crop.shape_ijk), downsample=(2, 1, 3))
    with torch.no_grad():
        torch.testing.assert_close(cropped(torch.eye(4)[None], detectors), whole(torch.eye(4)[None], detectors))
    with pytest.raises(ValueError, match="does not overlap"):
        volume.cropped((50, 0, 0), (60, 10, 10))

def test_hu_to_mu():
    np.testing.assert_allclose(hu_to_mu(np.array([-1000.0, -1200.0, 0.0, 1000.0])), [0, 0, 0.0206, 0.0412], rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    volume = smooth_volume()
    renderer = DRRRenderer(volume)
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        renderer(torch.eye(4), Detectors.from_geometries([ap_geometry()]))
    with pytest.raises(ValueError, match="share one size"):
        Detectors.from_geometries([ap_geometry(size=65), lat_geometry(size=33)])
    with pytest.raises(ValueError, match="mask shape"):
        DRRRenderer(volume, mask=np.ones((3, 3, 3), bool))
    with pytest.raises(ValueError, match="empty"):
        DRRRenderer(volume, mask=np.zeros(volume.array.shape, bool))


def test_downsampled_volume_conserves_the_projection():
    volume = smooth_volume()
    geometry = ap_geometry(size=33, spacing=3.0)
    fine = DRRRenderer(volume)
    coarse = DRRRenderer(volume, downsample=2)
    assert coarse.shape_ijk == (20, 20, 20)
    with torch.no_grad():
        detectors = Detectors.from_geometries([geometry])
        a, b = fine(torch.eye(4)[None], detectors), coarse(torch.eye(4)[None], detectors)
    assert b.sum().item() == pytest.approx(a.sum().item(), rel=1e-2)
    assert (a - b).abs().max().item() < 0.08 * a.max().item()  # 4 mm voxels blur a ~9 mm blob a little


def test_averaging_along_the_beam_changes_the_projection_less_than_across_it():
    """Per-axis blocks: 4 voxels along the AP beam (RAS y, the j axis here) keep the image
    nearly exact; the same 4 voxels across it blur it."""
    volume = smooth_volume()
    geometry = ap_geometry(size=33, spacing=3.0)
    detectors = Detectors.from_geometries([geometry])
    assert DRRRenderer(volume, downsample=(1, 4, 1)).shape_ijk == (40, 10, 40)
    with torch.no_grad():
        exact = DRRRenderer(volume)(torch.eye(4)[None], detectors)
        along = DRRRenderer(volume, downsample=(1, 4, 1))(torch.eye(4)[None], detectors)
        across = DRRRenderer(volume, downsample=(4, 1, 1))(torch.eye(4)[None], detectors)
    assert along.sum().item() == pytest.approx(exact.sum().item(), rel=1e-2)
    assert (along - exact).abs().max() < 0.3 * (across - exact).abs().max()
    with pytest.raises(ValueError, match="downsample"):
        DRRRenderer(volume, downsample=(1, 0, 1))


def test_source_inside_the_volume_counts_only_the_segment_to_the_detector():
    ijk_to_ras, ras = grid_ras()
    values = np.full(ras.shape[:3], 0.01, np.float32)
    geometry = XrayGeometry(source=[0, 0, 0], detector_origin=[2, 100, 2], detector_u=[-1, 0, 0],
                            detector_v=[0, 0, -1], pixel_spacing=(1.0, 1.0), size=(5, 5))
    image = render_drr(Volume(values, ijk_to_ras), geometry)
    # From the centre to the volume's far face (y = +40 mm incl. the one-voxel interpolation ramp).
    assert image[2, 2] == pytest.approx(0.01 * 39.0, rel=0.03)
