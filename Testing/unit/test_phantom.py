"""The procedural spine phantom: labels, anatomy, curve, pose knobs, determinism, grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom, vertebra_dims

VERSE = {"T10": 17, "T11": 18, "T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24}
#: Small, fast phantoms: 2 mm voxels, three vertebrae across the thoracolumbar junction.
FAST = dict(vertebrae=("T12", "L1", "L2"), spacing_mm=2.0)
#: The same at 1 mm in a smaller field of view, where thin processes are sampled finely enough
#: for sub-millimetre centroid checks.
FAST_1MM = dict(vertebrae=("T12", "L1", "L2"), field_of_view_mm=(160.0, 150.0))


@pytest.fixture(scope="module")
def coarse():
    """The default T10-L5 spine at 2 mm."""
    return generate_phantom(PhantomConfig(spacing_mm=2.0))


@pytest.fixture(scope="module")
def fine():
    """Three vertebrae (with ribs) at 1 mm, in a smaller field of view."""
    return generate_phantom(PhantomConfig(vertebrae=("T11", "T12", "L1"), field_of_view_mm=(160.0, 150.0)))


def _components(mask: np.ndarray) -> int:
    image = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    return int(sitk.GetArrayViewFromImage(image).max())


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion (ball of ``radius`` voxels) computed in the mask's bounding box."""
    box = tuple(slice(max(i.min() - 1, 0), i.max() + 2) for i in np.nonzero(mask))
    image = sitk.BinaryErode(sitk.GetImageFromArray(mask[box].astype(np.uint8)), [radius] * 3)
    eroded = np.zeros_like(mask)
    eroded[box] = sitk.GetArrayFromImage(image).astype(bool)
    return eroded


def _offset_from_chord(points: np.ndarray, axis: int) -> np.ndarray:
    """Offset (mm, along RAS ``axis``) of the inner points from the line through the end points."""
    ends_z = points[[0, -1], 2]
    line = np.interp(points[1:-1, 2], ends_z[::-1], points[[-1, 0], axis])
    return points[1:-1, axis] - line


def test_labels_are_the_requested_vertebrae_with_verse_values(coarse, fine):
    assert set(np.unique(coarse.labels.array)) == {0, *VERSE.values()}
    assert set(np.unique(fine.labels.array)) == {0, 18, 19, 20}
    assert coarse.labels.array.dtype == np.uint8 and coarse.ct.array.dtype == np.float32
    assert list(coarse.centroids_ras) == list(VERSE) and list(coarse.vertebra_frames) == list(VERSE)


@pytest.mark.parametrize("phantom", ["coarse", "fine"])
def test_every_vertebra_is_one_connected_component(phantom, request):
    labels = request.getfixturevalue(phantom).labels.array
    for label in np.unique(labels[labels > 0]):
        assert _components(labels == label) == 1, label


def test_centroids_run_cranio_caudally_with_plausible_spacing(coarse):
    centroids = np.array(list(coarse.centroids_ras.values()))
    assert np.all(np.diff(centroids[:, 2]) < 0)
    spacing = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
    # Thoracic centroids sit ~29 mm apart, lumbar ~34 mm (body + disc heights).
    assert np.all((spacing > 25.0) & (spacing < 45.0)), spacing
    assert np.all(spacing[3:] > spacing[0])  # lumbar segments are taller than T10-T11


def test_vertebrae_have_cortical_shell_around_cancellous_bone(fine):
    ct, labels = fine.ct.array, fine.labels.array
    for label in (18, 19, 20):
        mask = labels == label
        shell = mask & ~_erode(mask, 1)
        core = _erode(mask, 3)
        cortical, cancellous = ct[shell].mean(), ct[core].mean()
        assert 180.0 < cancellous < 320.0, (label, cancellous)
        assert cortical > cancellous + 300.0, (label, cortical, cancellous)
        assert np.percentile(ct[mask], 1) > 150.0  # every labelled voxel is bone


def test_soft_tissue_and_air_around_the_spine(coarse):
    ct = coarse.ct.array
    assert ct[0, 0, 0] < -900.0 and ct[-1, -1, -1] < -900.0  # air in the corners (outside the body)
    body = ct[(ct > -300.0) & (ct < 150.0)]
    assert 20.0 < np.median(body) < 60.0  # mostly muscle
    assert np.mean((ct > -300.0) & (ct < -50.0)) > 0.03  # a fat layer
    assert np.mean(ct > 150.0) < 0.05  # bone is a small part of the volume


