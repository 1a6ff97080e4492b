"""Bad input to ``spinereg``: one line ``spinereg: error: ...`` on stderr, exit code 2, no
traceback, and nothing that existed before is changed or half-written (DESIGN.md).

Every failing ``drr`` call here runs with ``--overwrite`` onto a pre-existing output file,
so the check is strict: the error must come before the file is touched. Failing
``phantom``/``demo`` calls target a non-empty folder with ``--overwrite`` (or a fresh
path), and the folder around them is compared before and after.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SpineRegistrationLib.io.geometry_json import load_geometry
from SpineRegistrationLib.io import read_xray

#: Failing drr calls: options (values are keys of the ``bad_files`` fixture, or literal)
#: and a fragment the one-line error must hold, so each fails for the reason it is meant to.
DRR_CASES = {
    "missing CT file": ({"--ct": "missing.nii.gz"}, "file not found"),
    "corrupt CT": ({"--ct": "corrupt.nii.gz"}, "cannot read"),
    "2D PNG as CT": ({"--ct": "flat.png"}, "is a 2D image"),
    "CT folder without DICOM": ({"--ct": "empty_folder"}, "no DICOM series"),
    "geometry not JSON": ({"--geometry": "not_json.json"}, "not a JSON geometry file"),
    "geometry wrong format": ({"--geometry": "wrong_format.json"}, "expected 'spinereg-xray-geometry'"),
    "geometry non-unit u": ({"--geometry": "non_unit_u.json"}, "detector_u is not a unit vector"),
    "geometry missing field": ({"--geometry": "missing_field.json"}, "missing field(s) pixel_spacing"),
    "geometry missing file": ({"--geometry": "missing.json"}, "geometry file not found"),
    "geometry looks away from the CT": ({"--geometry": "sideways.json"}, "no part of it projects onto the 64x64 detector"),
    "CT behind the source": ({"--geometry": "behind_source.json"}, "behind the X-ray source"),
    "CT beyond the detector": ({"--geometry": "beyond_detector.json"}, "beyond the detector"),
    "unknown vertebra": ({"--seg": "seg.nii.gz", "--vertebra": "X9"}, "unknown vertebra 'X9'"),
    "vertebra absent from labelmap": ({"--seg": "seg.nii.gz", "--vertebra": "T5"}, "present: L1, L2, L3"),
    "raw label absent from labelmap": ({"--seg": "seg.nii.gz", "--vertebra": "99"}, "not in the labelmap"),
    "empty labelmap": ({"--seg": "empty_seg.nii.gz", "--vertebra": "L2"}, "is empty"),
    "labelmap on a shifted grid": ({"--seg": "shifted_seg.nii.gz", "--vertebra": "L2"}, "voxel grid"),
    "labelmap of another size": ({"--seg": "cropped_seg.nii.gz", "--vertebra": "L2"}, "voxel grid"),
    "labelmap is not integer": ({"--seg": "float_seg.nii.gz", "--vertebra": "L2"}, "non-integer"),
    "unknown label scheme": (
        {"--seg": "seg.nii.gz", "--vertebra": "L2", "--label-scheme": "nonsense"}, "unknown label scheme"
    ),
    "seg without vertebra": ({"--seg": "seg.nii.gz"}, "go together"),
    "vertebra without seg": ({"--vertebra": "L2"}, "go together"),
    "device cuda without GPU": ({"--device": "cuda"}, "no CUDA GPU"),
    "unknown device": ({"--device": "tpu9"}, "unknown device 'tpu9'"),
    "transform not rigid": ({"--transform": "scaled.json"}, "not a rigid transform"),
    "transform JSON without matrix": ({"--transform": "no_matrix.json"}, "'matrix_ras'"),
    "transform corrupt h5": ({"--transform": "corrupt.h5"}, "as an ITK transform"),
    "transform missing file": ({"--transform": "missing.h5"}, "transform file not found"),
    "transform unknown extension": ({"--transform": "matrix.xyz"}, "expected an ITK transform file"),
}


@pytest.fixture(scope="module")
def bad_files(phantom_dir, small_geometry, tmp_path_factory):
    """Good and bad inputs next to each other: name -> path (some deliberately absent)."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    files = {name: folder / name for name in ("missing.nii.gz", "missing.json", "missing.h5")}
    files["ct.nii.gz"] = phantom_dir / "ct.nii.gz"
    files["seg.nii.gz"] = phantom_dir / "seg.nii.gz"
    files["geometry.json"] = small_geometry

    def write(name: str, data: bytes | str) -> None:
        files[name] = folder / name
        (files[name].write_bytes if isinstance(data, bytes) else files[name].write_text)(data)

    write("corrupt.nii.gz", rng.bytes(4096))
    write("corrupt.h5", rng.bytes(4096))
    files["empty_folder"] = folder / "empty_folder"
    files["empty_folder"].mkdir()
    files["flat.png"] = folder / "flat.png"
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (64, 64), dtype=np.uint8)), str(files["flat.png"]))

    good = json.loads(small_geometry.read_text())
    write("not_json.json", '{"format": "spinereg-xray-geometry", "source": [0, 0,')
    write("wrong_format.json", json.dumps(good | {"format": "xray-geometry"}))
    write("non_unit_u.json", json.dumps(good | {"detector_u": [2 * x for x in good["detector_u"]]}))
    write("missing_field.json", json.dumps({key: value for key, value in good.items() if key != "pixel_spacing"}))
    geometry = load_geometry(small_geometry)
    sideways = 3000.0 * geometry.detector_u  # the whole C-arm moved 3 m to one side
    write("sideways.json", json.dumps(good | {"source": (geometry.source + sideways).tolist(),
                                              "detector_origin": (geometry.detector_origin + sideways).tolist()}))
    for name, shift_mm in (("behind_source.json", 2000.0), ("beyond_detector.json", -2000.0)):
        along_beam = shift_mm * geometry.detector_normal  # the C-arm moved 2 m along its beam
        write(name, json.dumps(good | {"source": (geometry.source + along_beam).tolist(),
                                       "detector_origin": (geometry.detector_origin + along_beam).tolist()}))

    seg_image = sitk.ReadImage(str(phantom_dir / "seg.nii.gz"))
    seg_array = sitk.GetArrayFromImage(seg_image)

    def write_seg(name: str, image: sitk.Image) -> None:
        files[name] = folder / name
        sitk.WriteImage(image, str(files[name]))

    write_seg("empty_seg.nii.gz", _image_like(np.zeros_like(seg_array), seg_image))
    write_seg("float_seg.nii.gz", _image_like(seg_array * 1.5, seg_image))  # 20 -> 30.0, 21 -> 31.5
    write_seg("cropped_seg.nii.gz", seg_image[:, :, 1:])  # one slice fewer
    shifted = sitk.Image(seg_image)
    shifted.SetOrigin(np.add(seg_image.GetOrigin(), (0.0, 0.0, 10.0)).tolist())  # same size, 10 mm off
    write_seg("shifted_seg.nii.gz", shifted)

    scaled = np.diag([1.1, 1.1, 1.1, 1.0])
    write("scaled.json", json.dumps({"matrix_ras": scaled.tolist()}))
    write("no_matrix.json", json.dumps({"matrix": np.eye(4).tolist()}))
    write("matrix.xyz", json.dumps({"matrix_ras": np.eye(4).tolist()}))
    return files


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``array`` (K, J, I) as an image on the reference's grid."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _drr_argv(files: dict, out, case: dict, overwrite: bool = True) -> list:
    options = {"--ct": "ct.nii.gz", "--geometry": "geometry.json"} | case
    argv = ["drr"]
    for option, value in options.items():
        argv += [option, files.get(value, value)]
    return [*argv, "--out", out, *(["--overwrite"] if overwrite else [])]


