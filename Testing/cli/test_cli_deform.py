"""``spinereg deform --result``: the deformation folder from a register result, and its bad input.

The result folder is written through the library's own writer with known poses (what
``spinereg register`` writes, without the minutes of registering), on the CLI phantom.
"""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SpineRegistrationLib.core.frames import apply_matrix
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.io import read_labelmap
from SpineRegistrationLib.io.displacement import read_displacement
from SpineRegistrationLib.io.labelmaps import centroids_ras
from SpineRegistrationLib.io.results import VertebraResult, write_result_folder

POSES = {"L1": [2.0, -1.0, 3.0, 4.0, -3.0, 2.0], "L3": [-1.0, 2.0, 1.0, 2.0, -5.0, 1.0]}


def write_result(folder, seg_path, poses=POSES, shift_mm=0.0, doubted=()):
    """A result folder of the vertebrae ``poses`` (params about their centroids) of ``seg_path``;
    the ``doubted`` ones say ``doubt``."""
    centres = centroids_ras(read_labelmap(seg_path))
    folder.mkdir()
    results = []
    for name, params in poses.items():
        centre = centres[name] + shift_mm
        results.append(VertebraResult(name, params_to_matrix(np.array(params), centre), np.array(params), centre,
                                      0.9, "doubt" if name in doubted else "pass", 1.0, 10))
    write_result_folder(folder, {}, results, {})
    return folder


@pytest.fixture(scope="module")
def result_dir(phantom_dir, tmp_path_factory):
    return write_result(tmp_path_factory.mktemp("result") / "result", phantom_dir / "seg.nii.gz")


def test_deform_writes_the_field_the_warped_segmentation_and_statistics(phantom_dir, result_dir, tmp_path, spinereg):
    out = tmp_path / "deformed"
    result = spinereg("deform", "--result", result_dir, "--ct", phantom_dir / "ct.nii.gz",
                      "--seg", phantom_dir / "seg.nii.gz", "--out", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["deform.json", "displacement.h5", "warped_seg.nii.gz",
                                                    "warped_seg.seg.nrrd"]
    document = json.loads((out / "deform.json").read_text())
    assert document["format"] == "spinereg-deform" and document["mode"] == "poses"
    assert document["jacobian"]["folding_percent"] == 0.0
    assert {name: v["registered"] for name, v in document["vertebrae"].items()} == {"L1": True, "L2": False, "L3": True}
    assert "followed their neighbours: L2" in result.out
    # The field in the file sends each registered vertebra's moved voxels back onto the CT.
    field = read_displacement(out / "displacement.h5")
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    for name, params in POSES.items():
        centre = centroids_ras(labelmap)[name]
        matrix = params_to_matrix(np.array(params), centre)
        np.testing.assert_allclose(document["vertebrae"][name]["matrix_ras"], matrix, atol=1e-6)
        k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[name])
        ct = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
        error = np.linalg.norm(field.map_points(apply_matrix(matrix, ct)) - ct, axis=1)
        assert np.median(error) < 1e-3 and np.mean(error < 0.1) > 0.95, name
    warped = read_labelmap(out / "warped_seg.seg.nrrd")
    assert warped.labels == labelmap.labels and warped.volume.array.shape == labelmap.volume.array.shape
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_seg.nii.gz")))
    np.testing.assert_array_equal(plain, warped.volume.array)
    assert not np.array_equal(plain, labelmap.volume.array)  # the vertebrae moved (~5 mm)


@pytest.mark.parametrize("case", ["missing result", "other CT", "unknown vertebra", "both modes", "no seg",
                                  "other grid"])
def test_deform_bad_input_is_one_line_and_writes_nothing(case, phantom_dir, result_dir, tmp_path, spinereg,
                                                         assert_one_line_error):
    ct, seg = phantom_dir / "ct.nii.gz", phantom_dir / "seg.nii.gz"
    result = result_dir
    extra = []
    expected = {"missing result": "not found", "other CT": "another CT", "unknown vertebra": "not in the segmentation",
                "both modes": "not both", "no seg": "needs --seg", "other grid": "voxel grid"}[case]
    if case == "missing result":
        result = tmp_path / "nowhere"
    elif case == "other CT":
        result = write_result(tmp_path / "shifted", seg, shift_mm=3.0)
    elif case == "unknown vertebra":
        result = write_result(tmp_path / "c3", seg, poses={"L1": POSES["L1"]})
        document = json.loads((result / "result.json").read_text())
        document["vertebrae"]["C3"] = document["vertebrae"]["L1"]
        (result / "result.json").write_text(json.dumps(document))
        shutil.copy(result / "L1.h5", result / "C3.h5")
    elif case == "both modes":
        extra = ["--fixed", ct, "--moving", ct]
    elif case == "other grid":
        image = sitk.ReadImage(str(seg))
        image.SetSpacing([s * 1.5 for s in image.GetSpacing()])
        sitk.WriteImage(image, str(tmp_path / "seg_other.nii.gz"))
        seg = tmp_path / "seg_other.nii.gz"
    argv = ["deform", "--result", result, "--ct", ct, "--out", tmp_path / "out", *extra]
    if case != "no seg":
        argv[5:5] = ["--seg", seg]
    outcome = spinereg(*argv)
    assert_one_line_error(outcome)
    assert expected in outcome.err, outcome.err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left behind


