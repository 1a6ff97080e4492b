"""``spinereg register`` interrupted and resumed: the vertebrae an interrupted run finished are kept
in a journal beside the output folder, the same command with ``--resume`` takes them instead of
registering them again, and a journal is never used for other inputs nor silently thrown away.

The runs use ``--method learned`` (the shipped network alone: under a second a vertebra) on the
session phantom's L1-L3; the interruption is a Ctrl-C (KeyboardInterrupt) raised when the second
vertebra starts.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import SpineRegistrationLib.learned.inference as inference
from SpineRegistrationLib.learned.models import shipped_model
from SpineRegistrationLib.io.journal import journal_path

pytestmark = pytest.mark.skipif(shipped_model() is None, reason="no shipped pose network for --method learned")


def _argv(inputs, out, *extra):
    argv = ["register", "--ct", inputs / "ct.nii.gz", "--seg", inputs / "seg.nii.gz", "--method", "learned"]
    for view in ("AP", "LAT"):
        argv += ["--xray", inputs / f"{view}.png", "--geometry", inputs / f"{view}.json"]
    return [*argv, "--out", out, *extra]


@pytest.fixture
def inputs(phantom_dir, tmp_path):
    """A copy of the session phantom's files (some tests change one)."""
    copy = tmp_path / "inputs"
    shutil.copytree(phantom_dir, copy)
    return copy


@pytest.fixture
def registered_names(monkeypatch):
    """The vertebrae the network registers, in order; Ctrl-C when the ``interrupt_at``-th one starts
    (set ``registered_names.interrupt_at``; 0: never)."""
    real = inference.register_vertebra_learned

    class Names(list):
        interrupt_at = 0

    names = Names()

    def counting(name, *args, **kwargs):
        names.append(name)
        if len(names) == names.interrupt_at:
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(inference, "register_vertebra_learned", counting)
    return names


@pytest.fixture
def interrupted(spinereg, inputs, tmp_path, registered_names):
    """A run of L1-L3 interrupted when L2 starts: (its CliResult, the output folder)."""
    out = tmp_path / "result"
    registered_names.interrupt_at = 2
    result = spinereg(*_argv(inputs, out))
    registered_names.clear()
    registered_names.interrupt_at = 0
    return result, out


def test_an_interrupted_run_keeps_what_it_finished(interrupted):
    result, out = interrupted
    assert result.code == 130 and "Traceback" not in result.err
    assert result.err_lines[-1].startswith("spinereg: interrupted with 1 vertebra(e) done")
    assert "--resume" in result.err_lines[-1]
    assert not out.exists(), "no output folder from an interrupted run"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["inputs", journal_path(out, "register").name])
    journal = json.loads(journal_path(out, "register").read_text())
    assert journal["format"] == "spinereg-journal" and journal["command"] == "register"
    assert list(journal["entries"]) == ["L1"]


def test_resume_takes_the_finished_vertebrae_and_registers_the_rest(spinereg, inputs, interrupted, registered_names):
    _, out = interrupted
    kept = json.loads(journal_path(out, "register").read_text())["entries"]["L1"]
    result = spinereg(*_argv(inputs, out, "--resume"))
    assert result.code == 0, result.err
    assert registered_names == ["L2", "L3"], "L1 came from the journal, not from a new registration"
    assert "resuming: 1 of 3 vertebra(e) done before" in result.err
    assert any(line.startswith("L1: similarity") and "from the interrupted run" in line for line in result.err_lines)
    document = json.loads((out / "result.json").read_text())
    assert list(document["vertebrae"]) == ["L1", "L2", "L3"]
    np.testing.assert_array_equal(document["vertebrae"]["L1"]["matrix_ras"], kept["matrix_ras"])
    assert sorted(p.name for p in out.iterdir()) == ["L1.h5", "L2.h5", "L3.h5", "drr_AP.nrrd", "drr_LAT.nrrd",
                                                     "result.json"]
    assert not journal_path(out, "register").exists(), "a complete run deletes its journal"


def test_a_fresh_run_does_not_throw_an_interrupted_one_away(spinereg, inputs, interrupted, assert_one_line_error,
                                                            snapshot, registered_names):
    _, out = interrupted
    before = snapshot(journal_path(out, "register"))
    result = spinereg(*_argv(inputs, out))
    assert_one_line_error(result)
    assert "--resume" in result.err and "--overwrite" in result.err
    assert registered_names == [] and not out.exists() and snapshot(journal_path(out, "register")) == before


def test_overwrite_starts_over(spinereg, inputs, interrupted, registered_names):
    _, out = interrupted
    result = spinereg(*_argv(inputs, out, "--overwrite"))
    assert result.code == 0, result.err
    assert registered_names == ["L1", "L2", "L3"] and not journal_path(out, "register").exists()


@pytest.mark.parametrize("change", ["geometry", "method"])
def test_resume_refuses_a_journal_of_other_inputs(spinereg, inputs, interrupted, assert_one_line_error, snapshot,
                                                  registered_names, change):
    _, out = interrupted
    argv = _argv(inputs, out, "--resume")
    if change == "geometry":  # the same path, other contents: the focal spot 1 mm away
        geometry = json.loads((inputs / "AP.json").read_text())
        geometry["source"][0] += 1.0
        (inputs / "AP.json").write_text(json.dumps(geometry))
    else:
        argv[argv.index("learned")] = "auto"
    before = snapshot(journal_path(out, "register"))
    result = spinereg(*argv)
    assert_one_line_error(result)
    assert "written for other inputs" in result.err
    assert registered_names == [] and not out.exists() and snapshot(journal_path(out, "register")) == before


def test_resume_refuses_a_corrupt_journal(spinereg, inputs, interrupted, assert_one_line_error, registered_names):
    _, out = interrupted
    journal_path(out, "register").write_text("{not json")
    result = spinereg(*_argv(inputs, out, "--resume"))
    assert_one_line_error(result)
    assert "cannot resume" in result.err and registered_names == [] and not out.exists()


def test_resume_without_a_journal_starts_afresh(spinereg, inputs, tmp_path, registered_names):
    out = tmp_path / "fresh"
    result = spinereg(*_argv(inputs, out, "--vertebra", "L2", "--resume"))
    assert result.code == 0, result.err
    assert "nothing to resume: starting afresh" in result.err and registered_names == ["L2"]
