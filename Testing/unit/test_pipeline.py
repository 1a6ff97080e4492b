"""The multi-vertebra registration job (SpineRegistrationLib.pipeline) through its Python API:
in-memory inputs, the checks of ``load_case``, a quick registration with a light rigid
configuration, and the result folder written and read back.

The registration here uses a light :class:`RigidConfig` (translation grid only, two
pyramid levels) so the suite stays quick; the default configuration runs end to end in
Testing/cli/test_cli_register.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SpineRegistrationLib.learned import models
from SpineRegistrationLib.methods import resolve_device
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap, read_transform, read_xray
from SpineRegistrationLib.synthetic.phantom import PhantomConfig
from SpineRegistrationLib.pipeline import RegisterConfig, load_case, register_case, render_vertebra_drrs, write_result
from SpineRegistrationLib.io.results import read_result_folder
from SpineRegistrationLib.rigid import RigidConfig
from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample
from SpineRegistrationLib.core.volume import Volume

#: Translation grid only, two levels at the X-rays' 2 mm pixels: a few seconds per vertebra.
LIGHT = RigidConfig(global_search="grid", pixel_mm=(4.0, 2.0), iterations=(25, 15))


@pytest.fixture(scope="module")
def sample():
    """L1-L3 at 2 mm voxels, AP/LAT 256 x 256 X-rays of 2 mm pixels, poses within 3 deg / 3 mm."""
    config = SampleConfig(
        phantom=PhantomConfig(spacing_mm=2.0, vertebrae=("L1", "L2", "L3")),
        detector_size=(256, 256),
        pixel_spacing_mm=2.0,
    )
    return make_sample(config)


def config_of(sample, **changes) -> RegisterConfig:
    phantom, labelmap, case = sample
    fields = dict(ct=phantom.ct, seg=labelmap, xrays=case.images, geometries=case.geometries,
                  method="intensity", rigid=LIGHT)
    return RegisterConfig(**(fields | changes))


def mtre_mm(labelmap: Labelmap, name: str, estimated: np.ndarray, true: np.ndarray) -> float:
    """Mean distance between the vertebra's voxel centres moved by the two poses."""
    k, j, i = np.nonzero(labelmap.volume.array == labelmap.labels[name])
    points = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], 1).astype(float))
    delta = np.asarray(estimated) - np.asarray(true)
    return float(np.linalg.norm(points @ delta[:3, :3].T + delta[:3, 3], axis=1).mean())


# ---------------------------------------------------------------------- registration and result folder
@pytest.fixture(scope="module")
def registered(sample):
    events = []
    case = load_case(config_of(sample, vertebrae=["L2", "l1"], threads=1))
    threads_before = torch.get_num_threads()
    results = register_case(case, progress=events.append)
    assert torch.get_num_threads() == threads_before, "register_case must give the thread setting back"
    return case, results, events


def test_register_case_recovers_the_true_poses(sample, registered):
    _, labelmap, truth = sample
    case, results, _ = registered
    assert [r.name for r in results] == ["L2", "L1"]  # the order asked for, names canonical
    for result in results:
        error = mtre_mm(labelmap, result.name, result.matrix_ras, truth.poses[result.name])
        assert error < 2.0, f"{result.name}: mTRE {error:.2f} mm"
        assert result.verdict in ("pass", "doubt") and -1.0 <= result.similarity <= 1.0


def test_progress_reports_every_vertebra_in_order(registered):
    _, _, events = registered
    assert [(e.index, e.count, e.vertebra) for e in events][0] == (1, 2, "L2")
    for index, name in ((1, "L2"), (2, "L1")):
        mine = [e for e in events if e.index == index]
        assert {e.vertebra for e in mine} == {name} and mine[0].fraction == 0.0 and mine[-1].fraction == 1.0
        assert all(not e.stage.startswith(f"{name}:") for e in mine)  # the name is a field, not in the stage
        fractions = [e.fraction for e in mine]
        assert fractions == sorted(fractions)


