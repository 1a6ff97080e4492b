"""``spinereg register`` end to end on the session phantom (2 mm voxels, L1-L3, 512 x 512
X-rays, each vertebra moved by up to 3 deg / 3 mm), and its bad-input contract: one line
``spinereg: error: ...``, exit status 2, no result.json, an existing output folder left
exactly as it was, and no registration started (the error is the only stderr line).

One registration runs (L2, the default rigid configuration): the rest of the registration
is tested through the Python API in Testing/unit/test_pipeline.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SpineRegistrationLib.io.geometry_json import load_geometry
from SpineRegistrationLib.io import read_labelmap, read_transform, read_xray
from SpineRegistrationLib.learned.models import shipped_model

PARAM_KEYS = {"rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm"}


def _register_argv(phantom_dir, out, *extra, views=("AP", "LAT")) -> list:
    argv = ["register", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz"]
    for view in views:
        argv += ["--xray", phantom_dir / f"{view}.png", "--geometry", phantom_dir / f"{view}.json"]
    return [*argv, "--out", out, *extra]


@pytest.fixture(scope="module")
def registered(phantom_dir, tmp_path_factory):
    """``spinereg register ... --vertebra L2 --out DIR`` run once: (exit code, stdout, stderr, DIR)."""
    import contextlib
    import io

    from SpineRegistrationLib.cli import main

    out = tmp_path_factory.mktemp("register") / "result"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in _register_argv(phantom_dir, out, "--vertebra", "L2")])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_register_succeeds_and_writes_the_folder(registered):
    code, stdout, stderr, out = registered
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["L2.h5", "drr_AP.nrrd", "drr_LAT.nrrd", "result.json"]
    assert [p.name for p in out.parent.iterdir()] == [out.name], "no staging folder left beside the output"
    # Progress on stderr in the lines the Slicer module parses; a table on stdout.
    lines = stderr.replace("\r", "\n").splitlines()
    assert "[1/1] L2: registering" in lines
    assert any(line.startswith("L2:") and "%|" in line for line in lines), "no tqdm bar"
    table = stdout.splitlines()
    assert table[0].split()[:5] == ["vertebra", "similarity", "level_margin", "evidence", "verdict"]
    row = table[1].split()
    assert row[0] == "L2" and row[4] in ("pass", "doubt")
    entry = json.loads((out / "result.json").read_text())["vertebrae"]["L2"]
    assert float(row[2]) == pytest.approx(entry["level_margin"], abs=5e-4)
    evidence = entry.get("vertebra_evidence")
    assert row[3] == "-" if evidence is None else float(row[3]) == pytest.approx(evidence, abs=5e-4)


def test_the_table_shows_the_vertebra_evidence_where_it_was_read():
    from SpineRegistrationLib.cli.register import _table
    from SpineRegistrationLib.io.results import VertebraResult

    def result(name, evidence):
        return VertebraResult(name, np.eye(4), np.zeros(6), np.zeros(3), similarity=0.41, verdict="pass",
                              time_s=1.0, evaluations=10, level_margin=0.2, vertebra_evidence=evidence)

    rows = [line.split() for line in _table([result("T1", 0.31234), result("T2", None)]).splitlines()]
    assert rows[0][3] == "evidence"
    assert rows[1][:5] == ["T1", "0.410", "+0.200", "0.312", "pass"]
    assert rows[2][:5] == ["T2", "0.410", "+0.200", "-", "pass"]


def test_result_json_follows_the_contract(registered, phantom_dir):
    _, _, _, out = registered
    result = json.loads((out / "result.json").read_text())
    assert result["format"] == "spinereg-result" and result["version"] == 1 and result["frame"] == "RAS"
    assert result["software"].startswith("SpineRegistration ")
    assert result["method"] == ("auto" if shipped_model() else "intensity") and result["method_requested"] == "auto"
    inputs = result["inputs"]
    assert inputs["ct"] == str((phantom_dir / "ct.nii.gz").absolute())
    assert inputs["xrays"] == [str((phantom_dir / f"{v}.png").absolute()) for v in ("AP", "LAT")]
    assert inputs["geometries"] == [str((phantom_dir / f"{v}.json").absolute()) for v in ("AP", "LAT")]
    assert list(result["vertebrae"]) == ["L2"]
    entry = result["vertebrae"]["L2"]
    assert np.asarray(entry["matrix_ras"]).shape == (4, 4)
    assert set(entry["params"]) == PARAM_KEYS and len(entry["center_ras"]) == 3
    assert -1.0 <= entry["similarity"] <= 1.0 and entry["verdict"] in ("pass", "doubt")
    # L2 has both neighbours labelled: the verdict read how far it leads them (a right result leads).
    assert entry["level_margin"] > 0.0
    assert entry["time_s"] > 0 and isinstance(entry["evaluations"], int) and entry["evaluations"] > 0
    assert result["total_time_s"] >= entry["time_s"]


def test_transform_file_holds_matrix_ras(registered):
    _, _, _, out = registered
    matrix = np.asarray(json.loads((out / "result.json").read_text())["vertebrae"]["L2"]["matrix_ras"])
    np.testing.assert_allclose(read_transform(out / "L2.h5"), matrix, atol=1e-9)


def test_drrs_have_the_xray_size(registered, phantom_dir):
    _, _, _, out = registered
    for view in ("AP", "LAT"):
        geometry = load_geometry(phantom_dir / f"{view}.json")
        drr = read_xray(out / f"drr_{view}.nrrd", geometry).array  # checks the size against the geometry
        assert drr.dtype == np.float32 and drr.min() >= 0.0 and drr.max() > 0.5  # optical depth of a vertebra


def test_pose_is_close_to_the_truth(registered, phantom_dir):
    _, _, _, out = registered
    estimated = np.asarray(json.loads((out / "result.json").read_text())["vertebrae"]["L2"]["matrix_ras"])
    true = np.asarray(json.loads((phantom_dir / "truth.json").read_text())["vertebrae"]["L2"]["matrix_ras"])
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels["L2"])
    points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
    delta = estimated - true
    mtre = np.linalg.norm(points @ delta[:3, :3].T + delta[:3, 3], axis=1).mean()
    start = np.linalg.norm(points @ (np.eye(4) - true)[:3, :3].T + (np.eye(4) - true)[:3, 3], axis=1).mean()
    assert mtre < 2.0, f"mTRE {mtre:.2f} mm (from {start:.2f} mm at the start)"


@pytest.mark.skipif(shipped_model() is None, reason="no learned model is shipped")
def test_doubt_warning_gives_each_vertebra_its_reason(phantom_dir, tmp_path, spinereg):
    """The network alone on the 2 mm phantom is in doubt: one warning line names why, per vertebra,
    exactly as result.json records it."""
    result = spinereg(*_register_argv(phantom_dir, tmp_path / "out", "--method", "learned"))
    assert result.code == 0, result.err
    entries = json.loads((tmp_path / "out" / "result.json").read_text())["vertebrae"]
    doubtful = {name: entry["verdict_reason"] for name, entry in entries.items() if entry["verdict"] == "doubt"}
    assert doubtful and all(reason.startswith("network only") for reason in doubtful.values())
    warnings = [line for line in result.err_lines if line.startswith("spinereg: warning:")]
    assert len(warnings) == 1
    for name, reason in doubtful.items():
        assert f"{name}: {reason}" in warnings[0]


def test_help_names_every_option(spinereg):
    result = spinereg("register", "--help")
    assert result.code == 0
    for option in ("--ct", "--seg", "--label-scheme", "--vertebra", "--xray", "--geometry", "--invert", "--init",
                   "--method", "--device", "--threads", "--out", "--overwrite", "learned", "intensity", "auto"):
        assert option in result.out


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_files(phantom_dir, tmp_path_factory):
    """Bad inputs beside the phantom's good ones: name -> path (some deliberately absent)."""
    folder = tmp_path_factory.mktemp("register_bad")
    rng = np.random.default_rng(0)
    files = {name: phantom_dir / name for name in
             ("ct.nii.gz", "seg.nii.gz", "AP.png", "AP.json", "LAT.png", "LAT.json")}
    files |= {name: folder / name for name in ("missing.nii.gz", "missing.png", "missing.json")}

    def write(name: str, data: bytes | str):
        files[name] = folder / name
        (files[name].write_bytes if isinstance(data, bytes) else files[name].write_text)(data)

    write("corrupt.nii.gz", rng.bytes(4096))
    write("corrupt.png", rng.bytes(4096))
    write("corrupt.h5", rng.bytes(4096))
    write("not_json.json", '{"format": "spinereg-xray-geometry", "source": [0, 0,')
    good = json.loads((phantom_dir / "LAT.json").read_text())
    write("non_unit_u.json", json.dumps(good | {"detector_u": [2 * x for x in good["detector_u"]]}))
    write("small.json", json.dumps(good | {"size": [256, 256]}))  # the LAT.png is 512 x 512
    lat = load_geometry(phantom_dir / "LAT.json")
    sideways = 3000.0 * lat.detector_u  # the C-arm moved 3 m to one side
    write("sideways.json", json.dumps(good | {"source": (lat.source + sideways).tolist(),
                                              "detector_origin": (lat.detector_origin + sideways).tolist()}))
    write("scaled.json", json.dumps({"matrix_ras": np.diag([1.1, 1.1, 1.1, 1.0]).tolist()}))
    files["constant.png"] = folder / "constant.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((512, 512), 1000, np.uint16)), str(files["constant.png"]))

    seg = sitk.ReadImage(str(phantom_dir / "seg.nii.gz"))

    def write_seg(name: str, image: sitk.Image) -> None:
        files[name] = folder / name
        sitk.WriteImage(image, str(files[name]))

    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(seg)))
    empty.CopyInformation(seg)
    write_seg("empty_seg.nii.gz", empty)
    shifted = sitk.Image(seg)
    shifted.SetOrigin(np.add(seg.GetOrigin(), (0.0, 0.0, 10.0)).tolist())
    write_seg("shifted_seg.nii.gz", shifted)
    return files


