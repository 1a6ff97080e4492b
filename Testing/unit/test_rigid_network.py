"""The learned rigid CT-to-CT stage: its matrix convention, its passes, its training pairs and
loss, train-deform --network rigid, and spinereg deform --rigid-start.

Checked against what holds by construction: the keypoint fit recovers a known rigid map and
never reflects, identical CTs give the identity whatever the weights, the passes compose about
the centre in the resampling direction, a purely rigid synthetic pair's truth is fitted exactly
by one rigid map (so the loss and the pair agree on axes and directions), and the shipped
network brings a held-out phantom turned by a known pose closer than it started.
"""

import json

import numpy as np
import pytest
import torch

from SpineRegistrationLib.cli import main
from SpineRegistrationLib.core.labelmap import Labelmap
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.deform import rigid_network
from SpineRegistrationLib.deform.ct_pair import PairConfig, linear_stage
from SpineRegistrationLib.deform.rigid_network import (RigidKeypointNet, RigidNetConfig, about_centre, kabsch,
                                                       predict_rigid, shipped_rigid_path)
from SpineRegistrationLib.deform.training import RigidPairStream, TrainRigidConfig, rigid_loss, train_deform
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.learned.checkpoint import save_atomic
from SpineRegistrationLib.io import write_volume
from SpineRegistrationLib.synthetic.deformation_pairs import DeformationConfig, PairSource
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom

from test_deform_ct import moved_copy

SMALL = RigidNetConfig(spacing_mm=10.0, size=32, keypoints=8, features=(4, 4, 8, 8, 8, 4))


@pytest.fixture(scope="module")
def phantom():
    p = generate_phantom(PhantomConfig(seed=11, spacing_mm=2.0, vertebrae=("L1", "L2", "L3"),
                                       field_of_view_mm=(150.0, 130.0), noise_hu=0.0))
    return p.ct, Labelmap(p.labels, "verse")


def test_kabsch_recovers_a_known_rigid_map_and_never_reflects():
    rng = np.random.default_rng(0)
    truth = torch.as_tensor(params_to_matrix(np.array([20.0, -35.0, 50.0, 7.0, -3.0, 11.0]), np.zeros(3)))[None]
    p = torch.as_tensor(rng.normal(0.0, 40.0, (1, 12, 3)))
    q = p @ truth[:, :3, :3].transpose(1, 2) + truth[:, None, :3, 3]
    assert torch.allclose(kabsch(p, q), truth, atol=1e-8)
    mirrored = kabsch(p, q * torch.tensor([-1.0, 1.0, 1.0], dtype=q.dtype))
    assert torch.det(mirrored[0, :3, :3]) > 0.999


def test_identical_cts_give_the_identity_whatever_the_weights(phantom):
    """Both CTs go through the same keypoint network: the same image, the same keypoints, the identity."""
    ct, _ = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    torch.manual_seed(3)
    matrix = predict_rigid(RigidKeypointNet(SMALL).eval(), ct, ct, centre, passes=2)
    assert np.allclose(matrix, np.eye(4), atol=1e-3), matrix


class FixedAnswer(torch.nn.Module):
    """Stands in for the network where predict_rigid's own arithmetic is tested: always ``step``."""

    def __init__(self, step: torch.Tensor) -> None:
        super().__init__()
        self.config, self.step, self.seen = SMALL, step, []

    def forward(self, moving, fixed):
        self.seen.append(moving.clone())
        return self.step[None]


def test_passes_compose_about_the_centre_in_the_resampling_direction(phantom):
    ct, _ = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    step = torch.as_tensor(params_to_matrix(np.array([3.0, -2.0, 4.0, 4.0, -3.0, 2.0]), np.zeros(3)),
                           dtype=torch.float32)
    one = about_centre(step, torch.as_tensor(centre, dtype=torch.float32)).double().numpy()
    assert np.allclose(one[:3, :3] @ centre + one[:3, 3], centre + step[:3, 3].numpy(), atol=1e-4)
    network = FixedAnswer(step)
    assert np.allclose(predict_rigid(network, ct, ct, centre, passes=2), one @ one, atol=1e-4)
    # The second pass reads the moving CT resampled through the first pass's matrix.
    assert not torch.allclose(network.seen[0], network.seen[1])


def test_a_rigid_training_pair_is_fitted_exactly_by_one_twist(phantom):
    """No vertebra or soft-tissue motion, only the global twist: the best rigid map (Kabsch) takes
    every offset onto its target, and the loss at it is ~0 while the identity's is the start."""
    ct, labelmap = phantom
    synthesis = DeformationConfig(rotation_deg=0.0, translation_mm=0.0, soft_mm=0.0, noise=0.0,
                                  global_rotation_deg=8.0, global_translation_mm=10.0)
    source = PairSource(ct, labelmap, SMALL.spacing_mm, "phantom")
    config = TrainRigidConfig(out="unused", batch_size=2, model=SMALL, synthesis=synthesis)
    batch = RigidPairStream([source], config, 0, 1).batch(0)
    best = kabsch(batch["offsets"].double(), batch["targets"].double()).float()
    loss, values = rigid_loss(best, batch)
    assert float(loss) < 0.05 * values["start_mm"] and float(loss) < 0.3, (float(loss), values)
    assert values["start_mm"] > 3.0
    identity, _ = rigid_loss(torch.eye(4).expand_as(best), batch)
    assert abs(float(identity) - values["start_mm"]) < 1e-4


