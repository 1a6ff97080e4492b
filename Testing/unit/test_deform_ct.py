"""CT-to-CT registration: the linear stage, the similarities, the synthetic pairs, the network,
register_ct_pair, train-deform and spinereg deform --fixed/--moving.

Checked against what holds by construction: a known rigid motion of a phantom is recovered,
losses vanish for identical images and see through gain and offset, a loss's gradient points
towards a known shift, the synthetic truth warps the moving image onto the fixed one, the
network's field is diffeomorphic, and bad input is one line with exit status 2, nothing written.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from SpineRegistrationLib.cli import main
from SpineRegistrationLib.core.labelmap import Labelmap
from SpineRegistrationLib.core.metrics import dice_per_label, hd95_mm
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.deform import ct_pair
from SpineRegistrationLib.deform.affine import (AffineConfig, Problem, linear_part, matrix_field, register_affine,
                                               register_affine_batch)
from SpineRegistrationLib.deform.affine import params_to_matrix as affine_matrix
from SpineRegistrationLib.core.displacement import DisplacementField, jacobian_stats
from SpineRegistrationLib.core.grid import Grid, ras_mm_to_voxel, sample, voxel_to_ras_mm, volume_on_grid
from SpineRegistrationLib.deform.network import DeformModelConfig, FlowFeatures, build_network
from SpineRegistrationLib.deform.similarity import PER_SAMPLE, SIMILARITIES, similarity_loss
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import write_labelmap, write_volume
from SpineRegistrationLib.synthetic.deformation_pairs import DeformationConfig, PairSource, synthetic_pair
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom


@pytest.fixture(scope="module")
def phantom():
    p = generate_phantom(PhantomConfig(seed=5, spacing_mm=2.0, vertebrae=("L1", "L2", "L3"),
                                       field_of_view_mm=(150.0, 130.0), noise_hu=0.0))
    return p.ct, Labelmap(p.labels, "verse")


def moved_copy(ct: Volume, matrix: np.ndarray) -> Volume:
    """The CT seen through ``matrix`` (moving RAS <- fixed RAS): moving(x) = ct(matrix^-1 x)."""
    grid = Grid(ct.array.shape, ct.ijk_to_ras)
    inverse = torch.as_tensor(np.linalg.inv(matrix), dtype=torch.float32)
    points = grid.points_ras() @ inverse[:3, :3].T + inverse[:3, 3]
    return ct.with_array(volume_on_grid(ct, grid, points_ras=points, pool=False).numpy())


# ---------------------------------------------------------------------- linear stage
def test_rigid_registration_recovers_a_known_motion(phantom):
    ct, labelmap = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    truth = params_to_matrix(np.array([4.0, -3.0, 5.0, 6.0, -4.0, 5.0]), centre)
    result = register_affine(ct, moved_copy(ct, truth), AffineConfig(levels_mm=(8.0, 4.0), steps=(60, 30)))
    points = ct.ijk_to_ras_points(np.argwhere(labelmap.volume.array > 0)[:, ::-1].astype(float))
    error = np.linalg.norm(points @ (result.matrix - truth)[:3, :3].T + (result.matrix - truth)[:3, 3], axis=1)
    assert error.mean() < 0.8, error.mean()
    field = matrix_field(result.matrix, Grid.covering(*ct.bounds_ras(), 8.0))
    assert np.allclose(field.map_points(points[:5]), points[:5] @ result.matrix[:3, :3].T + result.matrix[:3, 3])


def test_affine_without_scaling_keeps_volume_and_the_full_affine_scales():
    params = torch.randn(12, dtype=torch.float64)
    assert torch.det(linear_part(params, "affine_noscale")).item() == pytest.approx(1.0, abs=1e-9)
    assert torch.det(linear_part(params, "affine")).item() != pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(linear_part(params, "rigid") @ linear_part(params, "rigid").T,
                          torch.eye(3, dtype=torch.float64), atol=1e-9)


def test_a_batch_of_registrations_gives_each_its_own_result(phantom):
    """Three problems of different sizes (each vertebra's mask on its own crop, the moving CT
    cropped to three different boxes, so the batch pads points and volumes) optimised together:
    every matrix is the one its registration reaches alone, and each recovers the known motion."""
    ct, labelmap = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    truth = params_to_matrix(np.array([3.0, -2.0, 2.0, 3.0, -2.0, 2.0]), centre)
    moving = moved_copy(ct, truth)
    config = AffineConfig(levels_mm=(4.0, 2.0), steps=(30, 15), margin_mm=4.0)
    problems = []
    for index, label in enumerate(labelmap.labels.values()):
        k, j, i = np.nonzero(labelmap.volume.array == label)
        start = np.array([i.min(), j.min(), k.min()]) - 3
        stop = np.array([i.max(), j.max(), k.max()]) + 4
        near = ct.cropped(start, stop)
        mask = labelmap.volume.cropped(start, stop).array == label
        far = moving.cropped(np.maximum(start - 6 - 3 * index, 0), stop + 6 + 2 * index)
        problems.append(Problem(near, far, mask=mask))
    together = register_affine_batch(problems, config)
    assert len({p.moving.array.shape for p in problems}) == 3
    for problem, result in zip(problems, together):
        alone = register_affine(problem.fixed, problem.moving, config, mask=problem.mask)
        k, j, i = np.nonzero(problem.mask)
        points = problem.fixed.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
        homogeneous = np.c_[points, np.ones(len(points))]
        assert np.abs(homogeneous @ (result.matrix - alone.matrix)[:3].T).max() < 0.02  # mm
        assert result.loss == pytest.approx(alone.loss, abs=1e-4)
        assert np.linalg.norm(homogeneous @ (result.matrix - truth)[:3].T, axis=1).mean() < 0.8


def test_the_matrices_of_a_batch_are_those_of_each():
    params = torch.randn(4, 12, dtype=torch.float64)
    centres = torch.randn(4, 3, dtype=torch.float64) * 50.0
    for transform in ("rigid", "affine_noscale", "affine"):
        batch = affine_matrix(params, transform, centres)
        for b in range(4):
            single = affine_matrix(params[b], transform, centres[b])
            assert torch.allclose(batch[b], single, atol=1e-12)


def test_non_overlapping_moving_ct_is_one_line(phantom):
    ct, _ = phantom
    far = Volume(ct.array, ct.ijk_to_ras @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2000], [0, 0, 0, 1.0]]))
    with pytest.raises(InputError, match="do not overlap") as error:
        ct_pair.check_inputs(ct, far, None, None)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------- similarities
@pytest.mark.parametrize("name", SIMILARITIES)
def test_similarities_are_lowest_for_identical_images_and_see_through_gain(name):
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24, generator=generator), 3, 1, 1)
    other = torch.roll(image, 3, dims=-1)
    same, shifted = similarity_loss(name, image, image), similarity_loss(name, image, other)
    assert same < shifted
    if name in ("ncc", "lncc", "mi", "mind"):  # gain- and offset-invariant (mse is not meant to be)
        assert similarity_loss(name, image, 0.5 * image + 0.2) < shifted
    if name in ("mse", "ncc", "mind"):
        assert float(same) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_per_sample_losses_are_each_elements_own(name):
    """Stacked with other images and weights, each element's loss is the one it has alone."""
    generator = torch.Generator().manual_seed(1)
    fixed, warped = torch.rand(3, 1, 6, 7, 8, generator=generator), torch.rand(3, 1, 6, 7, 8, generator=generator)
    weight = (torch.rand(3, 1, 6, 7, 8, generator=generator) > 0.3).float()
    stacked = similarity_loss(name, fixed, warped, weight, per_sample=True)
    alone = [similarity_loss(name, fixed[b:b + 1], warped[b:b + 1], weight[b:b + 1]) for b in range(3)]
    assert stacked.shape == (3,) and torch.allclose(stacked, torch.stack(alone), atol=1e-6)
    assert len(set(stacked.tolist())) == 3
    with pytest.raises(ValueError, match="pools the batch"):
        similarity_loss("lncc", fixed, warped, per_sample=True)