#: name -> (options replacing or adding to the good ones, error fragment). Values naming a
#: ``bad_files`` key are replaced by its path; "--xray"/"--geometry" values are lists (all views).
BAD_CASES = {
    "missing CT": ({"--ct": "missing.nii.gz"}, "file not found"),
    "corrupt CT": ({"--ct": "corrupt.nii.gz"}, "cannot read"),
    "missing seg": ({"--seg": "missing.nii.gz"}, "file not found"),
    "corrupt seg": ({"--seg": "corrupt.nii.gz"}, "cannot read"),
    "missing X-ray": ({"--xray": ["missing.png", "LAT.png"]}, "file not found"),
    "corrupt X-ray": ({"--xray": ["AP.png", "corrupt.png"]}, "cannot read"),
    "CT given as X-ray": ({"--xray": ["ct.nii.gz", "LAT.png"]}, "is a 3D image"),
    "constant X-ray": ({"--xray": ["AP.png", "constant.png"]}, "constant image"),
    "geometry not JSON": ({"--geometry": ["AP.json", "not_json.json"]}, "not a JSON geometry file"),
    "geometry invalid": ({"--geometry": ["AP.json", "non_unit_u.json"]}, "detector_u is not a unit vector"),
    "geometry missing": ({"--geometry": ["AP.json", "missing.json"]}, "geometry file not found"),
    "X-ray size differs from geometry": ({"--geometry": ["AP.json", "small.json"]}, "its geometry says size"),
    "dicom geometry of a PNG": ({"--geometry": ["AP.json", "dicom"]}, "not a readable DICOM file"),
    "fewer geometries than X-rays": ({"--geometry": ["AP.json"]}, "one geometry per X-ray"),
    "one view only": ({"--xray": ["AP.png"], "--geometry": ["AP.json"]}, "at least 2 views"),
    "unknown vertebra": ({"--vertebra": "X9"}, "unknown vertebra 'X9'"),
    "vertebra not in the labelmap": ({"--vertebra": "T5"}, "present: L1, L2, L3"),
    "empty labelmap": ({"--seg": "empty_seg.nii.gz"}, "is empty"),
    "seg on another grid": ({"--seg": "shifted_seg.nii.gz"}, "voxel grid"),
    "geometry does not see the vertebra": (
        {"--geometry": ["AP.json", "sideways.json"], "--vertebra": "L2"}, "geometry does not see L2 at the initial pose"),
    "geometry sees no vertebra": ({"--geometry": ["AP.json", "sideways.json"]}, "no vertebra of the segmentation"),
    "init not rigid": ({"--init": "scaled.json"}, "not a rigid transform"),
    "init corrupt": ({"--init": "corrupt.h5"}, "as an ITK transform"),
    "init missing": ({"--init": "missing.json"}, "file not found"),
    "learned without a model": ({"--method": "learned"}, "needs a trained model"),
    "unknown method": ({"--method": "magic"}, "invalid choice"),
    "cuda without a GPU": ({"--device": "cuda"}, "no CUDA GPU"),
    "unknown device": ({"--device": "tpu9"}, "unknown device 'tpu9'"),
    "zero threads": ({"--threads": "0"}, "threads must be"),
}