def test_write_result_round_trip(sample, registered, tmp_path):
    case, results, _ = registered
    paths = write_result(tmp_path, results, case, total_time_s=12.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["result.json", "L1.h5", "L2.h5", "drr_view1.nrrd", "drr_view2.nrrd"]
    )  # in-memory X-rays have no file stem: views are named view1, view2
    assert paths["result"] == tmp_path / "result.json"
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["format"] == "spinereg-result" and data["version"] == 1 and data["frame"] == "RAS"
    assert data["total_time_s"] == 12.5 and data["method"] == "intensity"
    assert data["inputs"]["ct"] is None and data["inputs"]["xrays"] == [None, None]  # arrays, not files
    assert data["rigid_config"]["global_search"] == "grid"
    back = read_result_folder(tmp_path).vertebrae
    for result in results:
        again = back[result.name]
        np.testing.assert_allclose(again.matrix_ras, result.matrix_ras, atol=1e-12)
        np.testing.assert_allclose(again.params, result.params, atol=1e-12)
        np.testing.assert_allclose(again.center_ras, result.center_ras, atol=1e-12)
        assert (again.similarity, again.verdict, again.evaluations) == (
            pytest.approx(result.similarity), result.verdict, result.evaluations)
        np.testing.assert_allclose(read_transform(tmp_path / f"{result.name}.h5"), result.matrix_ras, atol=1e-9)
    # The DRR of each view: the X-ray's size, the registered vertebrae and nothing else.
    expected = render_vertebra_drrs(case, {r.name: r.matrix_ras for r in results})
    for view, geometry, image in zip(case.views, case.geometries, expected):
        drr = read_xray(tmp_path / f"drr_{view}.nrrd", geometry).array
        np.testing.assert_allclose(drr, image, rtol=1e-6, atol=1e-6)
        assert drr.min() >= 0 and drr.max() > 0.5


def test_register_case_accepts_a_config(sample):
    results = register_case(config_of(sample, vertebrae=["L3"], rigid=RigidConfig(
        global_search="none", pixel_mm=(4.0,), iterations=(3,))))
    assert [r.name for r in results] == ["L3"] and results[0].evaluations > 0


# ---------------------------------------------------------------------- load_case: what is chosen
def test_default_vertebrae_are_those_every_view_sees(sample):
    phantom, labelmap, case = sample
    assert list(load_case(config_of(sample)).vertebrae) == ["L1", "L2", "L3"]
    # Crop both X-rays to a window around L1: the others leave the detectors.
    crops, images = [], []
    for image, geometry in zip(case.images, case.geometries):
        column, row = geometry.project(phantom.centroids_ras["L1"])
        c0, r0 = int(column) - 12, int(row) - 6
        crops.append(geometry.cropped(c0, r0, 24, 12))
        images.append(image[r0 : r0 + 12, c0 : c0 + 24])
    assert list(load_case(config_of(sample, xrays=images, geometries=crops)).vertebrae) == ["L1"]


def test_view_names_from_files_arrays_or_the_config(sample, tmp_path):
    _, _, case = sample
    assert load_case(config_of(sample)).views == ["view1", "view2"]
    assert load_case(config_of(sample, views=["AP", "LAT"])).views == ["AP", "LAT"]
    from SpineRegistrationLib.io.geometry_json import save_geometry

    files = [save_geometry(g, tmp_path / f"{name}.json") for g, name in zip(case.geometries, ("front", "side"))]
    assert load_case(config_of(sample, geometries=files)).views == ["front", "side"]
    same_stem = []
    for index, geometry in enumerate(case.geometries):
        (tmp_path / str(index)).mkdir()
        same_stem.append(save_geometry(geometry, tmp_path / str(index) / "g.json"))
    assert load_case(config_of(sample, geometries=same_stem)).views == ["view1", "view2"]


def test_init_moves_where_the_views_look(sample):
    phantom, _, case = sample
    far = np.eye(4)
    far[:3, 3] = [0.0, 0.0, 300.0]  # the CT 30 cm cranial: no vertebra in view
    with pytest.raises(InputError, match="no vertebra of the segmentation is seen"):
        load_case(config_of(sample, init=far))
    with pytest.raises(InputError, match="does not see L2 at the initial pose"):
        load_case(config_of(sample, init=far, vertebrae=["L2"]))
    np.testing.assert_array_equal(load_case(config_of(sample)).init, np.eye(4))


def test_dicom_geometry_is_read_from_the_xray(sample, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    _, _, case = sample
    ap = case.geometries[0]
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = np.round(case.images[0] / case.images[0].max() * 4000).astype(np.uint16)
    for keyword, value in dict(
        Modality="DX", Rows=ap.rows, Columns=ap.columns, ImagerPixelSpacing=list(ap.pixel_spacing[::-1]),
        DistanceSourceToDetector=ap.sdd_mm, DistanceSourceToPatient=620.0, PositionerType="CARM",
        PositionerPrimaryAngle=0.0, PositionerSecondaryAngle=0.0, SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
        PixelRepresentation=0, PixelData=pixels.tobytes(),
    ).items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "AP.dcm", enforce_file_format=True)
    loaded = load_case(config_of(sample, xrays=[tmp_path / "AP.dcm", case.images[1]],
                                 geometries=["dicom", case.geometries[1]], views=None))
    # The isocentre is the vertebrae's mean centroid, as the sample's own AP view.
    for name in ("source", "detector_origin", "detector_u", "detector_v"):
        np.testing.assert_allclose(getattr(loaded.geometries[0], name), getattr(ap, name), atol=1e-6)
    assert loaded.views == ["AP", "view2"]
    np.testing.assert_allclose(loaded.xrays[0], pixels, atol=0)


