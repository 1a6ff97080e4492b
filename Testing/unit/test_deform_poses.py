"""The spine-wide deformation from vertebra poses: se(3) blending, the field, its file and Slicer.

Checked against what must hold by construction: the field is each vertebra's pose inside it
(at its CT voxels), continuous and fold-free between vertebrae for plausible motions, the
Jacobian determinant of an affine field is det(I + A), Slicer's grid transform of our file
maps points as the field does, and a vertebra without a pose follows its neighbours.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SpineRegistrationLib.core.frames import apply_matrix
from SpineRegistrationLib.core.labelmap import Labelmap, centroids_ras
from SpineRegistrationLib.core.pose import params_to_matrix, se3_exp, se3_log
from SpineRegistrationLib.core.displacement import DisplacementField, check_memory, jacobian_stats, unfold
from SpineRegistrationLib.deform.polyrigid import (
    PolyRigidConfig,
    complete_poses,
    polyrigid_field,
    rigid_residuals,
)
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io.displacement import field_transform, read_displacement, warp_image, write_displacement
from SpineRegistrationLib.io.images import volume_to_image
from SpineRegistrationLib.io.transforms import resampling_transform
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom


@pytest.fixture(scope="module")
def spine():
    phantom = generate_phantom(PhantomConfig(seed=3, spacing_mm=1.5, vertebrae=("T12", "L1", "L2", "L3", "L4"),
                                             surroundings=False))
    return Labelmap(phantom.labels, "verse")


def articulated_poses(labelmap, rot_deg, trans_mm, seed=1):
    """A common pose of the spine plus an independent small motion of each vertebra."""
    rng = np.random.default_rng(seed)
    centres = centroids_ras(labelmap)
    common = np.array([2.0, -3.0, 4.0, 5.0, -8.0, 6.0])
    scale = np.array([rot_deg] * 3 + [trans_mm] * 3)
    return {name: params_to_matrix(common + rng.uniform(-1, 1, 6) * scale, centres[name]) for name in labelmap.labels}


def affine_field(matrix_a, offset, ijk_to_ras, shape=(10, 12, 14)):
    kk, jj, ii = np.indices(shape)
    points = apply_matrix(ijk_to_ras, np.stack([ii, jj, kk], -1).astype(float))
    return DisplacementField(points @ matrix_a.T + offset, ijk_to_ras)


OBLIQUE_GRID = np.array([[0.0, 2.5, 0, -10], [-2.0, 0, 0, 20], [0, 0, 3.0, 5], [0, 0, 0, 1]])
A = np.array([[0.01, 0.02, 0.0], [0.0, -0.03, 0.01], [0.02, 0.0, 0.015]])
B = np.array([1.0, -2.0, 3.0])


def test_se3_log_inverts_exp_and_matches_the_matrix_exponential():
    generator = torch.Generator().manual_seed(0)
    twists = torch.randn(200, 6, generator=generator, dtype=torch.float64) * torch.tensor([0.8] * 3 + [50.0] * 3,
                                                                                           dtype=torch.float64)
    twists[:3, :3] *= 1e-6  # near the identity: the series branches
    matrices = se3_exp(twists)
    torch.testing.assert_close(se3_log(matrices), twists, atol=1e-9, rtol=0)
    algebra = torch.zeros(200, 4, 4, dtype=torch.float64)
    omega = twists[:, :3]
    algebra[:, 0, 1], algebra[:, 0, 2], algebra[:, 1, 2] = -omega[:, 2], omega[:, 1], -omega[:, 0]
    algebra[:, 1, 0], algebra[:, 2, 0], algebra[:, 2, 1] = omega[:, 2], -omega[:, 1], omega[:, 0]
    algebra[:, :3, 3] = twists[:, 3:]
    torch.testing.assert_close(matrices, torch.linalg.matrix_exp(algebra), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="180"):
        se3_log(se3_exp(torch.tensor([[np.pi, 0, 0, 0, 0, 0]], dtype=torch.float64)))


def test_affine_field_maps_points_and_has_the_analytic_jacobian():
    field = affine_field(A, B, OBLIQUE_GRID)
    rng = np.random.default_rng(0)
    inside = apply_matrix(OBLIQUE_GRID, rng.uniform([0.2] * 3, [12.8, 10.8, 8.8], (100, 3)))
    np.testing.assert_allclose(field.map_points(inside), inside + inside @ A.T + B, atol=1e-9)
    transform = field_transform(field)  # what ITK (and the file) applies: LPS in and out
    lps = inside * [-1, -1, 1]
    itk = np.array([transform.TransformPoint(tuple(p)) for p in lps]) * [-1, -1, 1]
    np.testing.assert_allclose(itk, inside + inside @ A.T + B, atol=1e-9)
    stats = jacobian_stats(field)
    assert stats["min"] == pytest.approx(np.linalg.det(np.eye(3) + A), abs=1e-9)
    assert stats["max"] == pytest.approx(np.linalg.det(np.eye(3) + A), abs=1e-9)
    assert stats["folding_percent"] == 0.0 and stats["sdlogj"] < 1e-9
    folded = affine_field(np.diag([-1.5, 0.0, 0.0]), B, OBLIQUE_GRID)  # x -> -0.5 x: orientation flipped
    assert jacobian_stats(folded)["folding_percent"] == 100.0


def test_jacobian_of_a_quadratic_field_across_slabs_is_analytic():
    # u(y) = (0.01 z^2, 0.02 x z, 0.005 x y) in world mm on an oblique grid deep enough for several of
    # jacobian_determinant's slabs: central differences are exact for a quadratic, so every interior
    # node (the faces take one-sided differences) has det(I + du/dy) to rounding.
    shape = (41, 7, 6)
    k, j, i = np.indices(shape).reshape(3, -1)
    world = apply_matrix(OBLIQUE_GRID, np.stack([i, j, k], axis=1).astype(np.float64))
    x, y, z = world.T
    displacement = np.stack([0.01 * z**2, 0.02 * x * z, 0.005 * x * y], axis=1)
    gradient = np.zeros((world.shape[0], 3, 3))
    gradient[:, 0, 2] = 0.02 * z
    gradient[:, 1, 0], gradient[:, 1, 2] = 0.02 * z, 0.02 * x
    gradient[:, 2, 0], gradient[:, 2, 1] = 0.005 * y, 0.005 * x
    expected = np.linalg.det(np.eye(3) + gradient).reshape(shape)
    determinant = DisplacementField(displacement.reshape(shape + (3,)), OBLIQUE_GRID).jacobian_determinant()
    np.testing.assert_allclose(determinant[1:-1, 1:-1, 1:-1], expected[1:-1, 1:-1, 1:-1], atol=1e-9)

def squeezed_field(shape=(24, 24, 30)):
    """A field on a 1 mm grid whose x displacement drops by 6 mm over nodes i = 13..17 (J = -0.5
    there) in a tube about the grid's axis (|j - c|, |k - c| <= 3), tapering to nothing 4 nodes further out."""
    i = np.arange(shape[2], dtype=np.float64)
    drop = -1.5 * np.clip(i - 13, 0, 4)  # 0 up to i = 13, -6 from i = 17

    def taper(n):
        off = np.abs(np.arange(n) - (n - 1) / 2)
        return np.where(off <= 3, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip(off - 3, 0, 4) / 4))

    displacement = np.zeros(shape + (3,))
    displacement[..., 0] = taper(shape[0])[:, None, None] * taper(shape[1])[None, :, None] * drop[None, None, :]
    return DisplacementField(displacement, np.eye(4))