@pytest.mark.parametrize("name", SIMILARITIES)
def test_the_gradient_points_towards_a_known_shift(name):
    """A blob 3 mm to the right: d loss / d t_x < 0 at t = 0 (moving right helps), the others ~0."""
    grid = Grid((32, 32, 32), np.diag([1.0, 1.0, 1.0, 1.0]) @ np.array(
        [[1, 0, 0, -15.5], [0, 1, 0, -15.5], [0, 0, 1, -15.5], [0, 0, 0, 1.0]]))
    points = grid.points_ras()
    blob = lambda centre: torch.exp(-((points - torch.tensor(centre)) ** 2).sum(-1) / (2 * 5.0**2))
    fixed, moving = blob([0.0, 0.0, 0.0])[None, None], blob([3.0, 0.0, 0.0])[None]
    shift = torch.zeros(3, requires_grad=True)
    warped = sample(moving, grid.ijk_to_ras, points + shift)[None]
    similarity_loss(name, fixed, warped).backward()
    assert shift.grad[0] < 0 and abs(float(shift.grad[1])) < 0.05 * abs(float(shift.grad[0]))


def test_voxel_and_ras_displacements_convert_both_ways():
    grid = Grid((16, 16, 32), np.diag([2.0, 2.0, 2.0, 1.0]))
    ras = torch.zeros(1, 16, 16, 32, 3)
    ras[..., 0] = 4.0  # 4 mm to the right = 2 voxels along i = channel 2 (k, j, i order)
    voxels = ras_mm_to_voxel(ras, grid)
    assert torch.allclose(voxels[0, 2], torch.full((16, 16, 32), 2.0)) and voxels[0, :2].abs().max() == 0
    assert torch.allclose(voxel_to_ras_mm(voxels, grid), ras)