def test_surroundings_overlap_the_spine_as_on_a_radiograph():
    """Lungs above the diaphragm beside the spine, liver under the right dome, the table at the back."""
    phantom = generate_phantom(PhantomConfig(vertebrae=("T9", "T10", "T11", "T12", "L1"), spacing_mm=2.0))
    bare = generate_phantom(PhantomConfig(vertebrae=("T9", "T10", "T11", "T12", "L1"), spacing_mm=2.0,
                                          surroundings=False))
    ct, volume = phantom.ct.array, phantom.ct
    t9, l1 = phantom.centroids_ras["T9"], phantom.centroids_ras["L1"]

    def hu(point_ras):
        i, j, k = np.round(volume.ras_to_ijk_points(np.asarray(point_ras, float))).astype(int)
        return ct[k, j, i]

    assert hu(t9 + [70.0, 20.0, 0.0]) < -700 and hu(t9 + [-70.0, 20.0, 0.0]) < -700  # both lungs at T9
    assert hu(l1 + [60.0, 30.0, 0.0]) == pytest.approx(60.0, abs=40)  # liver, right of L1
    back = phantom.config.body_center_anterior_mm - phantom.config.body_half_axes_mm[1]
    assert hu([0.0, back - 4.5, float(l1[2])]) == pytest.approx(300.0, abs=40)  # the table's carbon skin
    assert (bare.ct.array < -700).mean() < (ct < -700).mean()
    # The spine itself is the same with and without the surroundings.
    assert np.array_equal(bare.labels.array, phantom.labels.array)


def test_cancellous_bone_has_a_trabecular_texture():
    plain = generate_phantom(PhantomConfig(vertebrae=("L1", "L2"), spacing_mm=1.0, trabecular_contrast=0.0, noise_hu=0.0))
    textured = generate_phantom(PhantomConfig(vertebrae=("L1", "L2"), spacing_mm=1.0, noise_hu=0.0))
    centre = plain.vertebra_frames["L1"][:3, 3]  # the body centre
    i, j, k = np.round(plain.ct.ras_to_ijk_points(centre)).astype(int)
    core = (slice(k - 3, k + 4), slice(j - 3, j + 4), slice(i - 3, i + 4))  # inside the body's cancellous bone
    assert plain.ct.array[core].std() < 1.0
    assert 20.0 < textured.ct.array[core].std() < 200.0
    assert abs(textured.ct.array[core].mean() - plain.ct.array[core].mean()) < 40.0


def test_canal_holds_csf_and_discs_separate_the_bodies(coarse):
    ct, labels, volume = coarse.ct.array, coarse.labels.array, coarse.ct
    frames = list(coarse.vertebra_frames.values())

    def tissue_at(point_ras):
        i, j, k = np.round(volume.ras_to_ijk_points(point_ras)).astype(int)
        return np.median(ct[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2]), labels[k, j, i]

    for name, frame in coarse.vertebra_frames.items():
        d = vertebra_dims(name)
        canal_ras = frame[:3, :3] @ [0.0, -d.body_depth / 2 - d.canal_depth / 2, 0.0] + frame[:3, 3]
        hu, label = tissue_at(canal_ras)
        assert -20.0 < hu < 50.0 and label == 0, (name, hu, label)
    for upper, lower in zip(frames[:-1], frames[1:]):
        hu, label = tissue_at((upper[:3, 3] + lower[:3, 3]) / 2)
        assert 60.0 < hu < 120.0 and label == 0, (hu, label)


def test_vertebra_pose_translation_moves_only_that_vertebra():
    shift = np.array([2.5, -2.0, 3.5])
    base = generate_phantom(PhantomConfig(**FAST_1MM))
    moved = generate_phantom(PhantomConfig(**FAST_1MM, vertebra_poses={"L1": (0.0, 0.0, 0.0, *shift)}))
    np.testing.assert_allclose(moved.centroids_ras["L1"] - base.centroids_ras["L1"], shift, atol=0.5)
    for name in ("T12", "L2"):
        np.testing.assert_allclose(moved.centroids_ras[name], base.centroids_ras[name], atol=0.5)
    np.testing.assert_allclose(moved.vertebra_frames["L1"][:3, 3] - base.vertebra_frames["L1"][:3, 3], shift, atol=1e-9)


def test_vertebra_pose_rotation_is_about_the_centroid():
    base = generate_phantom(PhantomConfig(**FAST))
    turned = generate_phantom(PhantomConfig(**FAST, vertebra_poses={"L1": (10.0, -5.0, 15.0, 0.0, 0.0, 0.0)}))
    np.testing.assert_allclose(turned.centroids_ras["L1"], base.centroids_ras["L1"], atol=0.7)
    rotation = turned.vertebra_frames["L1"][:3, :3] @ base.vertebra_frames["L1"][:3, :3].T
    assert np.degrees(np.arccos((np.trace(rotation) - 1) / 2)) > 15.0


