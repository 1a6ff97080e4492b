"""X-ray geometry: JSON sidecar, validation, C-arm presets (analytic), resampling, DICOM, CLI."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from SpineRegistrationLib import cli
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.geometry import (
    DEFAULT_SDD_MM,
    DEFAULT_SID_MM,
    XrayGeometry,
    c_arm_geometry,
    preset_geometry,
)
from SpineRegistrationLib.io.dicom_geometry import geometry_from_dicom
from SpineRegistrationLib.io.geometry_json import load_geometry, save_geometry

SDD, SID = DEFAULT_SDD_MM, DEFAULT_SID_MM


def rz(angle_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def oblique() -> XrayGeometry:
    """A non-trivial geometry: oblique, off-centre isocentre, non-square pixels and image."""
    return c_arm_geometry(30.0, -12.0, 1100.0, 700.0, (5.0, -20.0, 40.0), size=(300, 200), pixel_spacing=(0.4, 0.5))


def assert_same_geometry(a: XrayGeometry, b: XrayGeometry, atol: float = 1e-9) -> None:
    for name in ("source", "detector_origin", "detector_u", "detector_v", "pixel_spacing"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, err_msg=name)
    assert a.size == b.size


# ---------------------------------------------------------------------- JSON sidecar
def test_json_round_trip_in_memory_and_on_disk(tmp_path):
    geometry = oblique()
    d = geometry.to_json_dict()
    assert list(d) == [
        "format", "version", "frame", "source", "detector_origin", "detector_u", "detector_v", "pixel_spacing", "size"
    ]
    assert (d["format"], d["version"], d["frame"]) == ("spinereg-xray-geometry", 1, "RAS")
    assert d["size"] == [300, 200] and d["pixel_spacing"] == [0.4, 0.5]
    assert_same_geometry(XrayGeometry.from_json_dict(json.loads(json.dumps(d))), geometry, atol=0)
    path = save_geometry(geometry, tmp_path / "g.json")
    assert_same_geometry(load_geometry(path), geometry, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # no partial file left behind


def valid_dict() -> dict:
    return preset_geometry("AP", size=(4, 3), pixel_spacing=(1.0, 1.0)).to_json_dict()


BAD_FIELDS = [
    ({"format": "other"}, "format is 'other', expected 'spinereg-xray-geometry'"),
    ({"version": 2}, "version is 2, expected 1"),
    ({"frame": "LPS"}, "frame is 'LPS', expected 'RAS'"),
    ({"source": None}, "source must be 3 numbers, got None"),
    ({"source": ["a", 0, 0]}, "source must be 3 numbers"),
    ({"source": [float("nan"), 0, 0]}, "source must be finite"),
    ({"detector_origin": [1.0, 2.0]}, "detector_origin must be 3 numbers, got [1.0, 2.0]"),
    ({"detector_u": [2.0, 0.0, 0.0]}, "detector_u is not a unit vector: norm 2"),
    ({"detector_v": [0.0, 0.0, 1.01]}, "detector_v is not a unit vector: norm 1.01"),
    ({"detector_v": [-1.0, 0.0, 0.0]}, "not orthogonal: dot product 1"),
    ({"pixel_spacing": [0.0, 1.0]}, "pixel_spacing must be > 0 mm, got [0, 1]"),
    ({"pixel_spacing": [1.0, -1.0]}, "pixel_spacing must be > 0 mm"),
    ({"pixel_spacing": [1.0]}, "pixel_spacing must be 2 numbers"),
    ({"size": [0, 3]}, "size must be >= 1 pixel"),
    ({"size": [4.5, 3]}, "size must be whole numbers"),
    ({"size": [4, 3, 1]}, "size must be 2 numbers"),
    ({"source": [0.0, 400.0, 5.0]}, "lies on the detector plane"),
]


@pytest.mark.parametrize("change, message", BAD_FIELDS, ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(BAD_FIELDS)])
def test_invalid_sidecar_fields_raise_input_error(tmp_path, change, message):
    d = {**valid_dict(), **change}
    with pytest.raises(InputError) as info:
        XrayGeometry.from_json_dict(d)
    assert message in str(info.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError) as info:
        load_geometry(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text


@pytest.mark.parametrize("missing", ["source", "size", "detector_u"])
def test_missing_field(missing):
    d = valid_dict()
    del d[missing]
    with pytest.raises(InputError, match=f"missing field.*{missing}"):
        XrayGeometry.from_json_dict(d)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="geometry file not found"):
        load_geometry(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json: not a JSON geometry file"):
        load_geometry(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(InputError, match="must be a JSON object, got list"):
        load_geometry(listed)


# ---------------------------------------------------------------------- C-arm presets
def test_ap_preset_is_exactly_as_specified():
    g = preset_geometry("ap")
    np.testing.assert_allclose(g.source, [0.0, -SID, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.center_ras, [0.0, SDD - SID, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.detector_u, [-1.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(g.detector_v, [0.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(g.detector_normal, [0.0, 1.0, 0.0], atol=1e-15)
    half = 255.5 * 0.6
    np.testing.assert_allclose(g.detector_origin, [half, SDD - SID, half], atol=1e-12)
    assert g.size == (512, 512) and g.pixel_spacing == (0.6, 0.6)
    assert g.sdd_mm == pytest.approx(SDD, abs=1e-12)
    # Magnification: SDD over the source distance along the beam, whatever the lateral offset.
    assert g.magnification(np.zeros(3)) == pytest.approx(SDD / SID, abs=1e-12)
    assert g.magnification(np.array([40.0, 100.0, -30.0])) == pytest.approx(SDD / (SID + 100.0), abs=1e-12)


def test_lat_preset_is_exactly_as_specified():
    g = preset_geometry("LAT")
    np.testing.assert_allclose(g.source, [SID, 0.0, 0.0], atol=1e-12)  # patient's right
    np.testing.assert_allclose(g.center_ras, [-(SDD - SID), 0.0, 0.0], atol=1e-12)  # left
    np.testing.assert_allclose(g.detector_u, [0.0, -1.0, 0.0], atol=1e-15)  # posterior
    np.testing.assert_allclose(g.detector_v, [0.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(g.detector_normal, [-1.0, 0.0, 0.0], atol=1e-15)


def test_isocentre_projects_to_principal_point_and_detector_centre():
    g = oblique()
    centre = [(300 - 1) / 2, (200 - 1) / 2]
    np.testing.assert_allclose(g.project([5.0, -20.0, 40.0]), centre, atol=1e-9)
    np.testing.assert_allclose(g.principal_point, centre, atol=1e-9)
    assert g.sdd_mm == pytest.approx(1100.0, abs=1e-9)
    assert np.linalg.norm(g.source - [5.0, -20.0, 40.0]) == pytest.approx(700.0, abs=1e-9)


@pytest.mark.parametrize(
    "name, offset, expected_du_dv",
    [
        # AP: u = -x, v = -z; depth along +y. expected (along u, along v) offsets in mm at depth.
        ("AP", (10.0, 0.0, 20.0), (-10.0, -20.0)),
        ("AP", (-7.0, 50.0, -3.0), (7.0, 3.0)),
        # LAT: u = -y, v = -z; depth along -x.
        ("LAT", (0.0, -30.0, 15.0), (30.0, -15.0)),
        ("LAT", (-40.0, 12.0, 8.0), (-12.0, -8.0)),
    ],
)
def test_bead_projects_by_similar_triangles(name, offset, expected_du_dv):
    iso = np.array([3.0, -4.0, 100.0])
    g = preset_geometry(name, isocenter_ras=iso, size=(401, 301), pixel_spacing=(0.5, 0.25))
    depth = SID + float(np.asarray(offset) @ g.detector_normal)  # from the source, mm
    magnification = SDD / depth
    expected = np.array([200.0, 150.0]) + np.array(expected_du_dv) * magnification / np.array([0.5, 0.25])
    np.testing.assert_allclose(g.project(iso + offset), expected, atol=1e-6)


def test_secondary_tilts_about_u_detector_toward_feet():
    s = 30.0
    c, si = math.cos(math.radians(s)), math.sin(math.radians(s))
    g = c_arm_geometry(0.0, s)
    np.testing.assert_allclose(g.source, SID * np.array([0.0, -c, si]), atol=1e-12)  # source toward head
    np.testing.assert_allclose(g.center_ras, (SDD - SID) * np.array([0.0, c, -si]), atol=1e-12)  # detector toward feet
    np.testing.assert_allclose(g.detector_u, [-1.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(g.detector_v, [0.0, -si, -c], atol=1e-15)


@pytest.mark.parametrize("primary, secondary", [(90.0, 25.0), (-135.0, -40.0), (17.0, 60.0)])
def test_primary_rotates_the_tilted_arm_about_superior_axis(primary, secondary):
    """c_arm(p, s) is c_arm(0, s) rotated by Rz(p): the secondary is applied about the rotated u."""
    tilted, full = c_arm_geometry(0.0, secondary), c_arm_geometry(primary, secondary)
    rotation = rz(primary)
    for name in ("source", "detector_origin", "detector_u", "detector_v"):
        np.testing.assert_allclose(getattr(full, name), rotation @ getattr(tilted, name), atol=1e-9, err_msg=name)
    # Latitude: the detector sits at elevation -secondary (toward the feet for secondary > 0).
    elevation = math.degrees(math.asin(full.center_ras[2] / (SDD - SID)))
    assert elevation == pytest.approx(-secondary, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sid_mm": 1020.0}, "need 0 < sid_mm < sdd_mm"),
        ({"sdd_mm": -5.0}, "need 0 < sid_mm < sdd_mm"),
        ({"primary_deg": float("inf")}, "primary_deg must be a finite number"),
        ({"isocenter_ras": (0.0, 0.0)}, "isocenter_ras must be 3 numbers"),
        ({"size": (0, 10)}, "size must be >= 1 pixel"),
    ],
)
def test_c_arm_rejects_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        c_arm_geometry(**kwargs)


def test_unknown_preset_lists_accepted_names():
    with pytest.raises(InputError, match="unknown geometry preset 'PA', expected one of AP, LAT"):
        preset_geometry("PA")


# ---------------------------------------------------------------------- visibility and resampling
def test_sees_inside_front_and_margin():
    g = preset_geometry("AP", size=(100, 100), pixel_spacing=(1.0, 1.0))
    # Edge of the image at the isocentre plane: 50 px * 1 mm / magnification.
    edge_mm = 50.0 * SID / SDD
    points = np.array([
        [0.0, 0.0, 0.0],  # isocentre
        [-(edge_mm - 1.0), 0.0, 0.0],  # just inside (columns grow toward -x)
        [-(edge_mm + 1.0), 0.0, 0.0],  # just outside
        [0.0, -SID - 100.0, 0.0],  # behind the source: projects to the centre, mirrored
        [0.0, SDD - SID + 10.0, 0.0],  # behind the detector
    ])
    np.testing.assert_array_equal(g.sees(points), [True, True, False, False, False])
    np.testing.assert_array_equal(g.sees(points[:3], margin_px=5.0), [True, False, False])
    assert g.sees(points.reshape(5, 1, 3)).shape == (5, 1)


@pytest.mark.parametrize(
    "size, factor, new_size", [((512, 400), 2.0, (256, 200)), ((511, 401), 2.0, (256, 201)), ((7, 5), 100.0, (1, 1))]
)
def test_scaled_keeps_the_detector_area(size, factor, new_size):
    g = c_arm_geometry(20.0, 5.0, size=size, pixel_spacing=(0.3, 0.4))
    s = g.scaled(factor)
    assert s.size == new_size
    f = np.array(size) / np.array(new_size)  # old pixels per new pixel
    np.testing.assert_allclose(s.pixel_spacing, np.array([0.3, 0.4]) * f, rtol=1e-12)
    # Same outer edges (pixel coordinates -1/2 and n - 1/2), same centre and source.
    for corner_old, corner_new in (((-0.5, -0.5), (-0.5, -0.5)), (np.array(size) - 0.5, np.array(new_size) - 0.5)):
        np.testing.assert_allclose(s.pixel_to_ras(*corner_new), g.pixel_to_ras(*corner_old), atol=1e-9)
    np.testing.assert_allclose(s.center_ras, g.center_ras, atol=1e-9)
    # New pixel (0, 0) is centred on the block of old pixels it averages.
    np.testing.assert_allclose(s.detector_origin, g.pixel_to_ras(*((f - 1) / 2)), atol=1e-9)
    # A point at old (c, r) is at new ((c + 1/2)/f - 1/2, (r + 1/2)/f - 1/2).
    point = np.array([12.0, -3.0, 25.0])
    np.testing.assert_allclose(s.project(point), (g.project(point) + 0.5) / f - 0.5, atol=1e-9)


def test_scaled_by_a_divisor_multiplies_spacing_and_halves_coordinates():
    g = preset_geometry("LAT", size=(512, 512))
    s = g.scaled(2)
    assert s.size == (256, 256) and s.pixel_spacing == pytest.approx((1.2, 1.2))
    np.testing.assert_allclose(s.project([0.0, 0.0, 0.0]), [127.5, 127.5], atol=1e-9)
    np.testing.assert_allclose(s.principal_point, g.principal_point / 2 - 0.25, atol=1e-9)


def test_resized_and_bad_factor():
    g = oblique()
    r = g.resized(150, 50)
    assert r.size == (150, 50) and r.pixel_spacing == pytest.approx((0.8, 2.0))
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(InputError, match="scale factor must be a finite number > 0"):
            g.scaled(bad)
    with pytest.raises(InputError, match="size must be >= 1 pixel"):
        g.resized(0, 10)


# ---------------------------------------------------------------------- DICOM
pydicom = pytest.importorskip("pydicom")


def write_dicom(path, **tags):
    """A minimal DX (or other modality) file written by pydicom, without pixel data."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    defaults = {"Modality": "DX", "Rows": 300, "Columns": 200, "ImagerPixelSpacing": [0.2, 0.15]}
    for keyword, value in {**defaults, **tags}.items():
        if value is not None:  # None leaves the tag out
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_c_arm_tags(tmp_path):
    path = write_dicom(
        tmp_path / "lat.dcm", DistanceSourceToDetector=1100.0, DistanceSourceToPatient=700.0,
        PositionerType="CARM", PositionerPrimaryAngle=90.0, PositionerSecondaryAngle=0.0,
        PatientOrientation=["P", "F"],
    )
    g = geometry_from_dicom(path, isocenter_ras=(1.0, 2.0, 3.0))
    # ImagerPixelSpacing is (row spacing, column spacing) = (dv, du).
    expected = c_arm_geometry(90.0, 0.0, 1100.0, 700.0, (1.0, 2.0, 3.0), size=(200, 300), pixel_spacing=(0.15, 0.2))
    assert_same_geometry(g, expected)
    assert g.source[0] > 0  # DICOM +90 (LAO): detector on the left, source on the right