# ---------------------------------------------------------------------- load_case: bad input
def _constant(sample):
    return [np.full_like(sample[2].images[0], 7.0), sample[2].images[1]]


def _shifted_labelmap(sample):
    labelmap = sample[1]
    matrix = labelmap.volume.ijk_to_ras.copy()
    matrix[2, 3] += 10.0
    return Labelmap(Volume(labelmap.volume.array, matrix), labelmap.scheme)


BAD = {
    "one X-ray": (lambda s: {"xrays": s[2].images[:1], "geometries": s[2].geometries[:1]}, "at least 2 views"),
    "counts differ": (lambda s: {"geometries": s[2].geometries[:1]}, "one geometry per X-ray"),
    "constant X-ray": (lambda s: {"xrays": _constant(s)}, "constant image"),
    "no contrast": (lambda s: {"xrays": [np.where(np.arange(256**2).reshape(256, 256) == 0, 1.0, 0.0),
                                         s[2].images[1]]}, "no usable contrast"),
    "3D array as X-ray": (lambda s: {"xrays": [np.zeros((3, 256, 256)), s[2].images[1]]}, "must be a 2D"),
    "NaN X-ray": (lambda s: {"xrays": [np.full((256, 256), np.nan), s[2].images[1]]}, "NaN"),
    "size mismatch": (lambda s: {"xrays": [s[2].images[0][:, :200], s[2].images[1]]}, "its geometry says"),
    "unknown vertebra": (lambda s: {"vertebrae": ["X9"]}, "unknown vertebra 'X9'"),
    "absent vertebra": (lambda s: {"vertebrae": ["T5"]}, "present: L1, L2, L3"),
    "empty labelmap": (lambda s: {"seg": Labelmap(s[1].volume.with_array(np.zeros_like(s[1].volume.array)),
                                                  "verse")}, "empty"),
    "labelmap off the CT grid": (lambda s: {"seg": _shifted_labelmap(s)}, "voxel grid"),
    "init not rigid": (lambda s: {"init": np.diag([1.1, 1.0, 1.0, 1.0])}, "not a rigid transform"),
    "unknown method": (lambda s: {"method": "magic"}, "unknown method 'magic'"),
    "unknown device": (lambda s: {"device": "tpu"}, "unknown device 'tpu'"),
    "zero threads": (lambda s: {"threads": 0}, "threads must be"),
    "bad view name": (lambda s: {"views": ["A/P", "LAT"]}, "view name"),
    "same view names": (lambda s: {"views": ["AP", "AP"]}, "must differ"),
    "dicom geometry for an array": (lambda s: {"geometries": ["dicom", s[2].geometries[1]]}, "DICOM tags"),
    "unknown label scheme": (lambda s: {"label_scheme": "nonsense"}, "unknown label scheme"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line(sample, case):
    change, message = BAD[case]
    with pytest.raises(InputError, match=message) as error:
        load_case(config_of(sample, **change(sample)))
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------- methods and devices
def test_method_auto_falls_back_to_intensity_without_a_model(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "model_dirs", lambda: [tmp_path / "Models"])
    loaded = load_case(config_of(sample, method="auto"))
    assert loaded.method == "intensity" and len(loaded.notes) == 1 and "no learned model" in loaded.notes[0]
    with pytest.raises(InputError, match="needs a trained model"):
        load_case(config_of(sample, method="learned"))
    assert load_case(config_of(sample, method="intensity")).notes == []


def test_learned_and_auto_run_the_given_model_and_auto_falls_back_when_in_doubt(sample, tmp_path):
    from SpineRegistrationLib.learned.checkpoint import save_model
    from SpineRegistrationLib.learned.network import ModelConfig, PoseNet

    # An untrained network answers "the nominal pose": learned keeps it, auto refines it
    # and, with its result in doubt or not, ends at least as well as intensity alone.
    path = save_model(PoseNet(ModelConfig(size_px=32, mm_per_px=5.0, channels=(8, 16), heads=2)), tmp_path / "m.pt")
    phantom, labelmap, case = sample
    learned = register_case(config_of(sample, method="learned", model=path, vertebrae=["L2"]))[0]
    assert np.allclose(learned.matrix_ras, np.eye(4), atol=1e-5)  # the identity start, unmoved
    assert [stage["stage"] for stage in learned.stages][:2] == ["network", "global:none"]
    auto = register_case(config_of(sample, method="auto", model=path, vertebrae=["L2"]))[0]
    assert mtre_mm(labelmap, "L2", auto.matrix_ras, case.poses["L2"]) < 1.5


@pytest.mark.parametrize("content, message", [(b"garbage", "not a readable spinereg model"),
                                              (None, "does not exist")])
def test_a_bad_model_file_fails_before_anything_is_read(sample, tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        load_case(config_of(sample, method="auto", model=path, ct=tmp_path / "missing_ct.nii.gz"))
    assert "\n" not in str(error.value)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
