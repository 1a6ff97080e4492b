"""``spinereg phantom``, ``spinereg drr`` and ``spinereg demo`` end to end, in-process.

The phantom is the session's (conftest: 2 mm voxels, L1-L3); each check reads what the
command wrote back through the library's own readers, and compares with answers worked
out independently (projection of the centroid, magnification of a known shift).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SpineRegistrationLib.cli import COMMANDS, main
from SpineRegistrationLib.render.drr import hu_to_mu
from SpineRegistrationLib.io.geometry_json import load_geometry
from SpineRegistrationLib.io import (
    centroids_ras,
    check_rigid,
    read_centroids,
    read_labelmap,
    read_volume,
    read_xray,
    write_transform,
)
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.render.spine_xray import PosedSpine

VERTEBRAE = ["L1", "L2", "L3"]
VIEWS = ("AP", "LAT")
PHANTOM_FILES = {"ct.nii.gz", "seg.nii.gz", "centroids.json", "truth.json"} | {
    f"{view}.{ext}" for view in VIEWS for ext in ("png", "json")
}
PARAM_KEYS = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")


@pytest.fixture(scope="module")
def ct(phantom_dir):
    return read_volume(phantom_dir / "ct.nii.gz")


@pytest.fixture(scope="module")
def truth(phantom_dir):
    return json.loads((phantom_dir / "truth.json").read_text())


@pytest.fixture(scope="module")
def plain_drrs(phantom_dir, tmp_path_factory):
    """``spinereg drr`` of the unmoved CT for each view (float NRRD): view -> (rows, cols)."""
    out = tmp_path_factory.mktemp("plain_drr")
    images = {}
    for view in VIEWS:
        path = out / f"{view}.nrrd"
        assert main(["drr", "--ct", str(phantom_dir / "ct.nii.gz"), "--geometry", str(phantom_dir / f"{view}.json"),
                     "--out", str(path)]) == 0
        images[view] = read_xray(path).array
    return images


def _collimated_field(image: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the open (non-collimated) field: the bounding box of nonzero pixels."""
    rows, cols = np.nonzero(image)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _weighted_centroid(image: np.ndarray) -> np.ndarray:
    """(column, row) intensity-weighted centroid, pixels."""
    rows, cols = np.indices(image.shape)
    return np.array([(image * cols).sum(), (image * rows).sum()]) / image.sum()