def test_unfold_smooths_a_fold_between_fixed_nodes_and_keeps_them():
    field = squeezed_field()
    assert field.jacobian_determinant().min() == pytest.approx(-0.5)
    fixed = np.zeros(field.displacement.shape[:3], dtype=bool)
    fixed[..., :8] = fixed[..., 23:] = True  # two "rigid zones" 15 nodes apart, 6 mm closer in the CT
    before = field.displacement.copy()
    changed = unfold(field, fixed)
    assert 0 < changed <= (~fixed).sum()
    np.testing.assert_array_equal(field.displacement[fixed], before[fixed])
    determinant = field.jacobian_determinant()[2:-2, 2:-2, 2:-2]
    assert determinant.min() > 0.05  # 6 mm over 15 free nodes leaves room: J = 0.6 if spread evenly


def test_unfold_leaves_a_fold_enclosed_by_fixed_nodes_unless_they_may_yield():
    field = squeezed_field()
    before = field.displacement.copy()
    fixed = np.zeros(field.displacement.shape[:3], dtype=bool)
    fixed[..., 11:20] = True  # the fold and a node around it are held
    unfold(field, fixed)
    np.testing.assert_array_equal(field.displacement[fixed], before[fixed])
    assert field.jacobian_determinant()[10:14, 10:14, 14:17].max() < 0  # a fold the repair may not touch stays
    # The same nodes allowed to yield where nothing else helps: the fold goes.
    field = squeezed_field()
    unfold(field, fixed, yielding=fixed)
    assert field.jacobian_determinant()[2:-2, 2:-2, 2:-2].min() > 0.05


