"""File I/O: volumes (incl. DICOM series), labelmaps and .seg.nrrd, VerSe centroids, X-rays.

Geometry is checked against analytic RAS positions and against SimpleITK's own
index -> physical point mapping (LPS, flipped); .seg.nrrd files are checked against
Slicer's own reader/writer from slicer-core where it is installed.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.core.frames import LPS_TO_RAS, homogeneous, points_lps_to_ras
from SpineRegistrationLib.geometry import XrayGeometry
from SpineRegistrationLib.io import (
    Labelmap,
    axis_codes,
    bounding_box_ijk,
    centroid_ras,
    centroids_ras,
    read_centroids,
    read_labelmap,
    read_volume,
    read_xray,
    vertebra_mask,
    write_centroids,
    write_labelmap,
    write_seg_nrrd,
    write_volume,
    write_xray,
)
from SpineRegistrationLib.core.labelmap import label_boxes
from SpineRegistrationLib.core.labels import SCHEMES
from SpineRegistrationLib.core.volume import Volume


def rotation(axis, angle_rad):
    """Rodrigues: (3, 3) rotation about ``axis``."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


OBLIQUE = rotation([1.0, 2.0, 3.0], 0.4)
SPACING = np.array([0.7, 0.9, 1.3])


def oblique_volume(shape_kji=(5, 6, 7), dtype=np.int16, seed=0):
    """A volume whose voxel axes are not aligned with RAS."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 2000, size=shape_kji).astype(dtype)
    return Volume(array, homogeneous(OBLIQUE * SPACING, [10.0, -20.0, 30.0]))


def spine_labelmap(values=(20, 21), scheme="verse"):
    """A small labelmap with one box per label value, stacked along k."""
    array = np.zeros((12, 10, 14), dtype=np.uint8)
    for n, value in enumerate(values):
        array[1 + 4 * n : 4 + 4 * n, 2:7, 3:9] = value
    return Labelmap(Volume(array, homogeneous(OBLIQUE * SPACING, [5.0, 6.0, -7.0])), SCHEMES[scheme])


def write_2d(array, path, is_vector=False):
    """Write an array (2D, or 3D as (K, J, I)) with SimpleITK, no geometry."""
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(path))


# --------------------------------------------------------------------------- volumes


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_round_trip_oblique(tmp_path, suffix):
    volume = oblique_volume()
    path = tmp_path / f"ct{suffix}"
    write_volume(volume, path)
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)


def test_voxel_ras_position_matches_analytic_and_simpleitk(tmp_path):
    direction_lps = rotation([0.0, 1.0, 1.0], -0.3)
    origin_lps = np.array([12.0, -4.0, 50.0])
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    image.SetDirection(direction_lps.ravel().tolist())
    image.SetSpacing(SPACING.tolist())
    image.SetOrigin(origin_lps.tolist())
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))

    volume = read_volume(tmp_path / "ct.nrrd")
    ijk = np.array([3.0, 2.0, 1.0])
    expected_ras = points_lps_to_ras(origin_lps + direction_lps @ (SPACING * ijk))
    np.testing.assert_allclose(volume.ijk_to_ras_points(ijk), expected_ras, atol=1e-9)
    itk_ras = points_lps_to_ras(np.array(image.TransformIndexToPhysicalPoint((3, 2, 1))))
    np.testing.assert_allclose(volume.ijk_to_ras_points(ijk), itk_ras, atol=1e-9)
    assert volume.array.shape == (4, 5, 6)  # (K, J, I)


def write_dicom_series(image, folder, series_uid, first_instance=1):
    """Write a 3D image as one CT DICOM file per slice, geometry in the standard tags.

    GDCM's writer sets the process locale to "C" (text then reads as ASCII in later tests); the
    caller's locale is put back."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(image, folder, series_uid, first_instance)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_slices(image, folder, series_uid, first_instance):
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(first_instance + k),
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_round_trip_picks_the_largest_series(tmp_path):
    volume = oblique_volume(shape_kji=(6, 8, 9))
    image = sitk.GetImageFromArray(volume.array)
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    image.SetSpacing(SPACING.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / SPACING).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.2.1125.100")
    scout = sitk.GetImageFromArray(np.zeros((2, 8, 9), np.int16))  # a smaller series beside it
    write_dicom_series(scout, tmp_path, "1.2.826.0.1.3680043.2.1125.200")

    back = read_volume(tmp_path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)


