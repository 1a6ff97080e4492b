"""The learned registration (SpineRegistrationLib.learned): patch geometry against analytic
projections, the pose frame, the synthetic samples, the network, model files and their
errors, training with exact resume, and the shipped model on a phantom it never saw."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.synthetic.acquisition import AcquisitionConfig
from SpineRegistrationLib.geometry import c_arm_geometry, preset_geometry
from SpineRegistrationLib.io import Labelmap
from SpineRegistrationLib.learned.checkpoint import load_model, save_model
from SpineRegistrationLib.core.labelmap import vertebra_mask
from SpineRegistrationLib.learned.data import SampleStream, SynthesisConfig, TrainingCT, draw_sample
from SpineRegistrationLib.learned.inference import PosePredictor, consensus
from SpineRegistrationLib.learned.network import ModelConfig, PoseNet
from SpineRegistrationLib.learned.patches import (
    PatchSpec,
    offset_in_frame,
    patch_geometry,
    pose_from_offset,
    resample_to_patch,
    template_renderer,
    view_frame,
)
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.render.drr import Detectors
from SpineRegistrationLib.render.spine_xray import SOFT_TISSUE_HU
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.learned.training import TrainConfig, pose_errors, train
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom
from SpineRegistrationLib.core.pose import matrix_to_rotation_6d, params_to_matrix, rotation_6d_to_matrix

#: A small network and patch so that training steps take a fraction of a second.
TINY = ModelConfig(size_px=32, mm_per_px=5.0, channels=(8, 16), fusion_layers=1, heads=2)


@pytest.fixture(scope="module")
def small_ct():
    """T12-L4 at 2 mm voxels (longer than a TINY patch is high) as a training CT for TINY patches."""
    phantom = generate_phantom(PhantomConfig(spacing_mm=2.0, vertebrae=("T12", "L1", "L2", "L3", "L4")))
    return TrainingCT(phantom.ct, Labelmap(phantom.labels, "verse"), TINY.patch, name="small", points=64)


# ---------------------------------------------------------------------- rotations and patches
def test_6d_rotation_round_trip_and_orthonormality():
    rotation = torch.as_tensor(params_to_matrix(np.array([20.0, -35.0, 50.0, 0, 0, 0]), np.zeros(3))[:3, :3])
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(rotation)), rotation, atol=1e-12)
    raw = rotation_6d_to_matrix(torch.randn(5, 6, dtype=torch.float64))
    assert torch.allclose(raw @ raw.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(raw), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("view", ["AP", "LAT"])
def test_patch_is_centred_on_the_vertebra_at_the_same_scale_whatever_the_detector(view):
    center = np.array([10.0, -20.0, 30.0])
    spec = PatchSpec(size_px=64, mm_per_px=2.5)
    for sdd, sid, spacing in ((1020.0, 620.0, 0.5), (1200.0, 800.0, 1.3)):
        geometry = preset_geometry(view, sdd_mm=sdd, sid_mm=sid, isocenter_ras=center + 15.0, pixel_spacing=(spacing, spacing))
        patch = patch_geometry(geometry, center, spec)
        assert np.allclose(patch.project(center), [31.5, 31.5], atol=1e-9)
        # 10 mm across the beam at the centre's depth spans 10 / 2.5 = 4 patch pixels.
        across = center + 10.0 * geometry.detector_u
        assert np.allclose(patch.project(across) - patch.project(center), [4.0, 0.0], atol=0.05)


def test_resampled_patch_reads_the_xray_where_the_patch_pixels_lie():
    geometry = c_arm_geometry(size=(200, 160), pixel_spacing=(1.0, 1.0))
    rows, columns = np.mgrid[0:160, 0:200].astype(np.float32)
    ramp = torch.from_numpy(0.5 * columns + 2.0 * rows)  # linear: box averages and bilinear reads are exact
    patch = patch_geometry(geometry, np.array([5.0, 0.0, -8.0]), PatchSpec(size_px=16, mm_per_px=2.0))
    sampled = resample_to_patch(ramp, geometry, patch).numpy()
    r, c = np.mgrid[0:16, 0:16]
    where = geometry.project(patch.pixel_to_ras(c, r))  # (16, 16, 2) column, row in the X-ray
    assert np.allclose(sampled, 0.5 * where[..., 0] + 2.0 * where[..., 1], atol=1e-3)


def test_acquisitions_from_either_side_with_flipped_detectors_and_offset_principal_points():
    from SpineRegistrationLib.synthetic.acquisition import AcquisitionConfig, draw_geometries

    center = np.array([0.0, 20.0, -40.0])
    plain = draw_geometries(np.random.default_rng(0), AcquisitionConfig(), center)
    assert "flip_rows" not in plain[1][0]  # nothing drawn that the config does not ask for
    wild = AcquisitionConfig(either_side=True, flip_detector=True, principal_offset_mm=20.0)
    seen = set()
    for seed in range(12):
        geometries, knobs = draw_geometries(np.random.default_rng(seed), wild, center)
        for geometry, drawn in zip(geometries, knobs):
            seen.add((drawn["primary_deg"] > 135.0, drawn["flip_columns"], drawn["flip_rows"]))
            # The isocentre projects onto the principal point: the centre moved by the offset (mm at the detector).
            offset_px = np.asarray(drawn["principal_offset_mm"]) / drawn["pixel_spacing_mm"]
            flips = np.array([-1.0 if drawn["flip_columns"] else 1.0, -1.0 if drawn["flip_rows"] else 1.0])
            expected = (np.array(geometry.size) - 1) / 2 + flips * offset_px
            assert np.allclose(geometry.project(center[None])[0], expected, atol=1e-6)
    assert len(seen) >= 6  # both sides, both flips


def test_training_draws_frontal_and_lateral_views_from_either_side():
    """The network meets both sides in training, as the benchmarks and the operating room take them
    (the patches undo the mirroring, not the perspective)."""
    from SpineRegistrationLib.learned.data import training_acquisition
    from SpineRegistrationLib.synthetic.acquisition import draw_geometries

    center = np.array([0.0, 20.0, -40.0])
    sides = set()
    for seed in range(16):
        geometries, _ = draw_geometries(np.random.default_rng(seed), training_acquisition(), center)
        ap, lat = geometries[:2]
        sides.add((bool(ap.source[1] > center[1]), bool(lat.source[0] > center[0])))
    assert sides == {(True, True), (True, False), (False, True), (False, False)}


@pytest.mark.parametrize("primary, flip_u, flip_v", [(180.0, False, False), (0.0, True, False), (0.0, False, True),
                                                    (180.0, True, True)])
def test_patches_read_pa_and_flipped_detectors_as_the_default_ap(primary, flip_u, flip_v):
    """A PA shot or a mirrored detector gives the network the default AP's patch axes (and frame)."""
    from SpineRegistrationLib.geometry import XrayGeometry
    from SpineRegistrationLib.learned.patches import patch_axes

    center = np.array([5.0, -10.0, 20.0])
    default = preset_geometry("AP", isocenter_ras=center)
    other = c_arm_geometry(primary_deg=primary, isocenter_ras=center)
    u, v = (-other.detector_u if flip_u else other.detector_u), (-other.detector_v if flip_v else other.detector_v)
    other = XrayGeometry(other.source, other.detector_origin, u, v, other.pixel_spacing, other.size)
    for got, want in zip(patch_axes(other), patch_axes(default)):
        assert np.allclose(got, want)
    assert np.allclose(view_frame(other), view_frame(default))
    patch = patch_geometry(other, center, PatchSpec(size_px=16, mm_per_px=2.0))
    # The patient's left (RAS -x) is towards increasing patch columns, as in the default AP.
    assert patch.project(center - [10.0, 0.0, 0.0])[0] > patch.project(center)[0]