def _bad_argv(files: dict, out, case: dict) -> list:
    options = {"--ct": "ct.nii.gz", "--seg": "seg.nii.gz",
               "--xray": ["AP.png", "LAT.png"], "--geometry": ["AP.json", "LAT.json"]} | case
    argv = ["register"]
    for option, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [option, files.get(item, item)]
    return [*argv, "--out", out]


@pytest.mark.parametrize("case, message", BAD_CASES.values(), ids=list(BAD_CASES))
def test_bad_input_fails_fast_and_leaves_the_output_alone(
    case, message, bad_files, tmp_path, spinereg, snapshot, assert_one_line_error
):
    if case.get("--device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if case.get("--method") == "learned" and shipped_model() is not None:
        pytest.skip("a learned model is shipped")
    out = tmp_path / "result"
    out.mkdir()
    (out / "result.json").write_text('{"earlier": "result"}')
    (out / "L2.h5").write_bytes(b"earlier transform")
    before = snapshot(tmp_path)
    result = spinereg(*_bad_argv(bad_files, out, case), "--overwrite")
    assert_one_line_error(result)  # also: nothing else on stderr, so no registration started
    assert message in result.err
    assert snapshot(tmp_path) == before, "the existing output folder was touched (or litter was left)"


def test_output_that_is_a_file_is_refused(bad_files, tmp_path, spinereg, snapshot, make_old_file,
                                          assert_one_line_error):
    out = make_old_file(tmp_path / "result")
    before = snapshot(tmp_path)
    result = spinereg(*_bad_argv(bad_files, out, {}), "--overwrite")
    assert_one_line_error(result)
    assert "is a file" in result.err
    assert snapshot(tmp_path) == before


def test_non_empty_output_needs_overwrite(bad_files, tmp_path, spinereg, snapshot, assert_one_line_error):
    out = tmp_path / "result"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    result = spinereg(*_bad_argv(bad_files, out, {"--vertebra": "L2"}))
    assert_one_line_error(result)
    assert "--overwrite" in result.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, message", [
    (["--xray", "AP.png", "--geometry", "AP.json", "--out", "x"], "--ct"),
    (["--ct", "ct.nii.gz", "--seg", "seg.nii.gz", "--out", "x"], "--xray"),
])
def test_missing_options_are_usage_errors(argv, message, spinereg, assert_one_line_error, tmp_path):
    result = spinereg("register", *argv)
    assert_one_line_error(result)
    assert message in result.err and "spinereg register --help" in result.err