def test_deform_keeps_an_existing_folder(phantom_dir, result_dir, tmp_path, spinereg, snapshot, make_old_file,
                                         assert_one_line_error):
    out = tmp_path / "out"
    out.mkdir()
    make_old_file(out / "mine.txt")
    before = snapshot(out)
    outcome = spinereg("deform", "--result", result_dir, "--ct", phantom_dir / "ct.nii.gz",
                       "--seg", phantom_dir / "seg.nii.gz", "--out", out)
    assert_one_line_error(outcome)
    assert snapshot(out) == before


def test_deform_refines_the_poses_jointly_against_the_xrays(phantom_dir, tmp_path):
    """From the truth perturbed by ~1.5 deg / 1.5 mm per vertebra, the joint refinement against the
    phantom's X-rays brings every vertebra back near the truth, and DRRs come with the folder.
    (The library call behind the CLI, with fewer Adam steps than the default to keep it quick.)"""
    from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points
    from SpineRegistrationLib.deform.refine import JointRefineConfig
    from SpineRegistrationLib.pipeline.deform import deform_from_result

    truth = {name: np.array(v["matrix_ras"]) for name, v in
             json.loads((phantom_dir / "truth.json").read_text())["vertebrae"].items()}
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    centres = centroids_ras(labelmap)
    rng = np.random.default_rng(4)
    offsets = {name: rng.uniform(-1.5, 1.5, 6) for name in truth}
    folder = tmp_path / "result"
    folder.mkdir()
    starts = {name: params_to_matrix(offsets[name], truth[name][:3, :3] @ centres[name] + truth[name][:3, 3])
              @ truth[name] for name in truth}
    # The network's poses (method learned): every vertebra is refined.
    write_result_folder(folder, {"method": "learned"}, [VertebraResult(name, starts[name], offsets[name], centres[name],
                                                                       0.9, "pass", 1.0, 10) for name in truth], {})
    output = deform_from_result(folder, phantom_dir / "ct.nii.gz", phantom_dir / "seg.nii.gz",
                                xrays=[phantom_dir / "AP.png", phantom_dir / "LAT.png"],
                                geometries=[phantom_dir / "AP.json", phantom_dir / "LAT.json"],
                                refine=JointRefineConfig(iterations=(15, 10)))
    document = output.document
    assert document["refined"] and document["views"] == ["AP", "LAT"] and set(output.drrs) == {"AP", "LAT"}
    for name in truth:
        points = vertebra_points(labelmap.volume.array == labelmap.labels[name], labelmap.volume)
        before = mtre_mm(starts[name], truth[name], points)
        after = mtre_mm(np.array(document["vertebrae"][name]["matrix_ras"]), truth[name], points)
        assert before > 1.0 and after < 0.5 * before and after < 0.6, (name, before, after)
        assert document["vertebrae"][name]["refinement"]["similarity_after"] >= \
            document["vertebrae"][name]["refinement"]["similarity_before"]


def test_a_doubted_pose_is_not_trusted_unless_kept(phantom_dir, result_dir, tmp_path, spinereg):
    """L2 registered 15 mm off and said doubt: by default it follows L1 and L3 exactly as if it had
    no pose (the folder without it); --keep-doubted puts it where its result says."""
    wrong = {"L1": POSES["L1"], "L2": [0.0, 0.0, 0.0, 15.0, 0.0, 0.0], "L3": POSES["L3"]}
    doubted = write_result(tmp_path / "doubted", phantom_dir / "seg.nii.gz", wrong, doubted=("L2",))
    args = ("--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz")
    outcomes = {name: spinereg("deform", "--result", folder, *args, *extra, "--out", tmp_path / name)
                for name, folder, extra in (("without", result_dir, ()), ("default", doubted, ()),
                                            ("kept", doubted, ("--keep-doubted",)))}
    assert all(outcome.code == 0 for outcome in outcomes.values()), [o.err for o in outcomes.values()]
    documents = {name: json.loads((tmp_path / name / "deform.json").read_text()) for name in outcomes}
    l2 = {name: np.array(document["vertebrae"]["L2"]["matrix_ras"]) for name, document in documents.items()}
    np.testing.assert_allclose(l2["default"], l2["without"], atol=1e-6)
    centre = centroids_ras(read_labelmap(phantom_dir / "seg.nii.gz"))["L2"]
    np.testing.assert_allclose(l2["kept"], params_to_matrix(np.array(wrong["L2"]), centre), atol=1e-6)
    assert documents["default"]["vertebrae"]["L2"]["doubted"] and not documents["kept"]["vertebrae"]["L2"]["doubted"]
    assert "said doubt: L2" in outcomes["default"].err and "said doubt" not in outcomes["kept"].err