def test_offset_in_frame_and_back_round_trip_and_read_in_the_ap_detector_axes():
    ap = preset_geometry("AP")
    frame = view_frame(ap)
    center = np.array([3.0, 4.0, -50.0])
    nominal = params_to_matrix(np.array([5.0, -3.0, 2.0, 1.0, 2.0, 3.0]), np.zeros(3))
    pose = params_to_matrix(np.array([-4.0, 7.0, 9.0, 12.0, -6.0, 4.0]), center) @ nominal
    rotation, translation = offset_in_frame(pose, nominal, center, frame)
    assert np.allclose(pose_from_offset(rotation, translation, nominal, center, frame), pose, atol=1e-10)
    # A shift of the vertebra by 7 mm along the AP detector's columns is t = (7, 0, 0).
    shifted = np.eye(4)
    shifted[:3, 3] = 7.0 * ap.detector_u
    rotation, translation = offset_in_frame(shifted @ nominal, nominal, center, frame)
    assert np.allclose(rotation, np.eye(3)) and np.allclose(translation, [7.0, 0.0, 0.0])


def test_the_network_takes_its_ap_and_lat_views_whatever_their_order():
    from SpineRegistrationLib.learned.inference import ap_lat_pair

    ap, lat, oblique = preset_geometry("AP"), preset_geometry("LAT"), c_arm_geometry(primary_deg=45.0)
    assert ap_lat_pair([ap, lat]) == (0, 1)
    assert ap_lat_pair([lat, oblique, ap]) == (2, 0)


