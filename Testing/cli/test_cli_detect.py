"""``spinereg detect`` end to end on the session phantom: the boxes file and its COCO twin, detector
and projected boxes, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SpineRegistrationLib.geometry.image_boxes import box_iou
from SpineRegistrationLib.io import read_labelmap, read_xray
from SpineRegistrationLib.io.geometry_json import load_geometry
from SpineRegistrationLib.io.xray_boxes import read_coco, read_xray_boxes
from SpineRegistrationLib.learned.detector import DetectorConfig, VertebraDetector, save_detector
from SpineRegistrationLib.render.projected_boxes import projected_boxes


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A small untrained detector: with --threshold 0 it still finds (arbitrary) boxes."""
    config = DetectorConfig(mm_per_px=4.0, channels=(4, 8, 8, 8, 8), decoder=8)
    return save_detector(VertebraDetector(config), tmp_path_factory.mktemp("model") / "detector.pt")


def _views(phantom_dir):
    return ["--xray", phantom_dir / "AP.png", "--geometry", phantom_dir / "AP.json",
            "--xray", phantom_dir / "LAT.png", "--geometry", phantom_dir / "LAT.json"]


def test_detect_with_the_ct_writes_detector_and_projected_boxes_and_coco(phantom_dir, untrained_model, tmp_path,
                                                                          spinereg):
    out = tmp_path / "boxes.json"
    result = spinereg("detect", *_views(phantom_dir), "--ct", phantom_dir / "ct.nii.gz", "--seg",
                      phantom_dir / "seg.nii.gz", "--model", untrained_model, "--threshold", "0", "--out", out)
    assert result.code == 0, result.err
    boxes = read_xray_boxes(out)
    assert list(boxes) == ["AP", "LAT"]
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    for view, view_boxes in boxes.items():
        projected = [b for b in view_boxes if b.source == "projection"]
        assert [b.vertebra for b in projected] == ["L1", "L2", "L3"]
        expected = projected_boxes(labelmap, load_geometry(phantom_dir / f"{view}.json"))
        assert all(box_iou(a.corners_px, b.corners_px) > 0.999 for a, b in zip(projected, expected))
        assert any(b.source == "detector" for b in view_boxes)
        assert not any(b.accepted for b in view_boxes)
    coco_boxes, images = read_coco(tmp_path / "boxes.coco.json")
    assert images["AP"].file_name == "AP.png" and images["AP"].size == read_xray(phantom_dir / "AP.png").size
    assert [len(v) for v in coco_boxes.values()] == [len(v) for v in boxes.values()]
    assert f"wrote {out}" in result.out


def test_detect_without_a_ct_has_detector_boxes_only(phantom_dir, untrained_model, tmp_path, spinereg):
    out = tmp_path / "ap"
    result = spinereg("detect", "--xray", phantom_dir / "AP.png", "--geometry", phantom_dir / "AP.json",
                      "--view", "front", "--model", untrained_model, "--threshold", "0", "--out", out)
    assert result.code == 0, result.err
    boxes = read_xray_boxes(out)
    assert list(boxes) == ["front"] and {b.source for b in boxes["front"]} == {"detector"}
    assert (tmp_path / "ap.coco.json").is_file()


def test_detect_names_the_views_as_register_does(phantom_dir, untrained_model, tmp_path, spinereg):
    # A geometry file named "AP view.json": register calls the view AP_view, so --boxes needs that name.
    from SpineRegistrationLib.pipeline.inputs import view_names

    geometry = tmp_path / "AP view.json"
    geometry.write_text((phantom_dir / "AP.json").read_text())
    out = tmp_path / "boxes.json"
    result = spinereg("detect", "--xray", phantom_dir / "AP.png", "--geometry", geometry, "--model", untrained_model,
                      "--threshold", "0", "--out", out)
    assert result.code == 0, result.err
    assert list(read_xray_boxes(out)) == view_names([phantom_dir / "AP.png"], [geometry]) == ["AP_view"]


@pytest.fixture(scope="module")
def bad_files(phantom_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_detect")
    files = {"missing.png": folder / "missing.png"}
    files["corrupt.png"] = folder / "corrupt.png"
    files["corrupt.png"].write_bytes(np.random.default_rng(0).bytes(2048))
    files["volume.nrrd"] = folder / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((4, 512, 512)).astype(np.float32)),
                    str(files["volume.nrrd"]))
    good = json.loads((phantom_dir / "AP.json").read_text())
    files["small.json"] = folder / "small.json"
    files["small.json"].write_text(json.dumps(good | {"size": [64, 64]}))
    files["not_json.json"] = folder / "not_json.json"
    files["not_json.json"].write_text("{ nope")
    geometry = load_geometry(phantom_dir / "AP.json")
    sideways = 3000.0 * geometry.detector_u
    files["sideways.json"] = folder / "sideways.json"
    files["sideways.json"].write_text(json.dumps(good | {"source": (geometry.source + sideways).tolist(),
                                                          "detector_origin": (geometry.detector_origin + sideways).tolist()}))
    files["junk.pt"] = folder / "junk.pt"
    files["junk.pt"].write_bytes(b"not a model")
    return files


BAD = {
    "missing X-ray": ({"--xray": "missing.png"}, "not found"),
    "corrupt X-ray": ({"--xray": "corrupt.png"}, "cannot read"),
    "3D image as X-ray": ({"--xray": "volume.nrrd"}, "3D"),
    "geometry of another size": ({"--geometry": "small.json"}, "geometry says size [64, 64]"),
    "geometry not JSON": ({"--geometry": "not_json.json"}, "not a JSON geometry file"),
    "geometry away from the CT": ({"--geometry": "sideways.json", "--ct": "CT", "--seg": "SEG"}, "does not see"),
    "CT without segmentation": ({"--ct": "CT"}, "go together"),
    "corrupt model": ({"--model": "junk.pt"}, "not a readable spinereg model file"),
    "threshold out of range": ({"--threshold": "1.5"}, "--threshold"),
    "two view names for one X-ray": ({"--view": ["A", "B"]}, "2 --view names for 1 X-rays"),
}


@pytest.mark.parametrize("case, message", BAD.values(), ids=list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, message, bad_files, phantom_dir, untrained_model, tmp_path,
                                                  spinereg, snapshot, make_old_file, assert_one_line_error):
    options = {"--xray": phantom_dir / "AP.png", "--geometry": phantom_dir / "AP.json", "--model": untrained_model}
    named = {"CT": phantom_dir / "ct.nii.gz", "SEG": phantom_dir / "seg.nii.gz"}
    argv = ["detect"]
    for option, value in (options | case).items():
        for item in value if isinstance(value, list) else [value]:
            argv += [option, bad_files.get(item, named.get(item, item)) if isinstance(item, str) else item]
    out = make_old_file(tmp_path / "boxes.json")
    before = snapshot(tmp_path)
    result = spinereg(*argv, "--out", out, "--overwrite")
    assert_one_line_error(result)
    assert message in result.err
    assert snapshot(tmp_path) == before


def test_existing_outputs_are_not_overwritten_unasked(phantom_dir, untrained_model, tmp_path, spinereg, snapshot,
                                                      make_old_file, assert_one_line_error):
    make_old_file(tmp_path / "boxes.coco.json")
    before = snapshot(tmp_path)
    result = spinereg("detect", "--xray", phantom_dir / "AP.png", "--geometry", phantom_dir / "AP.json",
                      "--model", untrained_model, "--out", tmp_path / "boxes.json")
    assert_one_line_error(result)
    assert "boxes.coco.json" in result.err and snapshot(tmp_path) == before