def _gradient_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean over both axes of the correlation of the image gradients inside ``mask``."""
    return float(np.mean([np.corrcoef(ga[mask], gb[mask])[0, 1] for ga, gb in zip(np.gradient(a), np.gradient(b))]))


# ----------------------------------------------------------------------------- phantom
def test_phantom_writes_every_file_and_nothing_else(phantom_dir):
    assert {path.name for path in phantom_dir.iterdir()} == PHANTOM_FILES
    assert all((phantom_dir / name).stat().st_size > 0 for name in PHANTOM_FILES)
    # The staging folder was moved into place, not left beside it.
    assert [path.name for path in phantom_dir.parent.iterdir()] == [phantom_dir.name]


def test_phantom_files_load_back_with_the_library_readers(phantom_dir, ct):
    assert ct.shape_ijk[0] > 50 and np.allclose(ct.spacing_mm, 2.0)
    assert ct.array.min() <= -900 and ct.array.max() >= 500, "air and cortical bone should both be there"
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    assert labelmap.scheme.name == "verse" and list(labelmap.labels) == VERTEBRAE
    assert labelmap.volume.array.shape == ct.array.shape
    np.testing.assert_allclose(labelmap.volume.ijk_to_ras, ct.ijk_to_ras, atol=1e-4)
    assert np.all(ct.array[labelmap.volume.array > 0] > 0), "vertebra voxels are bone, not air"

    centroids = read_centroids(phantom_dir / "centroids.json", ct)
    assert list(centroids) == VERTEBRAE
    from_labels = centroids_ras(labelmap)
    for name in VERTEBRAE:
        assert np.linalg.norm(centroids[name] - from_labels[name]) < 1.0, name
    heights = [centroids[name][2] for name in VERTEBRAE]
    assert heights[0] > heights[1] > heights[2], "L1 above L2 above L3 (S axis)"

    for view in VIEWS:
        geometry = load_geometry(phantom_dir / f"{view}.json")
        xray = read_xray(phantom_dir / f"{view}.png", geometry)  # raises if the sizes differ
        assert xray.size == geometry.size
        assert np.all(np.isfinite(xray.array)) and xray.array.max() > xray.array.min()
        assert geometry.sees(np.array(list(centroids.values()))).all(), f"{view} must see every vertebra"


def test_truth_json_holds_rigid_matrices_that_match_their_params(truth, phantom_dir, ct):
    assert truth["format"] == "spinereg-truth" and truth["version"] == 1 and truth["frame"] == "RAS"
    assert list(truth["vertebrae"]) == VERTEBRAE
    centroids = read_centroids(phantom_dir / "centroids.json", ct)
    for name, entry in truth["vertebrae"].items():
        matrix = check_rigid(entry["matrix_ras"], name)
        params = np.array([entry["params"][key] for key in PARAM_KEYS])
        center = np.array(entry["center_ras"])
        np.testing.assert_allclose(matrix, params_to_matrix(params, center), atol=1e-9, err_msg=name)
        assert np.linalg.norm(center - centroids[name]) < 1.0, "poses are about the vertebra centroid"
        # Default pose range: +-3 degrees and +-3 mm per axis, and every vertebra does move.
        assert np.all(np.abs(params) <= 3.0 + 1e-9) and np.abs(params).max() > 0.5, (name, params)
    poses = [np.array(entry["matrix_ras"]) for entry in truth["vertebrae"].values()]
    assert not np.allclose(poses[0], poses[1]), "each vertebra has its own pose"


@pytest.mark.parametrize("view", VIEWS)
def test_xrays_are_realistic_not_our_plain_drr(phantom_dir, plain_drrs, view):
    xray = read_xray(phantom_dir / f"{view}.png").array
    drr = plain_drrs[view]
    assert xray.shape == drr.shape
    rows, cols = _collimated_field(xray)
    # Collimator blades black out every border, inside the image.
    assert 0 < rows.start and rows.stop < xray.shape[0] and 0 < cols.start and cols.stop < xray.shape[1]
    field_xray, field_drr = xray[rows, cols].ravel(), drr[rows, cols].ravel()
    correlation = np.corrcoef(field_xray, field_drr)[0, 1]
    # Same anatomy (bone bright in both), but noise, scatter, gamma and pose make it differ.
    assert 0.5 < correlation < 0.999, correlation
    # Not an affine rescaling of the DRR either: the least-squares fit leaves a residual.
    design = np.stack([field_drr, np.ones_like(field_drr)], axis=1)
    residual = field_xray - design @ np.linalg.lstsq(design, field_xray, rcond=None)[0]
    assert residual.std() > 0.03 * field_xray.std()


def test_xrays_show_the_vertebrae_at_their_truth_pose(phantom_dir, ct, truth):
    """Where the vertebrae project, the X-ray's edges match the vertebrae's DRRs at the poses of
    truth.json better than at the CT's pose.

    Gradient correlation, at 2 mm detector pixels, where either posing of the vertebrae is bright.
    """
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    geometries = [load_geometry(phantom_dir / f"{view}.json").scaled(2) for view in VIEWS]
    xrays = [read_xray(phantom_dir / f"{view}.png").array for view in VIEWS]
    xrays = [x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3)) for x in xrays]
    true_poses = {name: np.array(entry["matrix_ras"]) for name, entry in truth["vertebrae"].items()}
    spine = PosedSpine(ct, labelmap, list(true_poses), hu_to_mu=hu_to_mu)

    def vertebrae(geometry, poses):
        return sum(spine.vertebra_depth(name, poses[name], geometry) for name in poses)

    for view, geometry, xray in zip(VIEWS, geometries, xrays):
        at_truth = vertebrae(geometry, true_poses)
        as_scanned = vertebrae(geometry, {name: np.eye(4) for name in true_poses})
        bony = (at_truth > 0.3 * at_truth.max()) | (as_scanned > 0.3 * as_scanned.max())
        score_truth = _gradient_correlation(xray, at_truth, bony)
        score_scanned = _gradient_correlation(xray, as_scanned, bony)
        assert score_truth > 0.5 and score_truth > score_scanned + 0.2, (view, score_truth, score_scanned)


# ----------------------------------------------------------------------------- drr
def test_drr_of_the_whole_ct_has_the_geometry_size(phantom_dir, plain_drrs):
    for view in VIEWS:
        geometry = load_geometry(phantom_dir / f"{view}.json")
        drr = plain_drrs[view]
        assert drr.shape == (geometry.rows, geometry.columns)
        assert np.all(np.isfinite(drr)) and drr.min() >= 0
        # An optical depth through ~20 cm of tissue and bone: a few units, not 0.01 or 1000.
        assert 1.0 < drr.max() < 20.0


@pytest.fixture(scope="module")
def l2_drr(phantom_dir, tmp_path_factory):
    """``spinereg drr --seg --vertebra L2`` on the AP view, with and without a +10 mm shift along u."""
    out = tmp_path_factory.mktemp("l2_drr")
    geometry = load_geometry(phantom_dir / "AP.json")
    shift = np.eye(4)
    shift[:3, 3] = 10.0 * geometry.detector_u
    (out / "shift.json").write_text(json.dumps({"matrix_ras": shift.tolist()}))
    write_transform(shift, out / "shift.h5")
    common = ["drr", "--ct", str(phantom_dir / "ct.nii.gz"), "--seg", str(phantom_dir / "seg.nii.gz"),
              "--vertebra", "L2", "--geometry", str(phantom_dir / "AP.json")]
    images = {}
    for name, extra in {"still": [], "json": ["--transform", str(out / "shift.json")],
                        "h5": ["--transform", str(out / "shift.h5")]}.items():
        assert main([*common, *extra, "--out", str(out / f"{name}.nrrd")]) == 0
        images[name] = read_xray(out / f"{name}.nrrd").array
    return geometry, images


def test_vertebra_drr_is_zero_away_from_the_vertebra_and_bright_on_it(phantom_dir, ct, plain_drrs, l2_drr):
    geometry, images = l2_drr
    drr = images["still"]
    assert drr.shape == (geometry.rows, geometry.columns) and drr.min() >= 0
    centroids = read_centroids(phantom_dir / "centroids.json", ct)
    column, row = np.round(geometry.project(centroids["L2"])).astype(int)
    assert drr[row, column] > 0.3 * drr.max() > 0
    # Far from L2's projection (> 100 px, i.e. > 60 mm at the vertebra) nothing at all.
    rows, cols = np.indices(drr.shape)
    far = np.hypot(cols - column, rows - row) > 100
    assert drr[far].max() == 0
    # Its neighbours' centres are not on it, although the whole-CT DRR is bright there.
    for neighbour in ("L1", "L3"):
        c, r = np.round(geometry.project(centroids[neighbour])).astype(int)
        assert drr[r, c] == 0 and plain_drrs["AP"][r, c] > 1.0, neighbour
    # One vertebra attenuates less than the whole CT along every ray.
    assert np.all(drr <= plain_drrs["AP"] + 1e-4)


def test_transform_moves_the_vertebra_drr_by_the_magnified_shift(phantom_dir, ct, l2_drr):
    geometry, images = l2_drr
    center = read_centroids(phantom_dir / "centroids.json", ct)["L2"]
    magnification = geometry.sdd_mm / float((center - geometry.source) @ geometry.detector_normal)
    assert 1.2 < magnification < 2.5
    expected_px = 10.0 * magnification / geometry.pixel_spacing[0]
    moved = _weighted_centroid(images["json"]) - _weighted_centroid(images["still"])
    assert moved[0] == pytest.approx(expected_px, rel=0.03), (moved, expected_px)
    assert abs(moved[1]) < 0.2, "a shift along u does not move the image along v"
    # The same pose as an ITK .h5 transform (as Slicer writes) renders the same image.
    np.testing.assert_allclose(images["h5"], images["json"], atol=1e-4)


# ----------------------------------------------------------------------------- demo, help
def test_demo_writes_an_rgb_overlay_and_a_summary(spinereg, tmp_path):
    out = tmp_path / "demo"
    result = spinereg("demo", "--spacing", "2", "--vertebrae", "L1", "L2", "--out", out)
    assert result.code == 0, result.err
    assert {"overlay.png", "summary.json", "result", "data"} <= {path.name for path in out.iterdir()}
    assert (out / "result" / "result.json").is_file() and (out / "result" / "L1.h5").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["demo"], "no staging folder left behind"

    overlay = sitk.ReadImage(str(out / "overlay.png"))
    assert overlay.GetNumberOfComponentsPerPixel() == 3 and overlay.GetPixelID() == sitk.sitkVectorUInt8
    rgb = sitk.GetArrayFromImage(overlay).astype(int)
    assert rgb.ndim == 3 and rgb.shape[0] > 100 and rgb.shape[1] > 100
    green = (rgb[..., 1] > rgb[..., 0] + 60) & (rgb[..., 1] > rgb[..., 2] + 60)
    assert 100 < green.sum() < 0.5 * green.size, "the DRR shows as a green overlay on part of the figure"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "spinereg-demo-summary" and summary["version"] == 1
    assert list(summary["vertebrae"]) == ["L1", "L2"]
    for row in summary["vertebrae"].values():
        assert row["verdict"] in ("pass", "doubt")
        # The registration brought each vertebra from its random start to its known pose.
        assert row["mtre_mm"] < min(2.0, row["initial_mtre_mm"])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_zero(spinereg, command):
    result = spinereg(*([command] if command else []), "--help")
    assert result.code == 0, result.err
    assert result.out.startswith("usage: spinereg") and "Traceback" not in result.err