# ---------------------------------------------------------------------- samples
def test_samples_carry_their_true_offset_and_are_reproducible(small_ct):
    config = SynthesisConfig(points=64)
    stream = SampleStream([small_ct], config, batch_size=3, seed=4, start=0, stop=2)
    batch = stream.batch(1)
    assert batch["patches"].shape == (3, 2, 2, 32, 32) and batch["points"].shape == (3, 64, 3)
    assert torch.isfinite(batch["patches"]).all()
    again = stream.batch(1)
    assert all(torch.equal(batch[key], again[key]) for key in batch)
    assert not torch.equal(stream.batch(0)["translation"], batch["translation"])
    # Offsets stay in the drawn ranges: the spine's shift plus the vertebra's own (a spine
    # rotation about the vertebra does not move its centre), in any frame.
    acq = config.acquisition
    assert float(batch["translation"].norm(dim=-1).max()) <= math.sqrt(3) * (acq.trans_mm + acq.per_vertebra_mm) + 1e-3
    angles = torch.rad2deg(torch.acos(((batch["rotation"].diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))
    assert float(angles.max()) <= math.sqrt(3) * (acq.rot_deg + acq.per_vertebra_deg)


def test_without_an_offset_the_xray_shows_the_vertebra_where_the_template_is(small_ct):
    still = AcquisitionConfig(rot_deg=0.0, trans_mm=0.0, per_vertebra_deg=0.0, per_vertebra_mm=0.0,
                       photons=(1e6, 1e6), collimation=(0.0, 0.0))
    sample = draw_sample(small_ct, SynthesisConfig(acquisition=still, invert_probability=0.0), np.random.default_rng(0), "L2")
    assert torch.allclose(sample["rotation"], torch.eye(3), atol=1e-6)
    assert torch.allclose(sample["translation"], torch.zeros(3), atol=1e-4)
    for xray, template in sample["patches"]:
        support = template > template.min() + 0.5  # where the vertebra's template is
        inside = float(xray[support].mean())  # bone: brighter than its surroundings
        for shift in (3, -3):  # 15 mm across the spine (along it, the neighbours look alike)
            assert inside > float(xray[torch.roll(support, shift, -1)].mean()) + 0.05


def test_the_context_template_draws_bone_around_the_vertebra_and_no_edge_of_its_box():
    """A bone cube (the vertebra) and a bone rod beside it, in soft tissue: with context the
    template draws both, each ray their excess attenuation over soft tissue times the length
    crossed; the box's faces, cut through soft tissue, draw nothing. Alone: the cube only."""
    hu = np.full((60, 60, 60), SOFT_TISSUE_HU, np.float32)  # 1 mm voxels, (K, J, I)
    hu[25:35, 25:35, 25:35] = 1000.0  # the vertebra: a 10 mm cube at the centre
    hu[25:35, 25:35, 41:45] = 1000.0  # a neighbour 6 mm to its side (RAS +x), 4 mm wide
    matrix = np.eye(4)
    matrix[:3, 3] = -29.5
    mu = Volume(hu_to_mu(hu), matrix)
    mask = np.zeros(hu.shape, bool)
    mask[25:35, 25:35, 25:35] = True
    geometry = patch_geometry(preset_geometry("AP"), np.zeros(3), PatchSpec(size_px=64, mm_per_px=1.0))
    pose, detectors = torch.eye(4)[None], Detectors.from_geometries([geometry])
    spec = PatchSpec(size_px=64, mm_per_px=1.0, context_mm=20.0)
    with torch.no_grad():
        context = template_renderer(mu, mask, spec)(pose, detectors)[0, 0].numpy()
        alone = template_renderer(mu, mask, PatchSpec(size_px=64, mm_per_px=1.0))(pose, detectors)[0, 0].numpy()
    excess = float(hu_to_mu(np.float32(1000.0)) - hu_to_mu(np.float32(SOFT_TISSUE_HU)))
    world = np.array([[0.0, 0.0, 0.0], [13.0, 0.0, 0.0], [-20.0, 0.0, 12.0]])  # cube, rod, soft tissue in the box
    (c0, r0), (c1, r1), (c2, r2) = np.round(geometry.project(world)).astype(int)
    # A central ray crosses 10 mm of each (the magnification of 1 mm changes it by < 2 %).
    assert context[r0, c0] == pytest.approx(10.0 * excess, rel=0.03)
    assert context[r1, c1] == pytest.approx(10.0 * excess, rel=0.03)
    assert abs(context[r2, c2]) < 1e-3 * context.max()
    assert alone[r0, c0] > 0 and alone[r1, c1] == 0


def test_a_cut_vertebra_with_few_voxels_still_gives_every_sample_its_points(small_ct):
    labels = small_ct.labelmap.volume.array.copy()
    value = small_ct.labelmap.labels["L4"]
    kept = np.argwhere(labels == value)[:20]
    labels[labels == value] = 0
    labels[tuple(kept.T)] = value
    source = TrainingCT(small_ct.ct, Labelmap(small_ct.labelmap.volume.with_array(labels), "verse"), TINY.patch,
                        points=64)
    points = source.renderers("L4")[2]
    assert points.shape == (64, 3) and len(np.unique(points, axis=0)) == 20


def test_a_patch_too_small_for_the_vertebra_is_refused(small_ct):
    cramped = TrainingCT(small_ct.ct, small_ct.labelmap, PatchSpec(size_px=16, mm_per_px=1.0), "cramped")
    assert draw_sample(cramped, SynthesisConfig(), np.random.default_rng(0)) is None
    with pytest.raises(InputError, match="cut off"):
        SampleStream([cramped], SynthesisConfig(), batch_size=1, seed=0, start=0, stop=1).batch(0)


def test_an_unknown_training_vertebra_is_one_clear_error(small_ct):
    with pytest.raises(InputError, match="T4 is not in the segmentation"):
        TrainingCT(small_ct.ct, small_ct.labelmap, TINY.patch, vertebrae=["T4"])


# ---------------------------------------------------------------------- network and model files
def test_network_starts_at_the_nominal_pose_and_checks_its_input():
    model = PoseNet(TINY).eval()
    rotation, translation = model(torch.randn(2, 2, 2, 32, 32))
    assert torch.allclose(rotation, torch.eye(3).expand(2, 3, 3), atol=1e-6) and torch.allclose(translation, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(2, 2, 2, 64, 64))


def test_pose_errors_against_known_offsets():
    points = torch.tensor([[[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]])
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # 90 deg about z
    errors = pose_errors(quarter, torch.tensor([[3.0, 4.0, 0.0]]), torch.eye(3)[None], torch.zeros(1, 3), points)
    assert errors["rotation_deg"].item() == pytest.approx(90.0, abs=0.1)
    assert errors["translation_mm"].item() == pytest.approx(5.0)
    # (10,0,0) -> (0,10,0)+(3,4,0) = (3,14,0): |(-7,14,0)|; (-10,0,0) -> (3,-6,0): |(13,-6,0)|
    assert errors["point_mm"].item() == pytest.approx((math.hypot(7, 14) + math.hypot(13, 6)) / 2, rel=1e-5)


def test_model_file_round_trip_and_bad_files_are_one_line_errors(tmp_path):
    model = PoseNet(TINY).eval()
    with torch.no_grad():
        model.head[-1].bias.add_(0.1)
    path = save_model(model, tmp_path / "m.pt")
    x = torch.randn(1, 2, 2, 32, 32)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(model(x), load_model(path)(x)))
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:300])
    (tmp_path / "foreign.pt").write_bytes(b"")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"] = [8, 32]
    torch.save(payload, tmp_path / "mismatch.pt")
    cases = {"missing.pt": "does not exist", "corrupt.pt": "not a readable", "foreign.pt": "not a readable",
             "other.pt": "not the spinereg model file expected here", "mismatch.pt": "weights do not fit"}
    for name, message in cases.items():
        with pytest.raises(InputError, match=message) as error:
            load_model(tmp_path / name)
        assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="trained for 32-pixel patches of 5 mm"):
        load_model(path, expect=ModelConfig())