# ---------------------------------------------------------------------- metrics
def test_dice_and_hd95_of_a_shifted_cube():
    a = np.zeros((20, 20, 20), int)
    a[5:10, 5:10, 5:10] = 1
    b = np.roll(a, 2, axis=2)
    assert dice_per_label(a, b, [1])[1] == pytest.approx(0.6)
    assert hd95_mm(a == 1, b == 1, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95_mm(a == 1, b == 1, (3.0, 1.0, 1.0)) == pytest.approx(6.0)  # i is the last array axis


# ---------------------------------------------------------------------- synthetic pairs and the network
def test_the_synthetic_truth_carries_the_moving_ct_onto_the_fixed_one(phantom):
    ct, labelmap = phantom
    config = DeformationConfig(noise=0.0)
    fixed, fixed_seg, truth = synthetic_pair(ct, labelmap, np.random.default_rng(0), config)
    stats = jacobian_stats(truth)
    assert stats["folding_percent"] == 0.0 and 0.0 < stats["min"] and stats["max"] < 5.0
    before = dice_per_label(fixed_seg.volume.array, labelmap.volume.array, labelmap.values)
    assert min(before.values()) < 0.9  # the vertebrae did move
    moved = ct_pair.warp_labelmap(labelmap, truth, fixed)
    after = dice_per_label(fixed_seg.volume.array, moved.volume.array, labelmap.values)
    assert min(after.values()) > 0.99


def test_the_synthetic_truth_moves_each_vertebra_rigidly(phantom):
    """Inside every vertebra (its voxels deeper than 4 mm, farther than the motion, so the flow
    never leaves the bone) the truth is one rigid motion (mean residual < 0.01 mm, the most
    < 0.3 mm: the integration's interpolation), and not the identity."""
    from scipy.ndimage import distance_transform_edt

    from SpineRegistrationLib.deform.rigid_network import kabsch

    ct, labelmap = phantom
    config = DeformationConfig(rotation_deg=4.0, translation_mm=3.0, noise=0.0)
    _, _, truth = synthetic_pair(ct, labelmap, np.random.default_rng(5), config)
    for name, label in labelmap.labels.items():
        inside = labelmap.volume.array == label
        deep = distance_transform_edt(inside, sampling=ct.spacing_mm[::-1]) > 4.0
        y = ct.ijk_to_ras_points(np.argwhere(deep)[:, ::-1].astype(float))
        x = truth.map_points(y)
        fit = kabsch(torch.as_tensor(y)[None], torch.as_tensor(x)[None])[0].numpy()
        residual = np.linalg.norm(y @ fit[:3, :3].T + fit[:3, 3] - x, axis=1)
        # (with the old weights 1 / (1 + (D/f)^2) the neighbours' share made it 0.029 mm / 0.64 mm)
        assert len(y) > 50 and residual.mean() < 0.01 and residual.max() < 0.3, (name, residual.mean(), residual.max())
        assert np.linalg.norm(x - y, axis=1).mean() > 0.5


def test_training_samples_are_consistent_with_their_truth(phantom):
    from monai.networks.blocks import Warp

    ct, labelmap = phantom
    source = PairSource(ct, labelmap, 4.0)
    pair = source.sample((16, 16, 16), np.random.default_rng(1), DeformationConfig(noise=0.0))
    warped = Warp()(pair["moving"][None], pair["truth"][None])[0]
    assert ((warped - pair["fixed"]) ** 2).mean() < 0.2 * ((pair["moving"] - pair["fixed"]) ** 2).mean()


def test_the_networks_integration_unfolds_a_swirl_that_folds_as_a_displacement():
    # A swirl of 3 rad at its axis: as a displacement it folds; integrated by the network's
    # scaling and squaring (its velocity taken as a stationary flow) it is a diffeomorphism.
    network = build_network(DeformModelConfig())
    n = 40
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - n / 2 + 0.5,) * 3, indexing="ij")
    theta = 3.0 * torch.exp(-(x ** 2 + y ** 2) / 36.0)
    velocity = torch.stack([torch.zeros_like(x), -theta * x, theta * y])  # voxels along (K, J, I)

    def folding(ddf: torch.Tensor) -> float:
        return jacobian_stats(DisplacementField(ddf.permute(1, 2, 3, 0).numpy()[..., ::-1].copy(), np.eye(4)))[
            "folding_percent"]

    with torch.no_grad():
        integrated = network.dvf2ddf(velocity[None])[0]
    assert float(integrated.abs().max()) > 5.0  # it does swirl
    assert folding(velocity) > 1.0
    assert folding(integrated) == 0.0