@pytest.mark.parametrize("case, message", DRR_CASES.values(), ids=list(DRR_CASES))
def test_drr_bad_input_leaves_the_existing_output_alone(
    case, message, bad_files, tmp_path, spinereg, snapshot, make_old_file, assert_one_line_error
):
    if case.get("--device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = make_old_file(tmp_path / "drr.nrrd")
    before = snapshot(tmp_path)
    result = spinereg(*_drr_argv(bad_files, out, case))
    assert_one_line_error(result)
    assert message in result.err
    assert snapshot(tmp_path) == before, "the pre-existing output was touched (or litter was left)"


def test_drr_refuses_to_overwrite_without_the_flag(bad_files, tmp_path, spinereg, snapshot, make_old_file,
                                                   assert_one_line_error):
    out = make_old_file(tmp_path / "drr.nrrd")
    before = snapshot(tmp_path)
    result = spinereg(*_drr_argv(bad_files, out, {}, overwrite=False))
    assert_one_line_error(result)
    assert "--overwrite" in result.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["drr.nrrd", "drr.png"])
def test_drr_overwrite_replaces_the_file(bad_files, tmp_path, spinereg, snapshot, make_old_file, name):
    out = make_old_file(tmp_path / name)
    before = snapshot(out)["."]
    result = spinereg(*_drr_argv(bad_files, out, {}))
    assert result.code == 0, result.err
    after = snapshot(out)["."]
    assert after[0] != before[0] and after[2] != before[2]
    geometry = load_geometry(bad_files["geometry.json"])
    assert read_xray(out, geometry).array.max() > 0
    assert [path.name for path in tmp_path.iterdir()] == [name], "no temporary file left beside it"