def test_read_volume_rejects_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "corrupt.nrrd").write_bytes(b"NRRD0004\ngarbage\x00\x01")
    with pytest.raises(InputError, match=r"cannot read .*corrupt.nrrd"):
        read_volume(tmp_path / "corrupt.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.uint8)), str(tmp_path / "flat.png"))
    with pytest.raises(InputError, match="is a 2D image; a CT must be a 3D image"):
        read_volume(tmp_path / "flat.png")
    sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    with pytest.raises(InputError, match="is a 4D image"):
        read_volume(tmp_path / "four.nii.gz")
    write_2d(np.zeros((3, 3, 3, 2), np.float32), tmp_path / "vec.nrrd", is_vector=True)
    with pytest.raises(InputError, match="2 components per voxel"):
        read_volume(tmp_path / "vec.nrrd")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path / "empty_dir")


def test_write_volume_to_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot write image"):
        write_volume(oblique_volume(), tmp_path / "nowhere" / "ct.nrrd")


# --------------------------------------------------------------------------- labelmaps


def test_labelmap_round_trip_masks_and_centroids(tmp_path):
    labelmap = spine_labelmap()
    write_labelmap(labelmap, tmp_path / "seg.nii.gz")
    back = read_labelmap(tmp_path / "seg.nii.gz")
    assert back.scheme.name == "verse"
    assert back.labels == {"L1": 20, "L2": 21}
    np.testing.assert_allclose(back.volume.ijk_to_ras, labelmap.volume.ijk_to_ras, atol=1e-5)
    mask = vertebra_mask(back, "l1")
    assert mask.dtype == bool and mask.sum() == 3 * 5 * 6
    np.testing.assert_array_equal(vertebra_mask(back, 20), mask)  # raw label
    # L1 box: k 1..3, j 2..6, i 3..8 -> centre (5.5, 4, 2) in (i, j, k)
    expected = labelmap.volume.ijk_to_ras_points(np.array([5.5, 4.0, 2.0]))
    np.testing.assert_allclose(centroid_ras(back, "L1"), expected, atol=1e-4)
    all_centroids = centroids_ras(back)
    assert list(all_centroids) == ["L1", "L2"]
    for name, point in all_centroids.items():
        np.testing.assert_allclose(point, centroid_ras(back, name), atol=1e-9)


def test_totalseg_labelmap_is_detected_and_scheme_can_be_forced(tmp_path):
    write_labelmap(spine_labelmap(values=(31, 30, 51)), tmp_path / "ts.nrrd")
    labelmap = read_labelmap(tmp_path / "ts.nrrd")
    assert labelmap.scheme.name == "totalseg"
    assert labelmap.labels == {"L1": 31, "L2": 30}
    write_labelmap(spine_labelmap(values=(20, 21)), tmp_path / "verse.nrrd")
    with pytest.raises(InputError, match="no vertebra labels of the 'totalseg' scheme"):
        read_labelmap(tmp_path / "verse.nrrd", scheme="totalseg")


def test_float_labelmap_is_accepted_when_integral(tmp_path):
    labelmap = spine_labelmap()
    write_volume(labelmap.volume.with_array(labelmap.volume.array.astype(np.float32)), tmp_path / "f.nii.gz")
    assert read_labelmap(tmp_path / "f.nii.gz").labels == {"L1": 20, "L2": 21}
    write_volume(labelmap.volume.with_array(labelmap.volume.array * np.float32(0.5)), tmp_path / "half.nii.gz")
    with pytest.raises(InputError, match="non-integer values"):
        read_labelmap(tmp_path / "half.nii.gz")


def test_empty_and_vertebra_free_labelmaps_are_rejected(tmp_path):
    empty = spine_labelmap(values=())
    write_labelmap(empty, tmp_path / "empty.nrrd")
    with pytest.raises(InputError, match="is empty"):
        read_labelmap(tmp_path / "empty.nrrd")
    write_labelmap(spine_labelmap(values=(27,)), tmp_path / "coccyx.nrrd")  # VerSe 27: coccyx
    with pytest.raises(InputError, match=r"no vertebra labels of the 'verse' scheme \(values found: 27\)"):
        read_labelmap(tmp_path / "coccyx.nrrd")