def test_the_flow_features_give_a_known_sub_voxel_shift_by_lucas_kanade():
    # fixed(y) = moving(y + u) for a constant u (voxels, K J I): the features' least-squares
    # flow, sum(d g) / sum(g g^T) per axis, is u at the given scale and at the smoothed one.
    n, u = 32, torch.tensor([0.3, -0.2, 0.1])
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64),) * 3, indexing="ij"))

    def blobs(shift):
        points = grid + shift.double()[:, None, None, None]
        return sum(torch.exp(-((points - torch.tensor(c, dtype=torch.float64)[:, None, None, None]) ** 2).sum(0) / 18.0)
                   for c in ((12, 14, 16), (20, 17, 13), (15, 21, 19)))

    pair = torch.stack([blobs(torch.zeros(3)), blobs(u)])[None].float()
    features = FlowFeatures()(pair)[0].double()
    inner = (slice(None),) + (slice(4, n - 4),) * 3
    for first in (3, 10):  # the scales' gradient channels; their products follow them
        g, dg = features[first:first + 3][inner], features[first + 3:first + 6][inner] / 4.0
        flow = torch.linalg.solve(torch.einsum("aijk,bijk->ab", g, g), dg.sum((1, 2, 3)))
        assert torch.allclose(flow, u.double(), atol=0.03), (first, flow)
    assert features.shape[0] == FlowFeatures.channels
    # Standardised together: the features do not change with the intensity window.
    assert torch.allclose(FlowFeatures()(3.0 * pair + 0.5), features.float()[None], atol=1e-4)