@pytest.mark.parametrize("out", ["missing_folder/drr.nrrd", "drr.xyz", "."])
def test_drr_bad_output_path_writes_nothing(out, bad_files, tmp_path, spinereg, snapshot, assert_one_line_error):
    before = snapshot(tmp_path)
    result = spinereg(*_drr_argv(bad_files, tmp_path / out, {}, overwrite=False))
    assert_one_line_error(result)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- phantom, demo
#: Options that fail validation, for both phantom and demo.
BAD_PHANTOM_OPTIONS = {
    "vertebrae reversed": ["--vertebrae", "L3", "L1"],
    "vertebra not in the phantom": ["--vertebrae", "C1", "L1"],
    "vertebra unknown": ["--vertebrae", "L1", "X9"],
    "spacing zero": ["--spacing", "0"],
    "spacing negative": ["--spacing", "-1"],
    "spacing NaN": ["--spacing", "nan"],
    "negative pose range": ["--pose-mm", "-1"],
}
FAST = ["--spacing", "2", "--vertebrae", "L1", "L2"]


def _folder_with_content(path):
    path.mkdir()
    (path / "keep.txt").write_text("earlier results")
    (path / "sub").mkdir()
    (path / "sub" / "ct.nii.gz").write_bytes(b"not really a CT")
    return path


@pytest.mark.parametrize("command", ["phantom", "demo"])
@pytest.mark.parametrize("options", BAD_PHANTOM_OPTIONS.values(), ids=list(BAD_PHANTOM_OPTIONS))
def test_bad_phantom_options_change_nothing(command, options, tmp_path, spinereg, snapshot, assert_one_line_error):
    existing = _folder_with_content(tmp_path / "existing")
    before = snapshot(tmp_path)
    for out, flags in ((existing, ["--overwrite"]), (tmp_path / "new", [])):
        result = spinereg(command, *FAST, *options, "--out", out, *flags)
        assert_one_line_error(result)
        assert snapshot(tmp_path) == before, f"{command} --out {out.name} {flags}"


@pytest.mark.parametrize("command", ["phantom", "demo"])
def test_existing_output_folder_or_file_is_refused(command, tmp_path, spinereg, snapshot, make_old_file,
                                                  assert_one_line_error):
    existing = _folder_with_content(tmp_path / "existing")
    a_file = make_old_file(tmp_path / "a_file")
    before = snapshot(tmp_path)
    cases = ((existing, "not empty"), (a_file, "is a file"), (tmp_path / "no" / "such" / "folder", "does not exist"))
    for out, words in cases:
        result = spinereg(command, *FAST, "--out", out)
        assert_one_line_error(result)
        assert words in result.err
        assert snapshot(tmp_path) == before