def test_field_file_round_trip_and_one_line_errors(tmp_path):
    field = affine_field(A, B, OBLIQUE_GRID)
    write_displacement(field, tmp_path / "field.h5")
    back = read_displacement(tmp_path / "field.h5")
    np.testing.assert_allclose(back.displacement, field.displacement, atol=1e-12)
    np.testing.assert_allclose(back.ijk_to_ras, field.ijk_to_ras, atol=1e-12)
    with pytest.raises(InputError, match="not found"):
        read_displacement(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="cannot read"):
        read_displacement(tmp_path / "junk.h5")
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "rigid.h5"))
    with pytest.raises(InputError, match="not a displacement field"):
        read_displacement(tmp_path / "rigid.h5")
    with pytest.raises(InputError, match=r"\.h5"):
        write_displacement(field, tmp_path / "field.nrrd")


def test_slicer_loads_the_field_as_a_grid_transform_from_parent(tmp_path):
    slicer = pytest.importorskip("slicer")
    field = affine_field(A, B, OBLIQUE_GRID)
    write_displacement(field, tmp_path / "displacement.h5")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "displacement.h5"))
    assert storage.ReadData(node)
    from_parent = node.GetTransformFromParent()
    points = apply_matrix(OBLIQUE_GRID, np.random.default_rng(1).uniform([1] * 3, [12, 10, 8], (30, 3)))
    mapped = np.array([from_parent.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(mapped, field.map_points(points), atol=0.02)  # Slicer keeps float32 vectors
    to_parent = node.GetTransformToParent()  # and inverts it: CT -> world, where the CT is shown
    back = np.array([to_parent.TransformPoint(p.tolist()) for p in mapped])
    np.testing.assert_allclose(back, points, atol=0.02)


def test_field_is_rigid_inside_each_vertebra_and_does_not_fold(spine):
    poses = articulated_poses(spine, rot_deg=1.5, trans_mm=1.0)
    built = polyrigid_field(spine, poses)
    assert built.inferred == []
    stats = jacobian_stats(built.field)
    assert stats["folding_percent"] == 0.0 and stats["min"] > 0.05
    for name, residual in rigid_residuals(built.field, spine, poses).items():
        assert residual["within_0_1_mm"] > 0.98, (name, residual)
        assert residual["mean_mm"] < 0.02, (name, residual)
    # The grid nodes inside a moved vertebra are its pose to float precision.
    grid = built.field.grid
    name = "L2"
    image = volume_to_image(spine.volume)
    moved = sitk.Resample(image == spine.labels[name], volume_to_image(grid), resampling_transform(poses[name]),
                          sitk.sitkNearestNeighbor, 0)
    kk, jj, ii = np.nonzero(sitk.GetArrayFromImage(sitk.BinaryErode(moved, [1, 1, 1])))
    world = grid.ijk_to_ras_points(np.stack([ii, jj, kk], 1).astype(float))
    np.testing.assert_allclose(built.field.map_points(world), apply_matrix(np.linalg.inv(poses[name]), world),
                               atol=1e-6)


def test_every_voxel_is_its_pose_unless_another_vertebra_shares_its_cells_nodes(spine):
    # Trilinear interpolation moves a voxel by its cell's 8 nodes; where none of those nodes is
    # also a node of a cell holding another vertebra's voxel, the field must be the voxel's pose
    # exactly, thin processes included (a mask resampled at the nodes lost those). Motions that
    # need no fold repair (which may bend the nodes where two vertebrae meet).
    poses = articulated_poses(spine, rot_deg=0.1, trans_mm=0.1, seed=2)
    built = polyrigid_field(spine, poses)
    assert built.unfolded_nodes == 0
    field = built.field
    to_grid = np.linalg.inv(field.ijk_to_ras)
    shape = field.displacement.shape[:3]
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    voxels, nodes_of = {}, {}
    for name, label in spine.labels.items():
        k, j, i = np.nonzero(spine.volume.array == label)
        ct = spine.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
        cells = np.floor(apply_matrix(to_grid @ poses[name], ct)).astype(int)
        nodes = cells[:, None, :] + corners[None]  # (voxels, 8, ijk)
        voxels[name] = ct
        nodes_of[name] = np.ravel_multi_index((nodes[..., 2], nodes[..., 1], nodes[..., 0]), shape)
    claims = np.zeros(int(np.prod(shape)), dtype=int)
    for name in spine.labels:
        claims[np.unique(nodes_of[name])] += 1
    unshared_total = 0
    for name in spine.labels:
        unshared = (claims[nodes_of[name]] == 1).all(axis=1)
        error = np.linalg.norm(field.map_points(apply_matrix(poses[name], voxels[name][unshared]))
                               - voxels[name][unshared], axis=1)
        assert error.max() < 1e-3, (name, error.max())
        unshared_total += unshared.mean() / len(spine.labels)
    assert unshared_total > 0.9  # most voxels are checked


def test_a_node_two_vertebrae_claim_goes_to_the_nearer_voxel():
    # Two vertebrae with a voxel each in the same grid cell (continuous grid i, j, k), a third far
    # away: each corner of that cell goes to the vertebra whose voxel is nearer to it.
    from SpineRegistrationLib.deform.polyrigid import _share_contested_nodes

    shape = (4, 4, 4)  # K, J, I
    moved = [np.array([[1.2, 1.1, 1.3]], np.float32), np.array([[1.9, 1.8, 1.7]], np.float32),
             np.array([[3.0, 3.0, 3.0]], np.float32)]
    corners = [(i, j, k) for i in (1, 2) for j in (1, 2) for k in (1, 2)]
    contested = np.array([np.ravel_multi_index((k, j, i), shape) for i, j, k in corners])
    owner = np.zeros(int(np.prod(shape)), dtype=np.int16)
    _share_contested_nodes(owner, contested, moved, shape)
    for (i, j, k), node in zip(corners, contested):
        nearer = int(np.argmin([np.linalg.norm(np.array([i, j, k]) - m[0]) for m in moved[:2]]))
        assert owner[node] == nearer, (i, j, k)
    assert set(owner[contested]) == {0, 1}


def test_the_blends_folds_are_smoothed_away_outside_the_rigid_zones(spine):
    # Steeper weights (power 2) and +-3 deg / +-2 mm per vertebra fold the blend in the gaps;
    # the repair removes every fold and changes no node inside a moved vertebra.
    poses = articulated_poses(spine, rot_deg=3.0, trans_mm=2.0)
    folded = polyrigid_field(spine, poses, PolyRigidConfig(power=2.0, unfold=False))
    assert jacobian_stats(folded.field)["folding_percent"] > 0 and folded.unfolded_nodes == 0
    repaired = polyrigid_field(spine, poses, PolyRigidConfig(power=2.0))
    stats = jacobian_stats(repaired.field)
    assert stats["folding_percent"] == 0.0 and stats["min"] > 0.05 and repaired.unfolded_nodes > 0
    changed = np.any(repaired.field.displacement != folded.field.displacement, axis=-1)
    assert 0 < changed.sum() <= repaired.unfolded_nodes
    image, grid = volume_to_image(spine.volume), volume_to_image(repaired.field.grid)
    for name, label in spine.labels.items():
        moved = sitk.Resample(image == label, grid, resampling_transform(poses[name]), sitk.sitkNearestNeighbor, 0)
        inside = sitk.GetArrayFromImage(sitk.BinaryErode(moved, [1, 1, 1])) > 0  # clear of the resampling's edge
        assert not (changed & inside).any(), name


def test_warped_segmentation_matches_the_rigidly_moved_vertebrae(spine):
    poses = articulated_poses(spine, rot_deg=3.0, trans_mm=2.0, seed=2)
    built = polyrigid_field(spine, poses)
    image = volume_to_image(spine.volume)
    warped = sitk.GetArrayFromImage(warp_image(image, built.field, image, labels=True))
    for name, label in spine.labels.items():
        truth = sitk.GetArrayFromImage(sitk.Resample(image == label, image, resampling_transform(poses[name]),
                                                     sitk.sitkNearestNeighbor, 0)) > 0
        ours = warped == label
        dice = 2 * (ours & truth).sum() / (ours.sum() + truth.sum())
        assert dice > 0.99, (name, dice)
    identity = sitk.GetArrayFromImage(image)
    moved_far = [2 * ((identity == label) & (warped == label)).sum() / ((identity == label).sum() + (warped == label).sum())
                 for label in spine.labels.values()]
    assert max(moved_far) < 0.8  # the poses (~10 mm) did move it: the test can fail


def test_unregistered_vertebrae_follow_their_neighbours(spine):
    poses = articulated_poses(spine, rot_deg=3.0, trans_mm=2.0)
    registered = {name: poses[name] for name in ("T12", "L2", "L3")}
    origin = np.zeros(3)
    completed = complete_poses(list(spine.labels), registered, origin)
    for name in registered:
        np.testing.assert_allclose(completed[name], registered[name])
    # L1 is halfway between T12 and L2 in se(3); L4 copies L3 (the registered end).
    halfway = se3_exp(0.5 * (se3_log(torch.as_tensor(registered["T12"])[None])
                             + se3_log(torch.as_tensor(registered["L2"])[None])))[0].numpy()
    np.testing.assert_allclose(completed["L1"], halfway, atol=1e-9)
    np.testing.assert_allclose(completed["L4"], registered["L3"], atol=1e-9)
    built = polyrigid_field(spine, registered)
    assert built.inferred == ["L1", "L4"]
    assert set(rigid_residuals(built.field, spine, built.poses)) == set(spine.labels)


def test_bad_input_is_one_clear_error(spine):
    with pytest.raises(InputError, match="not in the segmentation"):
        polyrigid_field(spine, {"C3": np.eye(4)})
    with pytest.raises(InputError, match="no registered vertebra"):
        polyrigid_field(spine, {})
    with pytest.raises(InputError, match="positive"):
        PolyRigidConfig(spacing_mm=0)
    with pytest.raises(InputError, match=r"spacing of [0-9.]+ mm or more"):
        check_memory(10**12, 260, 2.0)