def test_random_poses_follow_the_seed():
    config = dict(**FAST, random_pose_deg=5.0, random_pose_mm=3.0)
    first, again = generate_phantom(PhantomConfig(**config)), generate_phantom(PhantomConfig(**config))
    still = generate_phantom(PhantomConfig(**FAST))
    np.testing.assert_array_equal(first.labels.array, again.labels.array)
    moved = [np.linalg.norm(first.centroids_ras[n] - still.centroids_ras[n]) for n in FAST["vertebrae"]]
    assert max(moved) > 0.5


def test_lordosis_puts_mid_lumbar_vertebrae_anterior_of_the_chord(coarse):
    lumbar = np.array([coarse.centroids_ras[n] for n in ("L1", "L2", "L3", "L4", "L5")])
    assert np.all(_offset_from_chord(lumbar, axis=1) > 2.0)  # RAS +y = anterior
    lumbar_only = dict(vertebrae=("L1", "L2", "L3"), spacing_mm=2.0)
    offsets = {}
    for lordosis in (-20.0, 0.0, 35.0):
        centroids = generate_phantom(PhantomConfig(**lumbar_only, lordosis_deg=lordosis)).centroids_ras
        offsets[lordosis] = _offset_from_chord(np.array(list(centroids.values())), axis=1)[0]
    assert offsets[35.0] > 1.5 and abs(offsets[0.0]) < 0.6 and offsets[-20.0] < -0.8, offsets


def test_scoliosis_bends_the_spine_to_the_right():
    phantom = generate_phantom(PhantomConfig(vertebrae=("L1", "L2", "L3"), spacing_mm=2.0, scoliosis_deg=20.0))
    assert _offset_from_chord(np.array(list(phantom.centroids_ras.values())), axis=0)[0] > 1.5  # RAS +x = right


def test_same_seed_same_phantom_other_seed_other_phantom():
    first, again = generate_phantom(PhantomConfig(**FAST)), generate_phantom(PhantomConfig(**FAST))
    np.testing.assert_array_equal(first.ct.array, again.ct.array)
    np.testing.assert_array_equal(first.labels.array, again.labels.array)
    other = generate_phantom(PhantomConfig(**FAST, seed=1))
    assert not np.array_equal(first.labels.array, other.labels.array)  # anatomy jitter
    assert not np.allclose(first.centroids_ras["L1"], other.centroids_ras["L1"], atol=0.1)


def test_grid_is_lps_ordered_and_centred_on_the_spine(coarse):
    spacing = 2.0
    for volume in (coarse.ct, coarse.labels):
        np.testing.assert_allclose(volume.ijk_to_ras[:3, :3], np.diag([-spacing, -spacing, spacing]))
    np.testing.assert_array_equal(coarse.ct.ijk_to_ras, coarse.labels.ijk_to_ras)
    n_k, n_j, n_i = coarse.ct.array.shape
    assert (n_i, n_j) == (128, 100)  # default field of view 256 x 200 mm
    lo, hi = coarse.ct.bounds_ras()
    centroids = np.array(list(coarse.centroids_ras.values()))
    assert np.all(centroids > lo + 20.0) and np.all(centroids < hi - 20.0)
    np.testing.assert_allclose(centroids.mean(axis=0), 0.0, atol=1.0)
    np.testing.assert_allclose((lo + hi)[:2] / 2, 0.0, atol=spacing)


def test_vertebra_frames_sit_in_their_bodies(coarse):
    for name, frame in coarse.vertebra_frames.items():
        np.testing.assert_allclose(frame[:3, :3].T @ frame[:3, :3], np.eye(3), atol=1e-9)
        assert frame[2, 2] > 0.9 and frame[1, 1] > 0.9  # z superior, y anterior
        i, j, k = np.round(coarse.labels.ras_to_ijk_points(frame[:3, 3])).astype(int)
        assert coarse.labels.array[k, j, i] == VERSE[name]
        assert frame[1, 3] > coarse.centroids_ras[name][1] + 5.0  # body anterior of the centroid


@pytest.mark.parametrize(
    "bad",
    [
        dict(vertebrae=("T10", "X1")),
        dict(vertebrae=("L1", "L3")),
        dict(vertebrae=("L2", "L1")),
        dict(vertebrae=()),
        dict(vertebra_poses={"L1": (0, 0, 0, 1, 2, 3)}, vertebrae=("L2", "L3")),
        dict(vertebra_poses={"L1": (1, 2, 3)}),
        dict(spacing_mm=0.0),
        dict(anatomy_scale=2.0),
        dict(noise_hu=-1.0),
    ],
)
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        PhantomConfig(**bad)