def test_demo_device_cuda_without_gpu(tmp_path, spinereg, snapshot, assert_one_line_error):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    existing = _folder_with_content(tmp_path / "existing")
    before = snapshot(tmp_path)
    result = spinereg("demo", *FAST, "--device", "cuda", "--out", existing, "--overwrite")
    assert_one_line_error(result)
    assert "cuda" in result.err.lower()
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- usage errors
USAGE_ERRORS = {
    "no command": [],
    "unknown command": ["frobnicate"],
    "drr without --ct": ["drr", "--geometry", "g.json", "--out", "x.nrrd"],
    "phantom --spacing not a number": ["phantom", "--spacing", "two", "--out", "x"],
    "phantom --vertebrae one name": ["phantom", "--vertebrae", "L1", "--out", "x"],
    "unknown option": ["drr", "--ct", "ct.nii.gz", "--geometry", "g.json", "--out", "x.nrrd", "--frobnicate"],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=list(USAGE_ERRORS))
def test_usage_errors_are_one_line(argv, tmp_path, monkeypatch, spinereg, snapshot, assert_one_line_error):
    monkeypatch.chdir(tmp_path)
    result = spinereg(*argv)
    assert_one_line_error(result)
    assert "--help" in result.err, "the one line points to the help"
    assert snapshot(tmp_path) == {".": ("dir",)}


# ----------------------------------------------------------------------------- failures while writing
def test_drr_failing_write_keeps_the_previous_file(bad_files, tmp_path, monkeypatch, spinereg, snapshot,
                                                   make_old_file, assert_one_line_error):
    import SpineRegistrationLib.io as io

    def half_write(image, path):
        with open(path, "wb") as handle:
            handle.write(b"NRRD0004\n")  # a truncated header, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "write_xray", half_write)
    out = make_old_file(tmp_path / "drr.nrrd")
    before = snapshot(tmp_path)
    result = spinereg(*_drr_argv(bad_files, out, {}))
    assert_one_line_error(result)
    assert "No space left" in result.err
    assert snapshot(tmp_path) == before


@pytest.fixture
def fake_sample(monkeypatch):
    """Make ``phantom``'s generation instant: write_sample writes two tiny files, or fails after one."""
    import SpineRegistrationLib.synthetic.sample_data as sample_data

    state = {"fail": False}

    def write_sample(directory, *_):
        (directory / "ct.nii.gz").write_bytes(b"new CT")
        if state["fail"]:
            raise OSError(28, "No space left on device")
        (directory / "truth.json").write_text("{}")
        return {"ct": directory / "ct.nii.gz", "truth": directory / "truth.json"}

    monkeypatch.setattr(sample_data, "make_sample", lambda config: (None, None, None))
    monkeypatch.setattr(sample_data, "write_sample", write_sample)
    return state


def test_phantom_failing_write_keeps_the_previous_folder(fake_sample, tmp_path, spinereg, snapshot,
                                                         assert_one_line_error):
    existing = _folder_with_content(tmp_path / "existing")
    before = snapshot(tmp_path)
    fake_sample["fail"] = True
    result = spinereg("phantom", *FAST, "--out", existing, "--overwrite")
    assert_one_line_error(result, after_progress=True)
    assert snapshot(tmp_path) == before, "the previous folder must survive and no staging folder stay"


def test_phantom_overwrite_replaces_the_folder_whole(fake_sample, tmp_path, spinereg):
    existing = _folder_with_content(tmp_path / "existing")
    result = spinereg("phantom", *FAST, "--out", existing, "--overwrite")
    assert result.code == 0, result.err
    assert sorted(path.name for path in existing.iterdir()) == ["ct.nii.gz", "truth.json"]
    assert (existing / "ct.nii.gz").read_bytes() == b"new CT"
    assert [path.name for path in tmp_path.iterdir()] == ["existing"], "nothing left beside it"