def test_unknown_or_absent_vertebra(tmp_path):
    labelmap = spine_labelmap()
    with pytest.raises(InputError, match="unknown vertebra 'X9'"):
        vertebra_mask(labelmap, "X9")
    with pytest.raises(InputError, match=r"'T5' \(verse label 12\) is not in the labelmap; present: L1, L2"):
        vertebra_mask(labelmap, "T5")
    with pytest.raises(InputError, match="label 99"):
        centroid_ras(labelmap, "99")


def test_scheme_errors_when_reading_labelmaps(tmp_path):
    with pytest.raises(InputError, match="unknown label scheme 'nnunet'"):
        read_labelmap(tmp_path / "not-even-read.nrrd", scheme="nnunet")
    write_seg_nrrd(spine_labelmap(values=(28,)), tmp_path / "t13.seg.nrrd")
    with pytest.raises(InputError, match="segment 'T13' has no label in the 'totalseg' scheme"):
        read_labelmap(tmp_path / "t13.seg.nrrd", scheme="totalseg")
    assert read_labelmap(tmp_path / "t13.seg.nrrd", scheme="VERSE").labels == {"T13": 28}


def test_bounding_box_ijk_with_margin_and_clipping():
    mask = np.zeros((6, 8, 10), bool)
    mask[2:5, 3:7, 4:9] = True
    start, stop = bounding_box_ijk(mask)
    assert start.tolist() == [4, 3, 2] and stop.tolist() == [9, 7, 5]
    start, stop = bounding_box_ijk(mask, margin_vox=3)
    assert start.tolist() == [1, 0, 0] and stop.tolist() == [10, 8, 6]
    with pytest.raises(InputError, match="empty mask"):
        bounding_box_ijk(np.zeros((2, 2, 2), bool))


def test_label_boxes_in_one_pass_are_each_vertebras_bounding_box():
    array = np.zeros((6, 8, 10), np.uint8)
    array[2:5, 3:7, 4:9] = 20
    array[0:2, 6:8, 0:3] = 21
    array[5, 0, 9] = 21  # one stray voxel widens L2's box
    labelmap = Labelmap(Volume(array, np.eye(4)), "verse")
    for margin in (0, 3):
        boxes = label_boxes(labelmap, margin)
        assert set(boxes) == {20, 21}
        for label, (start, stop) in boxes.items():
            expected = bounding_box_ijk(array == label, margin)
            assert start.tolist() == expected[0].tolist() and stop.tolist() == expected[1].tolist()


# --------------------------------------------------------------------------- .seg.nrrd


@pytest.mark.parametrize("scheme, values", [("verse", (20, 21, 28)), ("totalseg", (31, 30))])
def test_seg_nrrd_round_trip_keeps_scheme(tmp_path, scheme, values):
    labelmap = spine_labelmap(values=values, scheme=scheme)
    write_seg_nrrd(labelmap, tmp_path / "s.seg.nrrd")
    header = sitk.ReadImage(str(tmp_path / "s.seg.nrrd"))
    assert header.GetMetaData("Segment0_LabelValue") == str(min(values))
    assert header.GetMetaData("Segment0_Layer") == "0"
    back = read_labelmap(tmp_path / "s.seg.nrrd")
    assert back.scheme.name == scheme
    assert back.labels == labelmap.labels
    np.testing.assert_array_equal(back.volume.array, labelmap.volume.array)
    np.testing.assert_allclose(back.volume.ijk_to_ras, labelmap.volume.ijk_to_ras, atol=1e-9)


def test_seg_nrrd_segment_names_are_the_schemes(tmp_path):
    write_seg_nrrd(spine_labelmap(values=(31,), scheme="totalseg"), tmp_path / "t.seg.nrrd")
    assert sitk.ReadImage(str(tmp_path / "t.seg.nrrd")).GetMetaData("Segment0_Name") == "vertebrae_L1"
    write_seg_nrrd(spine_labelmap(values=(20,)), tmp_path / "v.seg.nrrd")
    assert sitk.ReadImage(str(tmp_path / "v.seg.nrrd")).GetMetaData("Segment0_Name") == "L1"