def test_dicom_secondary_positive_is_cranial(tmp_path):
    path = write_dicom(tmp_path / "cra.dcm", PositionerPrimaryAngle=0.0, PositionerSecondaryAngle=20.0)
    g = geometry_from_dicom(path)
    assert_same_geometry(g, c_arm_geometry(0.0, -20.0, size=(200, 300), pixel_spacing=(0.15, 0.2)))
    assert g.center_ras[2] > 0  # detector toward the head


def test_dicom_defaults_view_position_and_orientation(tmp_path):
    g = geometry_from_dicom(pydicom.dcmread(write_dicom(tmp_path / "plain.dcm")))
    assert_same_geometry(g, c_arm_geometry(size=(200, 300), pixel_spacing=(0.15, 0.2)))
    # SDD given, SOD absent: the default magnification is kept.
    g = geometry_from_dicom(write_dicom(tmp_path / "sdd.dcm", DistanceSourceToDetector=510.0))
    assert np.linalg.norm(g.source) == pytest.approx(510.0 * SID / SDD)
    # ViewPosition LL without positioner angles -> primary +90; a flipped PatientOrientation flips u.
    g = geometry_from_dicom(write_dicom(tmp_path / "ll.dcm", ViewPosition="LL", PatientOrientation=["A", "F"]))
    np.testing.assert_allclose(g.source, [SID, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(g.detector_u, [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(g.detector_v, [0.0, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(g.center_ras, [-(SDD - SID), 0.0, 0.0], atol=1e-9)  # still centred


@pytest.mark.parametrize(
    "tags, message",
    [
        ({"Modality": "CT"}, "modality is 'CT', expected a projection X-ray"),
        ({"ImagerPixelSpacing": None}, "ImagerPixelSpacing (0018,1164) missing"),
        ({"DistanceSourceToDetector": 500.0, "DistanceSourceToPatient": 600.0}, "need 0 < sid_mm < sdd_mm"),
    ],
)
def test_dicom_errors(tmp_path, tags, message):
    path = write_dicom(tmp_path / "bad.dcm", **tags)
    with pytest.raises(InputError) as info:
        geometry_from_dicom(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_dicom_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="DICOM file not found"):
        geometry_from_dicom(tmp_path / "absent.dcm")
    text = tmp_path / "text.dcm"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable DICOM file"):
        geometry_from_dicom(text)


def test_dicom_without_pydicom_is_a_clear_input_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(InputError, match="needs pydicom: pip install pydicom"):
        geometry_from_dicom(tmp_path / "x.dcm")


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def spinereg(monkeypatch, capsys):
    """Run ``spinereg geometry ...`` in-process; returns (exit code, stderr).

    Only the geometry subcommand is registered, so this suite does not depend on the others.
    """
    monkeypatch.setattr(cli, "COMMANDS", {"geometry": "geometry"})

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(["geometry", *argv])
        return code, capsys.readouterr().err

    return run


def test_cli_writes_preset_and_refuses_to_overwrite(tmp_path, spinereg):
    out = tmp_path / "lat.json"
    code, err = spinereg("--preset", "lat", "--out", str(out))
    assert code == 0 and "wrote" in err
    assert_same_geometry(load_geometry(out), preset_geometry("LAT"), atol=0)
    before = out.read_bytes()
    code, err = spinereg("--preset", "AP", "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("spinereg: error: output file exists") and "--overwrite" in err
    assert out.read_bytes() == before
    code, _ = spinereg("--preset", "AP", "--out", str(out), "--overwrite")
    assert code == 0
    assert_same_geometry(load_geometry(out), preset_geometry("AP"), atol=0)


def test_cli_angles_and_options(tmp_path, spinereg):
    out = tmp_path / "oblique.json"
    code, _ = spinereg(
        "--primary", "30", "--secondary", "-12", "--sdd", "1100", "--sid", "700", "--size", "300", "200",
        "--spacing", "0.4", "0.5", "--isocenter", "5", "-20", "40", "--out", str(out),
    )
    assert code == 0
    assert_same_geometry(load_geometry(out), oblique(), atol=0)


def test_cli_from_dicom(tmp_path, spinereg):
    dicom = write_dicom(tmp_path / "x.dcm", PositionerPrimaryAngle=90.0)
    out = tmp_path / "x.json"
    assert spinereg("--from-dicom", str(dicom), "--out", str(out))[0] == 0
    assert_same_geometry(load_geometry(out), geometry_from_dicom(dicom))
    code, err = spinereg("--from-dicom", str(dicom), "--sdd", "900", "--out", str(tmp_path / "y.json"))
    assert code == 2 and "--sdd cannot be combined with --from-dicom" in err
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "PA"], "unknown geometry preset 'PA', expected one of AP, LAT"),
        (["--primary", "0", "--sid", "2000"], "need 0 < sid_mm < sdd_mm"),
        (["--preset", "AP", "--spacing", "0", "1"], "pixel_spacing must be > 0 mm"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, spinereg, argv, message):
    out = tmp_path / "g.json"
    code, err = spinereg(*argv, "--out", str(out))
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cropped_keeps_pixels_in_place():
    geometry = c_arm_geometry(primary_deg=30, size=(64, 48), pixel_spacing=(0.5, 0.7))
    crop = geometry.cropped(10, 5, 20, 12)
    assert crop.size == (20, 12)
    np.testing.assert_allclose(crop.pixel_to_ras(3, 4), geometry.pixel_to_ras(13, 9), atol=1e-9)
    point = geometry.pixel_to_ras(17.5, 11.25) + 0.3 * (geometry.source - geometry.pixel_to_ras(17.5, 11.25))
    np.testing.assert_allclose(crop.project(point), geometry.project(point) - [10, 5], atol=1e-9)
