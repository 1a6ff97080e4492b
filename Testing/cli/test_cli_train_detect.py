"""``spinereg train-detect``: its defaults follow the kind of run, and a patient-specific run trains end to end."""

from __future__ import annotations

import csv
import json

from SpineRegistrationLib.learned.detector import load_detector


def test_steps_and_bank_defaults_follow_the_kind_of_run(phantom_dir):
    """Not given: one --ct (patient-specific) takes the measured recipe's 1 500 draws and 8 000 steps, phantoms
    200 and 2 500; given, they stay."""
    from SpineRegistrationLib.cli import build_parser
    from SpineRegistrationLib.cli.train_detect import run_defaults

    pair = ("--ct", str(phantom_dir / "ct.nii.gz"), "--seg", str(phantom_dir / "seg.nii.gz"))
    cases = {pair: (8000, 1500), (): (2500, 200), pair + pair: (2500, 200),
             pair + ("--steps", "7", "--draws-per-ct", "3"): (7, 3)}
    for given, expected in cases.items():
        args = build_parser().parse_args(["train-detect", *given, "--out", "run"])
        run_defaults(args)
        assert (args.steps, args.draws_per_ct) == expected, given


def test_a_patient_specific_run_writes_a_detector_its_log_and_config(phantom_dir, tmp_path, spinereg):
    out = tmp_path / "det"
    result = spinereg("train-detect", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz",
                      "--draws-per-ct", 16, "--steps", 2, "--log-every", 1, "--validate-every", 2, "--out", out)
    assert result.code == 0, result.err
    assert json.loads((out / "config.json").read_text())["synthesis"]["draws_per_ct"] == 16
    with open(out / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[-1]["val_recall"] != ""
    assert load_detector(out / "model.pt").config.mm_per_px == 2.0