def test_seg_nrrd_without_vertebra_segments_is_rejected(tmp_path):
    image = sitk.GetImageFromArray(np.ones((3, 3, 3), np.uint8))
    image.SetMetaData("Segment0_ID", "Segment_1")
    image.SetMetaData("Segment0_Name", "Liver")
    image.SetMetaData("Segment0_LabelValue", "1")
    sitk.WriteImage(image, str(tmp_path / "liver.seg.nrrd"))
    with pytest.raises(InputError, match=r"no segment is a vertebra \(segments: 'Liver'\)"):
        read_labelmap(tmp_path / "liver.seg.nrrd")


def _slicer_scene():
    slicer = pytest.importorskip("slicer")
    return slicer, slicer.vtkMRMLScene()


def test_slicer_reads_our_seg_nrrd(tmp_path):
    slicer, scene = _slicer_scene()
    from vtk.util.numpy_support import vtk_to_numpy
    import vtk

    labelmap = spine_labelmap(values=(20, 21))
    path = tmp_path / "ours.seg.nrrd"
    write_seg_nrrd(labelmap, path)
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
    assert [(s.GetName(), s.GetLabelValue()) for s in segments] == [("L1", 20), ("L2", 21)]
    for segment in segments:
        image = segment.GetRepresentation("Binary labelmap")
        dims = image.GetDimensions()
        voxels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])
        expected = labelmap.volume.array == segment.GetLabelValue()
        np.testing.assert_array_equal(voxels == segment.GetLabelValue(), expected)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        slicer_ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(slicer_ijk_to_ras, labelmap.volume.ijk_to_ras, atol=1e-6)