def test_train_rigid_runs_and_its_model_starts_the_linear_stage(phantom, tmp_path, capsys):
    out = tmp_path / "rigid"
    assert main(["train-deform", "--network", "rigid", "--phantoms", "1", "--steps", "2", "--batch-size", "1",
                 "--log-every", "1", "--workers", "0", "--out", str(out)]) == 0, capsys.readouterr().err
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:4] == ["step", "loss", "point_mm", "start_mm"] and len(rows) == 3
    network = rigid_network.load_rigid_network(out / "model.pt")
    assert network.config == RigidNetConfig()  # the defaults: --network rigid fills its own steps and cube
    ct, _ = phantom
    box = ct.bounds_ras()
    matrix, info = linear_stage(ct, ct, PairConfig(rigid_start="learned", rigid_model=out / "model.pt"), box)
    assert matrix.shape == (4, 4) and info["start"] == "learned" and np.allclose(matrix[:3, :3] @ matrix[:3, :3].T,
                                                                                   np.eye(3), atol=1e-5)


def test_fine_tuning_runs_on_the_models_own_cube(phantom, tmp_path):
    """A model of another cube, fine-tuned: the batches, model.pt and config.json are that model's."""
    ct, labelmap = phantom
    start = save_atomic(rigid_network.model_payload(RigidKeypointNet(SMALL), SMALL), tmp_path / "small.pt")
    config = TrainRigidConfig(out=tmp_path / "run", steps=1, batch_size=1, workers=0, init_model=start)
    model = train_deform([PairSource(ct, labelmap, SMALL.spacing_mm, "phantom")], config, progress=False)
    assert rigid_network.load_rigid_network(model).config == SMALL
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == SMALL.to_dict()


def test_unknown_rigid_start_and_missing_model_are_one_line(phantom, tmp_path, capsys):
    with pytest.raises(InputError, match="unknown rigid start"):
        PairConfig(rigid_start="guess")
    ct, _ = phantom
    write_volume(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert main(["deform", "--fixed", str(tmp_path / "ct.nii.gz"), "--moving", str(tmp_path / "ct.nii.gz"),
                 "--linear-only", "--rigid-start", "learned", "--rigid-model", str(tmp_path / "none.pt"),
                 "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "none.pt" in errors[0] and not out.exists()


@pytest.mark.skipif(shipped_rigid_path() is None, reason="no rigid CT-to-CT model is shipped")
def test_the_shipped_keypoint_network_brings_a_turned_phantom_closer(phantom):
    """A phantom the training never saw, turned by 6 deg / 12 mm: the network's matrix is
    closer to the truth at the vertebra voxels than the identity, by at least half."""
    ct, labelmap = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    truth = params_to_matrix(np.array([4.0, -3.0, 3.0, 8.0, -6.0, 6.0]), centre)
    moving = moved_copy(ct, truth)
    network = rigid_network.load_rigid_network(shipped_rigid_path())
    matrix = predict_rigid(network, ct, moving, centre)
    points = ct.ijk_to_ras_points(np.argwhere(labelmap.volume.array > 0)[::5, ::-1].astype(float))
    homogeneous = np.c_[points, np.ones(len(points))]
    start = np.linalg.norm(homogeneous @ (truth - np.eye(4))[:3].T, axis=1).mean()
    error = np.linalg.norm(homogeneous @ (matrix - truth)[:3].T, axis=1).mean()
    assert error < 0.5 * start, (error, start)


@pytest.mark.parametrize("answer, kept", [("truth", True), ("far off", False)])
def test_the_learned_pose_is_kept_only_where_the_cts_agree_better(phantom, monkeypatch, answer, kept):
    """On a pair turned by 4 deg / 6 mm, the true pose beats the identity and is kept; a pose far
    off (25 deg, 60 mm) loses to it, and the iterative stage then runs from the identity and finds
    the truth. The network's answer is set here, the check and the registration are real."""
    ct, _ = phantom
    centre = ct.ijk_to_ras_points(np.array(ct.shape_ijk) / 2.0)
    truth = params_to_matrix(np.array([4.0, 0.0, -3.0, 6.0, 0.0, -4.0]), centre)
    given = truth if answer == "truth" else params_to_matrix(np.array([25.0, 0.0, 20.0, 0.0, 60.0, 0.0]), centre)
    monkeypatch.setattr(rigid_network, "predict_rigid", lambda *args, **kwargs: given)
    monkeypatch.setattr(rigid_network, "load_rigid_network", lambda path, device: None)
    config = PairConfig(rigid_start="learned", rigid_model="any.pt")
    matrix, info = linear_stage(ct, moved_copy(ct, truth), config, ct.bounds_ras())
    assert info["learned"]["kept"] is kept
    if kept:
        np.testing.assert_allclose(matrix, given, atol=1e-9)
    else:
        assert "levels" in info  # the iterative stage ran
        corners = np.c_[np.array(np.meshgrid(*zip(*ct.bounds_ras()))).reshape(3, -1).T, np.ones(8)]
        assert np.abs(corners @ (matrix - truth)[:3].T).max() < 2.0  # mm, at the CT's corners
