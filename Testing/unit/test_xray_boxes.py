"""Vertebra box files: spinereg-xray-boxes v1 and COCO, round trips and bad inputs."""

import json

import numpy as np
import pytest

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io.xray_boxes import (
    XrayBox,
    XrayImageInfo,
    read_coco,
    read_xray_boxes,
    write_boxes_with_coco,
    write_coco,
    write_xray_boxes,
)


def rotated_box(center, size, angle_deg):
    """(4, 2) corners (column, row) of a rectangle turned by ``angle_deg``."""
    a = np.deg2rad(angle_deg)
    axes = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * np.asarray(size)[:, None] / 2
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
    return np.asarray(center) + signs @ axes


BOXES = {
    "AP": [XrayBox("L1", rotated_box((100.25, 80.5), (40, 30), 12.0), 0.9, False, "detector"),
           XrayBox("L2", rotated_box((104.0, 120.0), (42, 31), -5.0), 1.0, True)],
    "LAT": [XrayBox("T12", rotated_box((60.0, 40.0), (35, 28), 30.0), 0.5, True, "projection")],
}
IMAGES = {"AP": XrayImageInfo("AP.png", (200, 256)), "LAT": XrayImageInfo("LAT.png", (180, 256))}


def assert_same(back, boxes):
    assert list(back) == list(boxes)
    for view in boxes:
        assert [b.vertebra for b in back[view]] == [b.vertebra for b in boxes[view]]
        for got, want in zip(back[view], boxes[view]):
            np.testing.assert_allclose(got.corners_px, want.corners_px, atol=1e-9)
            assert (got.score, got.accepted, got.source) == (want.score, want.accepted, want.source)


def test_json_round_trip(tmp_path):
    path = tmp_path / "boxes.json"
    write_xray_boxes(path, BOXES, IMAGES)
    d = json.loads(path.read_text())
    assert (d["format"], d["version"]) == ("spinereg-xray-boxes", 1)
    assert d["images"]["AP"] == {"file_name": "AP.png", "size": [200, 256]}
    assert_same(read_xray_boxes(path), BOXES)


def test_coco_round_trip_and_pixel_convention(tmp_path):
    path = tmp_path / "boxes.coco.json"
    write_coco(path, BOXES, IMAGES)
    d = json.loads(path.read_text())
    first = d["annotations"][0]
    corners = BOXES["AP"][0].corners_px
    # COCO's origin is the first pixel's corner: x = column + 0.5
    np.testing.assert_allclose(first["bbox"][:2], corners.min(axis=0) + 0.5)
    np.testing.assert_allclose(first["area"], 40 * 30)
    assert d["categories"][first["category_id"] - 1]["name"] == "L1"
    boxes, images = read_coco(path)
    assert images == IMAGES
    assert_same(boxes, BOXES)


def test_names_are_canonical_on_read(tmp_path):
    path = tmp_path / "boxes.json"
    raw = {"format": "spinereg-xray-boxes", "version": 1,
           "xrays": {"AP": [{"vertebra": "vertebrae_L3", "corners_px": rotated_box((50, 50), (20, 10), 0).tolist()}]}}
    path.write_text(json.dumps(raw))
    (box,) = read_xray_boxes(path)["AP"]
    assert (box.vertebra, box.score, box.accepted, box.source) == ("L3", 1.0, False, None)


GOOD = rotated_box((50, 50), (20, 10), 0).tolist()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "spinereg-xray-geometry", "version": 1}), "expected 'spinereg-xray-boxes'"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 2, "xrays": {}}), "version is 2"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1, "xrays": []}), "'xrays' must map"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L9", "corners_px": GOOD}]}}), "unknown vertebra 'L9'"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": GOOD[:3]}]}}), "4 finite"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": [[0, 0], [10, 0], [20, 0], [30, 0]]}]}}), "degenerate"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,  # self-intersecting (bow tie)
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": [[0, 0], [10, 10], [10, 0], [0, 10]]}]}}), "degenerate"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": GOOD, "score": 1.5}]}}), "score"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1,
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": GOOD, "accepted": "yes"}]}}), "accepted"),
    (json.dumps({"format": "spinereg-xray-boxes", "version": 1, "images": {"AP": {"size": [40, 40]}},
                 "xrays": {"AP": [{"vertebra": "L1", "corners_px": GOOD}]}}), "outside the 40x40 image"),
])
def test_bad_box_files_are_one_line_input_errors(tmp_path, content, message):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        read_xray_boxes(path)
    assert "\n" not in str(error.value)


def test_missing_file_and_sizes_given_by_the_caller(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_xray_boxes(tmp_path / "none.json")
    path = tmp_path / "boxes.json"
    write_xray_boxes(path, BOXES)
    with pytest.raises(InputError, match="outside"):
        read_xray_boxes(path, sizes={"AP": (50, 50)})


def test_writers_refuse_bad_boxes_and_write_nothing(tmp_path):
    bad = {"AP": [XrayBox("L1", rotated_box((500, 80), (40, 30), 0))]}
    for write in (write_xray_boxes, write_coco):
        path = tmp_path / f"{write.__name__}.json"
        with pytest.raises(InputError, match="outside"):
            write(path, bad, IMAGES)
        assert not path.exists()
    with pytest.raises(InputError, match="needs the image"):
        write_coco(tmp_path / "c.json", BOXES, {"AP": IMAGES["AP"]})


def test_boxes_and_coco_are_replaced_together_or_not_at_all(tmp_path):
    path = tmp_path / "boxes.json"
    assert write_boxes_with_coco(path, BOXES, IMAGES) == (path, tmp_path / "boxes.coco.json")
    assert_same(read_xray_boxes(path), BOXES)
    assert_same(read_coco(tmp_path / "boxes.coco.json")[0], BOXES)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    # The boxes file alone could be written (no image is needed there); COCO cannot: neither changes.
    with pytest.raises(InputError, match="needs the image"):
        write_boxes_with_coco(path, {"AP": BOXES["AP"][:1]}, {"LAT": IMAGES["LAT"]})
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("categories"), "not a COCO"),
    (lambda d: d["annotations"][0].pop("segmentation"), "malformed COCO"),
    (lambda d: d["annotations"][0].update(category_id=999), "malformed COCO"),
    (lambda d: d["categories"][0].update(name="skull"), "unknown vertebra 'skull'"),
])
def test_bad_coco_files(tmp_path, mutate, message):
    path = tmp_path / "boxes.coco.json"
    write_coco(path, {"AP": [XrayBox("C1", rotated_box((50, 50), (20, 10), 0))]}, IMAGES)
    d = json.loads(path.read_text())
    mutate(d)
    path.write_text(json.dumps(d))
    with pytest.raises(InputError, match=message):
        read_coco(path)