def test_model_files_before_the_inputs_field_are_plain_half_resolution_voxelmorph():
    legacy = {"spacing_mm": 2.0, "channels": [16, 16, 16, 32, 32, 32], "final_channels": [16, 8], "integration_steps": 7}
    config = DeformModelConfig.from_dict(legacy)
    assert (config.inputs, config.half_res, config.multiple) == ("images", True, 16)
    network = build_network(config)
    assert network.half_res and not any(isinstance(m, FlowFeatures) for m in network.modules())
    assert DeformModelConfig.from_dict(DeformModelConfig().to_dict()) == DeformModelConfig()
    assert any(isinstance(m, FlowFeatures) for m in build_network(DeformModelConfig()).modules())
    with pytest.raises(ValueError, match="inputs must be one of"):
        DeformModelConfig(inputs="edges")


def test_the_shipped_network_moves_the_vertebrae_towards_the_truth_without_folding(phantom):
    # A phantom the network never saw (seed 5; it trained on seeds 2000-2005), its vertebrae moved
    # by up to 5 deg / 3 mm and soft tissue by 4 mm: after the rigid stage, the network's field
    # takes the vertebra voxels closer to where the truth takes them, and does not fold.
    from SpineRegistrationLib.deform.network import load_network, shipped_network_path

    ct, labelmap = phantom
    fixed, fixed_seg, truth = synthetic_pair(ct, labelmap, np.random.default_rng(2), DeformationConfig())
    points = fixed.ijk_to_ras_points(np.argwhere(fixed_seg.volume.array > 0)[:, ::-1].astype(float))

    def error(field: DisplacementField) -> float:
        return float(np.linalg.norm(field.map_points(points) - truth.map_points(points), axis=1).mean())

    linear = ct_pair.PairConfig(affine=AffineConfig(levels_mm=(8.0, 4.0), steps=(30, 20)))
    rigid, _ = ct_pair.register_ct_pair(fixed, ct, fixed_seg, labelmap, dataclasses.replace(linear, deformable=False))
    network = load_network(shipped_network_path())
    field, info = ct_pair.register_ct_pair(fixed, ct, fixed_seg, labelmap, linear, network=network)
    assert error(field) < 0.75 * error(rigid), (error(field), error(rigid))
    assert jacobian_stats(field)["folding_percent"] < 0.05
    assert len(info["matrix_moving_from_fixed"]) == 4 and info["grid"]["spacing_mm"] == network[1].spacing_mm


def test_a_working_grid_too_large_for_memory_says_what_fits(phantom):
    ct, labelmap = phantom
    with pytest.raises(InputError, match=r"would fit") as error:
        ct_pair.working_grid(ct, labelmap, 2.0, 16, memory_bytes=1 << 20)
    assert "\n" not in str(error.value) and "mm per side" in str(error.value)


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def pair_files(phantom, tmp_path_factory):
    ct, labelmap = phantom
    folder = tmp_path_factory.mktemp("pair")
    fixed, fixed_seg, _ = synthetic_pair(ct, labelmap, np.random.default_rng(3), DeformationConfig())
    write_volume(ct, folder / "moving.nii.gz")
    write_labelmap(labelmap, folder / "moving_seg.nii.gz")
    write_volume(fixed, folder / "fixed.nii.gz")
    write_labelmap(fixed_seg, folder / "fixed_seg.nii.gz")
    empty = Labelmap(labelmap.volume.with_array(np.zeros_like(labelmap.volume.array)), "verse")
    write_labelmap(empty, folder / "empty_seg.nii.gz")
    small = Labelmap(Volume(labelmap.volume.array[:-4], labelmap.volume.ijk_to_ras), "verse")
    write_labelmap(small, folder / "small_seg.nii.gz")
    far = Volume(ct.array, ct.ijk_to_ras @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3000], [0, 0, 0, 1.0]]))
    write_volume(far, folder / "far.nii.gz")
    return folder


