"""The vertebra detector (SpineRegistrationLib.learned.detector*): targets and decoding against known
boxes, level naming along the spine, the input's pixel mapping, model files, training with exact resume."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from SpineRegistrationLib.core.labels import VERTEBRAE
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry import preset_geometry
from SpineRegistrationLib.geometry.image_boxes import box_iou, rectangle_corners
from SpineRegistrationLib.io import Labelmap
from SpineRegistrationLib.io.xray_boxes import check_boxes
from SpineRegistrationLib.learned.checkpoint import save_atomic
from SpineRegistrationLib.learned.detector import (
    CHAIN, HEAT, LEVEL, STRIDE, Detection, DetectorConfig, DetectorPredictor, VertebraDetector, decode, detection_arrays,
    load_detector, prepare_xray, save_detector)
from SpineRegistrationLib.learned.detector_data import (
    Bank, DetectorCT, DetectorSynthesis, box_targets, detection_loss, detector_acquisition, render_bank)
from SpineRegistrationLib.learned.detector_training import DetectTrainConfig, train_detector
from SpineRegistrationLib.learned.levels import name_levels
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom

TINY = DetectorConfig(mm_per_px=4.0, channels=(4, 8, 8, 8, 8), decoder=8)


def spine_of_boxes(count=5, start="T11"):
    """(corners (count, 4, 2), levels) of a tilted column of boxes on a 128 x 128 input."""
    first = CHAIN.index(start)
    axis = np.array([0.2, -1.0]) / np.hypot(0.2, 1.0)
    corners = [rectangle_corners(np.array([60.0, 100.0]) + 18.0 * n * axis, 26.0, 15.0, axis) for n in range(count)]
    return np.stack(corners), np.array([VERTEBRAE.index(name) for name in CHAIN[first:first + count]])


def output_from_targets(targets) -> torch.Tensor:
    """The network output that says exactly the targets (logits of the heat, the levels)."""
    heat, regression, level = targets["heat"], targets["regression"], targets["level"]
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    levels = torch.full((len(VERTEBRAE),) + heat.shape, -5.0)
    for cell in torch.nonzero(level >= 0):
        levels[level[cell[0], cell[1]], cell[0], cell[1]] = 5.0
    return torch.cat([logits[None], regression, levels])


def test_targets_decode_back_to_the_boxes_and_their_names():
    corners, levels = spine_of_boxes()
    targets = box_targets(corners, levels, (128 // STRIDE, 128 // STRIDE))
    assert int(targets["centers"].sum()) == len(corners)
    detections = decode(output_from_targets(targets), threshold=0.5)
    assert len(detections) == len(corners)
    for box in corners:
        assert max(box_iou(box, d.corners()) for d in detections) > 0.97
    names = name_levels(*detection_arrays(detections))
    by_center = {tuple(np.round(d.center)): name for d, name in zip(detections, names)}
    for box, level in zip(corners, levels):
        nearest = min(by_center, key=lambda c: np.linalg.norm(np.array(c) - box.mean(0)))
        assert by_center[nearest] == VERTEBRAE[level]


def test_a_ridge_of_heat_along_the_spine_is_split_by_the_levels():
    # a trained heatmap is often a ridge along the spine, its one peak anywhere on it; the level
    # head says where each vertebra is, and decoding takes each level's peak of heat x probability
    corners, levels = spine_of_boxes()
    targets = box_targets(corners, levels, (128 // STRIDE, 128 // STRIDE))
    output = output_from_targets(targets)
    ridge = torch.zeros_like(targets["heat"], dtype=torch.bool)
    cells = [np.round((box.mean(0) + 0.5) / STRIDE - 0.5).astype(int) for box in corners]
    for (c0, r0), (c1, r1) in zip(cells[:-1], cells[1:]):
        for t in np.linspace(0, 1, 20):
            ridge[int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))] = True
    output[HEAT] = torch.where(ridge, 2.0, -6.0)
    rows, columns = torch.meshgrid(torch.arange(ridge.shape[0]), torch.arange(ridge.shape[1]), indexing="ij")
    output[LEVEL] = -5.0
    for (c, r), level in zip(cells, levels):  # each level's logit falls off with the distance from its centre
        output[LEVEL][level] = 5.0 - torch.hypot((rows - r).float(), (columns - c).float())
    output[HEAT, int((cells[1][1] + cells[2][1]) / 2), int((cells[1][0] + cells[2][0]) / 2)] = 2.5  # between two
    detections = decode(output, threshold=0.5)
    assert len(detections) == len(corners)
    for box in corners:
        assert max(box_iou(box, d.corners()) for d in detections) > 0.97


def test_a_cut_vertebra_is_neither_target_nor_background():
    corners, levels = spine_of_boxes()
    shape = (128 // STRIDE, 128 // STRIDE)
    whole = box_targets(corners[1:], levels[1:], shape)
    targets = box_targets(corners[1:], levels[1:], shape, ignored=corners[:1])
    assert int(targets["centers"].sum()) == len(corners) - 1
    cell = tuple(int(round(v)) for v in ((corners[0].mean(0) + 0.5) / STRIDE - 0.5)[::-1])  # (row, column)
    assert targets["background"][cell] == 0 and whole["background"][cell] == 1
    assert targets["background"][0, 0] == 1 and bool(torch.all(targets["background"][targets["heat"] == 1] == 1))
    truth = output_from_targets(targets)[None]
    batch = {key: value[None] for key, value in targets.items()}

    def loss_with_peak_at(row_column):
        output = truth.clone()
        output[0, HEAT][row_column] = 3.0  # a confident detection there
        return float(detection_loss(output, batch)[0])

    assert loss_with_peak_at(cell) == pytest.approx(float(detection_loss(truth, batch)[0]), abs=1e-6)
    assert loss_with_peak_at((2, 2)) > float(detection_loss(truth, batch)[0]) + 0.1  # on background


def _detections(centers_y, level_guesses):
    """Detections in a vertical column whose level logits each favour one name."""
    out = []
    for y, guess in zip(centers_y, level_guesses):
        log_probs = np.full(len(VERTEBRAE), np.log(0.01))
        log_probs[VERTEBRAE.index(guess)] = np.log(0.7)
        out.append(Detection(np.array([50.0, y]), 20.0, 10.0, np.array([0.0, 1.0]), 0.9, log_probs))
    return out


def test_level_names_are_consecutive_along_the_spine_whatever_its_direction():
    # the middle vertebra is mistaken for L3; the sequence makes it L1
    detections = _detections([10, 30, 50, 70, 90], ["T11", "T12", "L3", "L2", "L3"])
    assert name_levels(*detection_arrays(detections)) == ["T11", "T12", "L1", "L2", "L3"]
    # the same spine listed in another order and upside down on the image
    flipped = _detections([90, 70, 50, 30, 10], ["T11", "T12", "L3", "L2", "L3"])
    assert name_levels(*detection_arrays(flipped[::-1])) == ["L3", "L2", "L1", "T12", "T11"]
    # one missed vertebra: a gap costs less than four wrong names
    gapped = _detections([10, 30, 70, 90], ["T11", "T12", "L2", "L3"])
    assert name_levels(*detection_arrays(gapped)) == ["T11", "T12", "L2", "L3"]
    assert name_levels(*detection_arrays([])) == []
    assert set(CHAIN) == set(VERTEBRAE) - {"T13", "L6"}


def test_prepared_input_maps_pixels_back_to_the_xray():
    geometry = preset_geometry("AP", size=(300, 200), pixel_spacing=(0.5, 0.5))
    image = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    prepared = prepare_xray(image, geometry, TINY)
    assert prepared.image.shape == (1, 1, 32, 64)  # 38 x 25 input pixels, padded to multiples of 32
    np.testing.assert_allclose(prepared.scale, [300 / 38, 200 / 25])
    np.testing.assert_allclose(prepared.to_original(np.array([-0.5, -0.5])), [-0.5, -0.5])  # the first pixel's corner
    np.testing.assert_allclose(prepared.to_original(np.array([37.5, 24.5])), [299.5, 199.5])  # the last one's


def test_model_files_round_trip_and_bad_files_are_one_line_errors(tmp_path):
    model = VertebraDetector(TINY)
    path = save_detector(model, tmp_path / "d.pt", {"steps": 0})
    loaded = load_detector(path)
    assert loaded.config == TINY
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():
        out = loaded(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 7 + len(VERTEBRAE), 16, 16) and float(torch.sigmoid(out[0, HEAT]).max()) < 0.2
    assert out[0, LEVEL].shape[0] == len(VERTEBRAE)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable spinereg model file"):
        load_detector(tmp_path / "junk.pt")
    save_atomic({"format": "spinereg-pose-net", "version": 1}, tmp_path / "pose.pt")
    with pytest.raises(InputError, match="expected spinereg-vertebra-detector"):
        load_detector(tmp_path / "pose.pt")
    save_atomic({"format": "spinereg-vertebra-detector", "version": 1, "config": TINY.to_dict(), "state_dict": {}},
                tmp_path / "empty.pt")
    with pytest.raises(InputError, match="not a usable vertebra detector"):
        load_detector(tmp_path / "empty.pt")


@pytest.fixture(scope="module")
def small_source():
    phantom = generate_phantom(PhantomConfig(spacing_mm=2.0, vertebrae=("T12", "L1", "L2")))
    return DetectorCT(phantom.ct, Labelmap(phantom.labels, "verse"), "small", TINY.mm_per_px)


def test_training_views_carry_the_projected_boxes(small_source):
    synthesis = DetectorSynthesis(acquisition=detector_acquisition(TINY.mm_per_px, 64))
    views = small_source.draw(synthesis, np.random.default_rng(1))
    assert len(views) == 2
    for geometry, depth, boxes in views:
        assert geometry.size == (64, 64)
        assert depth.shape == (64, 64) and depth.max() > 0
        assert {b.vertebra for b in boxes} <= {"T12", "L1", "L2"} and boxes


def test_the_bank_keeps_which_boxes_the_ct_cuts(tmp_path):
    phantom = generate_phantom(PhantomConfig(spacing_mm=2.0, vertebrae=("T12", "L1", "L2")))
    labels = Labelmap(phantom.labels, "verse")
    low_k = int(np.nonzero(labels.volume.array == labels.labels["L2"])[0].mean())  # through L2's middle
    stop = labels.volume.shape_ijk
    cut = DetectorCT(phantom.ct.cropped((0, 0, low_k), stop), Labelmap(labels.volume.cropped((0, 0, low_k), stop),
                                                                       "verse"), "cut", TINY.mm_per_px)
    assert cut.outlines.cut == {"L2"}
    bank = render_bank([cut], DetectorSynthesis(acquisition=detector_acquisition(TINY.mm_per_px, 64), draws_per_ct=2),
                       seed=0, progress=False)
    bank.save(tmp_path / "bank.npz")
    loaded = Bank.load(tmp_path / "bank.npz")
    np.testing.assert_array_equal(loaded.box_cut, bank.box_cut)
    assert set(loaded.box_level[loaded.box_cut]) == {VERTEBRAE.index("L2")}
    for view in range(len(bank.depths)):
        corners, levels = loaded.boxes_of(view)
        assert VERTEBRAE.index("L2") not in levels
        assert len(corners) + len(loaded.cut_boxes_of(view)) == int(np.sum(loaded.box_view == view))


def _train(source, out, steps, **changes):
    config = DetectTrainConfig(out=out, steps=steps, batch_size=2, seed=3, checkpoint_every=2, log_every=1,
                               validate_every=2, validation_views=2, model=TINY,
                               synthesis=DetectorSynthesis(acquisition=detector_acquisition(TINY.mm_per_px, 64),
                                                           draws_per_ct=3), **changes)
    return train_detector([source], config, progress=False)


def test_resumed_training_ends_exactly_where_uninterrupted_training_does(small_source, tmp_path, monkeypatch):
    straight = load_detector(_train(small_source, tmp_path / "straight", 4))
    import SpineRegistrationLib.learned.detector_training as training

    calls = {"n": 0}
    real_loss = training.detection_loss

    def interrupting(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(training, "detection_loss", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _train(small_source, tmp_path / "resumed", 4)
    monkeypatch.setattr(training, "detection_loss", real_loss)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    resumed = load_detector(_train(small_source, tmp_path / "resumed", 4, resume=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    with open(tmp_path / "resumed" / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4] and rows[-1]["val_recall"] != ""
    with pytest.raises(InputError, match="not empty"):
        _train(small_source, tmp_path / "resumed", 4)
    with pytest.raises(InputError, match="already finished"):
        _train(small_source, tmp_path / "resumed", 4, resume=True)


def test_the_predictor_gives_named_boxes_on_the_original_pixels(small_source, tmp_path):
    path = save_detector(VertebraDetector(TINY), tmp_path / "d.pt")
    geometry = preset_geometry("AP", size=(128, 128), pixel_spacing=(2.0, 2.0))
    boxes = DetectorPredictor(path).detect(np.random.default_rng(0).random((128, 128)), geometry, threshold=0.0)
    assert boxes and all(b.source == "detector" and b.vertebra in CHAIN for b in boxes)
    assert len({b.vertebra for b in boxes}) == len(boxes)


def test_the_predictor_keeps_only_boxes_centred_on_the_xray(small_source, tmp_path):
    """An X-ray whose size is no multiple of the network's stride is padded; what the network reads
    in the padding is not on the X-ray, and the box files would refuse it (a centre off the image)."""
    path = save_detector(VertebraDetector(TINY), tmp_path / "d.pt")
    geometry = preset_geometry("AP", size=(90, 100), pixel_spacing=(2.0, 2.0))  # 90 columns, 100 rows
    boxes = DetectorPredictor(path).detect(np.random.default_rng(0).random((100, 90)), geometry, threshold=0.0)
    assert boxes and all(-0.5 <= b.center_px[0] <= 89.5 and -0.5 <= b.center_px[1] <= 99.5 for b in boxes)
    check_boxes({"AP": boxes}, {"AP": (90, 100)})  # the box files' own check accepts them all