def test_a_result_that_only_doubts_is_one_line(phantom_dir, tmp_path, spinereg, assert_one_line_error):
    folder = write_result(tmp_path / "doubted", phantom_dir / "seg.nii.gz", doubted=tuple(POSES))
    outcome = spinereg("deform", "--result", folder, "--ct", phantom_dir / "ct.nii.gz", "--seg",
                       phantom_dir / "seg.nii.gz", "--out", tmp_path / "out")
    assert_one_line_error(outcome)
    assert "every vertebra of the result says doubt" in outcome.err and "--keep-doubted" in outcome.err
    assert not (tmp_path / "out").exists()


def test_the_refinement_starts_a_doubted_vertebra_from_its_neighbours(phantom_dir, tmp_path):
    """L2 registered 12 mm off, said doubt: the joint refinement starts it where L1 and L3 (the truth
    moved by ~1 deg / 1 mm, passed by the intensity stages: held as they are) put it, and brings it to
    the truth; with its own pose kept it cannot (the refinement corrects, it does not search)."""
    from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points
    from SpineRegistrationLib.deform.refine import JointRefineConfig
    from SpineRegistrationLib.pipeline.deform import deform_from_result

    truth = {name: np.array(v["matrix_ras"]) for name, v in
             json.loads((phantom_dir / "truth.json").read_text())["vertebrae"].items()}
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    centres = centroids_ras(labelmap)
    offsets = {"L1": np.array([1.0, -1.0, 0.5, 1.0, -0.5, 1.0]), "L2": np.array([0.0, 0.0, 0.0, 0.0, 12.0, 0.0]),
               "L3": np.array([-0.5, 1.0, -1.0, -1.0, 1.0, 0.5])}
    starts = {name: params_to_matrix(offsets[name], truth[name][:3, :3] @ centres[name] + truth[name][:3, 3])
              @ truth[name] for name in truth}
    folder = tmp_path / "result"
    folder.mkdir()
    write_result_folder(folder, {"method": "intensity"}, [
        VertebraResult(name, starts[name], offsets[name], centres[name], 0.9, "doubt" if name == "L2" else "pass", 1.0,
                       10) for name in truth], {})
    points = vertebra_points(labelmap.volume.array == labelmap.labels["L2"], labelmap.volume)
    errors = {}
    for keep in (False, True):
        output = deform_from_result(folder, phantom_dir / "ct.nii.gz", labelmap,
                                    xrays=[phantom_dir / "AP.png", phantom_dir / "LAT.png"],
                                    geometries=[phantom_dir / "AP.json", phantom_dir / "LAT.json"],
                                    refine=JointRefineConfig(iterations=(15, 10)), keep_doubted=keep)
        errors[keep] = mtre_mm(np.array(output.document["vertebrae"]["L2"]["matrix_ras"]), truth["L2"], points)
        for name in ("L1", "L3"):
            np.testing.assert_allclose(output.document["vertebrae"][name]["matrix_ras"], starts[name], atol=1e-6)
            assert "refinement" not in output.document["vertebrae"][name]
        assert output.document["held"] == (["L1", "L2", "L3"] if keep else ["L1", "L3"])
    assert errors[False] < 0.6 and errors[True] > 5.0, errors


def test_deform_xrays_without_geometries_is_one_line(phantom_dir, result_dir, tmp_path, spinereg,
                                                      assert_one_line_error):
    outcome = spinereg("deform", "--result", result_dir, "--ct", phantom_dir / "ct.nii.gz", "--seg",
                       phantom_dir / "seg.nii.gz", "--xray", phantom_dir / "AP.png", "--out", tmp_path / "out")
    assert_one_line_error(outcome)
    assert "geometr" in outcome.err
    assert not (tmp_path / "out").exists()


def test_deform_with_xrays_and_no_refine_writes_the_warped_vertebrae_drrs(phantom_dir, result_dir, tmp_path, spinereg):
    """--no-refine keeps the poses and writes the DRR of every vertebra (L2 too, which followed its
    neighbours) at its pose, the X-ray's size."""
    from SpineRegistrationLib.io import read_xray

    out = tmp_path / "deformed"
    result = spinereg("deform", "--result", result_dir, "--ct", phantom_dir / "ct.nii.gz", "--seg",
                      phantom_dir / "seg.nii.gz", "--xray", phantom_dir / "AP.png", "--geometry", phantom_dir / "AP.json",
                      "--xray", phantom_dir / "LAT.png", "--geometry", phantom_dir / "LAT.json", "--no-refine",
                      "--out", out)
    assert result.code == 0, result.err
    document = json.loads((out / "deform.json").read_text())
    assert not document["refined"] and "refined against" not in result.out
    for name, params in POSES.items():
        np.testing.assert_allclose(document["vertebrae"][name]["matrix_ras"],
                                   params_to_matrix(np.array(params), centroids_ras(read_labelmap(phantom_dir / "seg.nii.gz"))[name]),
                                   atol=1e-6)
    drr = read_xray(out / "drr_AP.nrrd").array
    xray = read_xray(phantom_dir / "AP.png").array
    assert drr.shape == xray.shape and drr.max() > 0