def test_multilayer_seg_nrrd_written_by_slicer_is_merged(tmp_path):
    slicer, scene = _slicer_scene()
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    shape_kji, spacing, origin_ras = (6, 7, 8), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0)
    l1 = np.zeros(shape_kji, np.uint8)
    l1[1:4, 1:4, 1:4] = 1
    l2 = np.zeros(shape_kji, np.uint8)
    l2[2:5, 2:6, 2:7] = 1  # overlaps L1, so Slicer stores it in a second layer

    def oriented(mask):
        image = slicer.vtkOrientedImageData()
        image.SetDimensions(*shape_kji[::-1])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        vtk_to_numpy(image.GetPointData().GetScalars())[:] = mask.ravel()
        image.SetSpacing(*spacing)
        image.SetOrigin(*origin_ras)
        return image

    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    node.SetSourceRepresentationToBinaryLabelmap()
    node.AddSegmentFromBinaryLabelmapRepresentation(oriented(l1), "L1 vertebra")
    node.AddSegmentFromBinaryLabelmapRepresentation(oriented(l2), "L2 vertebra")
    assert node.GetSegmentation().GetNumberOfLayers() == 2
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    path = tmp_path / "slicer.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(node)

    labelmap = read_labelmap(path)
    assert labelmap.scheme.name == "verse"
    assert labelmap.labels == {"L1": 20, "L2": 21}

    def ras_points(mask_kji, ijk_to_ras):
        k, j, i = np.nonzero(mask_kji)
        points = np.stack([i, j, k], axis=1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
        return points[np.lexsort(points.T)]

    original = homogeneous(np.diag(spacing), origin_ras)
    for name, expected_mask in [("L1", l1.astype(bool) & ~l2.astype(bool)), ("L2", l2.astype(bool))]:
        np.testing.assert_allclose(
            ras_points(vertebra_mask(labelmap, name), labelmap.volume.ijk_to_ras),
            ras_points(expected_mask, original),
            atol=1e-9,
        )


# --------------------------------------------------------------------------- centroids


def test_axis_codes_follow_nibabel_convention():
    assert axis_codes(Volume(np.zeros((2, 2, 2)), np.eye(4))) == ("R", "A", "S")
    assert axis_codes(Volume(np.zeros((2, 2, 2)), LPS_TO_RAS)) == ("L", "P", "S")
    # VerSe's sample orientation P, I, R: i -> posterior, j -> inferior, k -> right
    pir = np.zeros((4, 4))
    pir[1, 0], pir[2, 1], pir[0, 2], pir[3, 3] = -1.0, -1.0, 1.0, 1.0
    assert axis_codes(Volume(np.zeros((2, 2, 2)), pir)) == ("P", "I", "R")


def test_centroids_round_trip_oblique_volume(tmp_path):
    volume = oblique_volume()
    centroids = {"L2": np.array([1.0, 2.0, 3.0]), "T13": np.array([4.0, 5.0, 6.5]), "vertebrae_L1": np.zeros(3)}
    write_centroids(centroids, tmp_path / "ctd.json", volume)
    entries = json.loads((tmp_path / "ctd.json").read_text())
    assert entries[0] == {"direction": list(axis_codes(volume))}
    assert [e["label"] for e in entries[1:]] == [28, 20, 21]  # VerSe labels, cranial -> caudal
    back = read_centroids(tmp_path / "ctd.json", volume)
    assert list(back) == ["T13", "L1", "L2"]
    for name, key in [("L2", "L2"), ("T13", "T13"), ("L1", "vertebrae_L1")]:
        point = centroids[key]
        np.testing.assert_allclose(back[name], point, atol=2e-3)


def test_centroids_in_voxels_of_another_orientation_are_reoriented(tmp_path):
    volume = Volume(np.zeros((30, 20, 10)), homogeneous(np.diag([0.5, 1.0, 2.0]), [1.0, 2.0, 3.0]))  # R, A, S
    ijk = np.array([2.0, 5.0, 7.0])
    flipped_permuted = {"direction": ["S", "L", "A"], "label": 22, "X": ijk[2], "Y": (10 - 1) - ijk[0], "Z": ijk[1]}
    entries = [
        {"direction": flipped_permuted.pop("direction")},
        flipped_permuted,
        {"label": 27, "X": 1, "Y": 1, "Z": 1},  # coccyx: skipped
        {"label": 21, "X": float("nan"), "Y": 1, "Z": 1},  # NaN: skipped
    ]
    (tmp_path / "ctd.json").write_text(json.dumps(entries))
    back = read_centroids(tmp_path / "ctd.json", volume)
    assert list(back) == ["L3"]
    np.testing.assert_allclose(back["L3"], volume.ijk_to_ras_points(ijk), atol=1e-9)


def test_bad_centroid_files(tmp_path):
    volume = oblique_volume()
    with pytest.raises(InputError, match="file not found"):
        read_centroids(tmp_path / "none.json", volume)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        read_centroids(tmp_path / "bad.json", volume)
    (tmp_path / "dict.json").write_text('{"label": 20}')
    with pytest.raises(InputError, match="expected a list"):
        read_centroids(tmp_path / "dict.json", volume)
    (tmp_path / "nodir.json").write_text('[{"label": 20, "X": 1, "Y": 2, "Z": 3}]')
    with pytest.raises(InputError, match="no {'direction'"):
        read_centroids(tmp_path / "nodir.json", volume)
    (tmp_path / "baddir.json").write_text('[{"direction": ["L", "R", "S"]}]')
    with pytest.raises(InputError, match="3 distinct axis codes"):
        read_centroids(tmp_path / "baddir.json", volume)


# --------------------------------------------------------------------------- X-rays


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_png_8_and_16_bit(tmp_path, dtype):
    array = (np.arange(4 * 7).reshape(4, 7) * (1 if dtype == np.uint8 else 1000)).astype(dtype)
    write_2d(array, tmp_path / "x.png")
    xray = read_xray(tmp_path / "x.png")
    assert xray.array.dtype == np.float32 and xray.array.shape == (4, 7)
    assert xray.size == (7, 4)
    np.testing.assert_array_equal(xray.array, array.astype(np.float32))


def test_read_rgb_as_luminance_and_invert(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    write_2d(rgb, tmp_path / "rgb.png", is_vector=True)
    grey = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(read_xray(tmp_path / "rgb.png").array, grey, atol=1e-3)
    inverted = read_xray(tmp_path / "rgb.png", invert=True).array
    np.testing.assert_allclose(inverted, grey.max() + grey.min() - grey, atol=1e-3)


def test_xray_3d_and_constant_are_rejected_single_slice_accepted(tmp_path):
    write_2d(np.ones((3, 4, 5), np.float32) * np.arange(3)[:, None, None], tmp_path / "stack.nrrd")
    with pytest.raises(InputError, match=r"is a 3D image \(3 slices\); an X-ray must be 2D"):
        read_xray(tmp_path / "stack.nrrd")
    single = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    write_2d(single, tmp_path / "single.mha")
    np.testing.assert_array_equal(read_xray(tmp_path / "single.mha").array, single[0])
    write_2d(np.full((4, 5), 7, np.uint8), tmp_path / "flat.png")
    with pytest.raises(InputError, match="constant image"):
        read_xray(tmp_path / "flat.png")
    with pytest.raises(InputError, match="file not found"):
        read_xray(tmp_path / "missing.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="cannot read"):
        read_xray(tmp_path / "corrupt.png")


def test_xray_geometry_size_must_match(tmp_path):
    write_2d(np.arange(4 * 7, dtype=np.uint16).reshape(4, 7), tmp_path / "x.png")

    def geometry(size):
        return XrayGeometry([0, -600, 0], [-3, 400, -2], [1, 0, 0], [0, 0, -1], (1.0, 1.0), size)

    assert read_xray(tmp_path / "x.png", geometry(size=(7, 4))).geometry.size == (7, 4)
    with pytest.raises(InputError, match=r"7 columns x 4 rows but its geometry says size \[4, 7\]"):
        read_xray(tmp_path / "x.png", geometry(size=(4, 7)))


def write_dx(path, array, photometric):
    """A minimal DX DICOM file written with pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "DX", "Phantom"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = array.astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_dicom_monochrome1_is_read_bone_bright(tmp_path):
    stored = (np.arange(3 * 5).reshape(3, 5) * 100).astype(np.uint16)  # low value = bright on screen
    write_dx(tmp_path / "m1.dcm", stored, "MONOCHROME1")
    write_dx(tmp_path / "m2.dcm", stored, "MONOCHROME2")
    np.testing.assert_array_equal(read_xray(tmp_path / "m2.dcm").array, stored.astype(np.float32))
    m1 = read_xray(tmp_path / "m1.dcm").array
    assert m1.shape == (3, 5)
    # displayed-white (stored minimum) must come out as the maximum, linearly
    np.testing.assert_allclose(m1 + stored, (m1 + stored)[0, 0])
    assert m1[0, 0] == m1.max()


def test_write_xray_png_scales_to_16_bit_and_float_formats_keep_values(tmp_path):
    array = np.linspace(-2.5, 7.5, 12, dtype=np.float32).reshape(3, 4)
    write_xray(array, tmp_path / "x.png")
    png = sitk.ReadImage(str(tmp_path / "x.png"))
    assert png.GetPixelID() == sitk.sitkUInt16
    back = read_xray(tmp_path / "x.png").array
    assert back.min() == 0 and back.max() == 65535
    np.testing.assert_allclose(back, (array - array.min()) / (array.max() - array.min()) * 65535, atol=0.5)
    for suffix in (".nrrd", ".mha"):
        write_xray(array, tmp_path / f"x{suffix}")
        np.testing.assert_array_equal(read_xray(tmp_path / f"x{suffix}").array, array)
    with pytest.raises(InputError, match="expected extension .png"):
        write_xray(array, tmp_path / "x.bmp")


def test_a_fingerprint_reads_files_by_content_and_arrays_by_every_value(tmp_path):
    """What decides whether a journal may be resumed (io.journal): a file's name and bytes, not its
    folder, and every value of an in-memory array (numpy's repr elides the middle of a large one)."""
    from SpineRegistrationLib.io.journal import fingerprint

    first, second = tmp_path / "one" / "AP.json", tmp_path / "two" / "AP.json"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_text('{"x": 1}')
    second.write_text('{"x": 1}')
    assert fingerprint([first], {}) == fingerprint([second], {})
    second.write_text('{"x": 2}')
    assert fingerprint([first], {}) != fingerprint([second], {})
    image = np.zeros((512, 512), np.float32)
    changed = image.copy()
    changed[256, 256] = 1.0
    assert repr(image) == repr(changed)
    assert fingerprint([image], {}) != fingerprint([changed], {})
    assert fingerprint([image], {}) == fingerprint([image.copy()], {})
    assert fingerprint([image], {"method": "auto"}) != fingerprint([image], {"method": "learned"})