def test_fine_tuning_may_change_the_template_and_older_files_read_as_the_vertebra_alone(tmp_path):
    path = save_model(PoseNet(TINY), tmp_path / "m.pt")
    assert load_model(path).config.template_context_mm == 0.0
    wider = ModelConfig(**{**TINY.to_dict(), "channels": TINY.channels, "template_context_mm": 30.0})
    assert load_model(path, expect=wider).config.patch.context_mm == 30.0
    payload = torch.load(path, weights_only=True)
    del payload["config"]["template_context_mm"]  # a file saved before templates had context
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.patch == PatchSpec(32, 5.0, 0.0)


# ---------------------------------------------------------------------- training
def _train(ct, out, steps, **changes):
    config = TrainConfig(out=out, steps=steps, batch_size=2, workers=0, seed=3, checkpoint_every=2, log_every=1,
                         validate_every=2, validation_batches=1, model=TINY, synthesis=SynthesisConfig(points=64))
    for key, value in changes.items():
        setattr(config, key, value)
    return train([ct], config, progress=False)


def test_resumed_training_ends_exactly_where_uninterrupted_training_does(small_ct, tmp_path, monkeypatch):
    straight = load_model(_train(small_ct, tmp_path / "straight", 4))
    # Interrupt the second run at its third step (Ctrl-C): the checkpoint of step 2 stays.
    import SpineRegistrationLib.learned.training as training

    calls = {"n": 0}
    real_loss = training.pose_loss

    def interrupting(errors, config):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(errors, config)

    monkeypatch.setattr(training, "pose_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _train(small_ct, tmp_path / "resumed", 4)
    monkeypatch.setattr(training, "pose_loss", real_loss)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    resumed = load_model(_train(small_ct, tmp_path / "resumed", 4, resume=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    with open(tmp_path / "resumed" / "log.csv") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file)]
    assert steps == [1, 2, 3, 4]


def test_an_interrupt_between_steps_keeps_the_last_steps_statistics(small_ct, tmp_path, monkeypatch):
    # Ctrl-C while the next batch is being made (where a run spends its time): step 2 is complete,
    # so its batch-norm statistics stay in the checkpoint and the resumed run ends as a straight one.
    straight = load_model(_train(small_ct, tmp_path / "straight", 4))
    import SpineRegistrationLib.learned.data as data

    calls = {"n": 0}
    real_batch = data.SampleStream.batch

    def interrupting(self, step):
        calls["n"] += 1
        if calls["n"] == 4:  # the validation batch, steps 1 and 2, then the batch of step 3
            raise KeyboardInterrupt
        return real_batch(self, step)

    monkeypatch.setattr(data.SampleStream, "batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _train(small_ct, tmp_path / "resumed", 4)
    monkeypatch.setattr(data.SampleStream, "batch", real_batch)
    resumed = load_model(_train(small_ct, tmp_path / "resumed", 4, resume=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_a_run_resumes_only_with_the_template_it_was_trained_with(small_ct, tmp_path):
    from dataclasses import replace

    from SpineRegistrationLib.learned.checkpoint import CHECKPOINT_FORMAT
    from SpineRegistrationLib.learned.training import check_run

    out = tmp_path / "run"
    out.mkdir()
    payload = torch.load(save_model(PoseNet(TINY), tmp_path / "m.pt"), weights_only=True)
    torch.save({**payload, "format": CHECKPOINT_FORMAT, "step": 1, "train_config": {"steps": 4}},
               out / "checkpoint.pt")
    config = TrainConfig(out=out, steps=4, resume=True, model=TINY)
    assert check_run(config)["step"] == 1
    with pytest.raises(InputError, match="template context of 0 mm, not 30"):
        check_run(replace(config, model=replace(TINY, template_context_mm=30.0)))


def test_training_refuses_to_clobber_or_resume_nothing(small_ct, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        _train(small_ct, out, 2)
    with pytest.raises(InputError, match="nothing to resume"):
        _train(small_ct, tmp_path / "empty", 2, resume=True)
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_later_passes_do_not_turn_the_vertebra_again(small_ct):
    """A network trained with its template at the nominal pose reads the whole rotation at every
    pass; the second pass must re-centre only, or the rotation is applied twice (the real CT's
    patient model went from 2-3 deg after one pass to 11-13 deg after two)."""
    model = PoseNet(TINY).eval()
    turn = params_to_matrix(np.array([6.0, -4.0, 3.0, 0.0, 0.0, 0.0]), np.zeros(3))[:3, :3]
    with torch.no_grad():  # the same answer whatever it sees: turn by ``turn``, no translation
        model.head[-1].bias.copy_(torch.cat([matrix_to_rotation_6d(torch.as_tensor(turn, dtype=torch.float32)[None])[0],
                                             torch.zeros(3)]))
    ct, labelmap, name = small_ct.ct, small_ct.labelmap, "L2"
    mu = ct.with_array(hu_to_mu(ct.array))
    center = small_ct.centroids[name]
    geometries = [preset_geometry(view, isocenter_ras=center, size=(96, 96), pixel_spacing=(2.0, 2.0))
                  for view in ("AP", "LAT")]
    xrays = [np.random.default_rng(0).random((96, 96)).astype(np.float32) for _ in geometries]
    pose = PosePredictor(model, passes=2).predict(mu, vertebra_mask(labelmap, name), xrays, geometries)
    frame = view_frame(geometries[0])
    rotation, translation = offset_in_frame(pose, np.eye(4), center, frame)
    assert np.allclose(rotation, turn, atol=1e-5)  # once, not turn @ turn
    assert np.allclose(translation, 0.0, atol=1e-4)


def test_the_looks_agree_on_the_median_centre_and_the_mean_rotation():
    """Nine answers: the centre is their median (one answer on a neighbour 25 mm away does not
    move it), the rotation their chordal mean (turns of -4, 0, +4 deg about one axis -> none)."""
    center = np.array([3.0, -2.0, 10.0])
    answers = []
    for index, (turn, shift) in enumerate(zip([-4.0, 0.0, 4.0] * 3, [0.0, 1.0, -1.0, 0.5, -0.5, 0.2, -0.2, 0.0, 25.0])):
        answers.append(params_to_matrix(np.array([0.0, 0.0, turn, 5.0, 0.0, 7.0 + shift]), center))
    pose = consensus(answers, center)
    assert np.allclose(pose[:3, :3], np.eye(3), atol=1e-9)
    assert np.allclose(pose[:3, :3] @ center + pose[:3, 3], center + [5.0, 0.0, 7.0], atol=1e-9)