def test_deform_pair_writes_the_folder(pair_files, tmp_path, capsys):
    f = pair_files
    out = tmp_path / "out"
    args = ["deform", "--fixed", str(f / "fixed.nii.gz"), "--moving", str(f / "moving.nii.gz"),
            "--fixed-seg", str(f / "fixed_seg.nii.gz"), "--moving-seg", str(f / "moving_seg.nii.gz"), "--out", str(out)]
    if ct_pair_model() is None:
        args.append("--linear-only")
    assert main(args) == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["deform.json", "displacement.h5", "warped_seg.nii.gz", "warped_seg.seg.nrrd"]
    document = json.loads((out / "deform.json").read_text())
    assert document["mode"] == "ct-pair" and set(document["vertebrae"]) == {"L1", "L2", "L3"}
    assert all(0.0 <= v["dice"] <= 1.0 and v["hd95_mm"] >= 0 for v in document["vertebrae"].values())
    assert document["jacobian"]["folding_percent"] < 0.05


def ct_pair_model():
    from SpineRegistrationLib.deform.network import shipped_network_path

    return shipped_network_path()


@pytest.mark.parametrize("case, message", [
    ({"--moving": "far.nii.gz", "--moving-seg": None}, "do not overlap"),
    ({"--moving-seg": "empty_seg.nii.gz"}, "empty"),
    ({"--fixed-seg": "small_seg.nii.gz"}, "does not share the CT's voxel grid"),
    ({"--fixed": "missing.nii.gz"}, "missing.nii.gz"),
])
def test_deform_pair_bad_input_is_one_line_and_writes_nothing(pair_files, tmp_path, capsys, case, message):
    f = pair_files
    options = {"--fixed": "fixed.nii.gz", "--moving": "moving.nii.gz", "--fixed-seg": "fixed_seg.nii.gz",
               "--moving-seg": "moving_seg.nii.gz", **case}
    out = tmp_path / "out"
    args = ["deform", "--linear-only", "--out", str(out)] + [
        x for k, v in options.items() if v is not None for x in (k, str(f / v))]
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith("spinereg: error:") and message in errors[0], errors
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_deform_pair_too_large_for_memory(pair_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ct_pair, "available_memory_bytes", lambda: 1 << 20)
    f = pair_files
    out = tmp_path / "out"
    assert main(["deform", "--linear-only", "--fixed", str(f / "fixed.nii.gz"), "--moving", str(f / "moving.nii.gz"),
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "would fit" in errors[0] and not out.exists()


def test_train_deform_runs_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    from SpineRegistrationLib.deform import training

    base = ["train-deform", "--phantoms", "1", "--spacing-mm", "4", "--crop", "16", "--steps", "4",
            "--checkpoint-every", "2", "--log-every", "1", "--workers", "0"]
    assert main(base + ["--out", str(tmp_path / "straight")]) == 0
    calls = {"n": 0}
    forward = training.DeformLoss.forward

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, *args)

    monkeypatch.setattr(training.DeformLoss, "forward", interrupted)
    assert main(base + ["--out", str(tmp_path / "resumed")]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(training.DeformLoss, "forward", forward)
    assert main(base + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)
    rows = (tmp_path / "resumed" / "log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    assert main(base + ["--out", str(tmp_path / "resumed")]) == 2  # not empty, no --resume
