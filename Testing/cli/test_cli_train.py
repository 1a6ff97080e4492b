"""``spinereg train`` end to end on the session phantom (a few tiny steps), resume, fine-tuning,
the model it writes used by ``spinereg register --model``, and its bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from SpineRegistrationLib.learned.checkpoint import load_model

#: A tiny network on the session phantom: each step well under a second.
TINY = ("--size-px", "32", "--mm-per-px", "5", "--batch-size", "2", "--workers", "0", "--log-every", "1",
        "--validate-every", "2", "--checkpoint-every", "1")


@pytest.fixture(scope="module")
def trained(phantom_dir, tmp_path_factory):
    """A 2-step run on the phantom's L2 (exact resume after Ctrl-C: Testing/unit/test_learned.py)."""
    from SpineRegistrationLib.cli import main

    out = tmp_path_factory.mktemp("train") / "run"
    data = ("--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz", "--vertebra", "l2")
    code = main([str(a) for a in ("train", *data, *TINY, "--steps", "2", "--out", out)])
    return out, code


def test_train_writes_model_checkpoint_and_log(trained):
    out, code = trained
    assert code == 0
    with open(out / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert rows[1]["val_point_mm"] != "" and float(rows[-1]["point_mm"]) > 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 2 and payload["train_config"]["model"]["size_px"] == 32
    assert load_model(out / "model.pt").config.size_px == 32
    assert json.loads((out / "config.json").read_text())["steps"] == 2


def test_fine_tuning_starts_from_the_given_weights(trained, phantom_dir, tmp_path, spinereg):
    out, _ = trained
    result = spinereg("train", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz",
                      *TINY, "--steps", "1", "--lr", "1e-12", "--init-model", out / "model.pt", "--out", tmp_path / "ft")
    assert result.code == 0, result.err
    before, after = load_model(out / "model.pt").state_dict(), load_model(tmp_path / "ft" / "model.pt").state_dict()
    weights = [name for name in before if name.endswith("weight")]
    assert all(torch.allclose(before[n], after[n], atol=1e-6) for n in weights)


def test_fine_tuning_can_give_the_template_context_and_later_runs_keep_it(trained, phantom_dir, tmp_path, spinereg):
    out, _ = trained
    data = ("--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz", "--vertebra", "l2", *TINY,
            "--steps", "1")
    result = spinereg("train", *data, "--init-model", out / "model.pt", "--template-context-mm", "20",
                      "--translation-mm", "22", "--out", tmp_path / "context")
    assert result.code == 0, result.err
    assert load_model(tmp_path / "context" / "model.pt").config.template_context_mm == 20.0
    config = json.loads((tmp_path / "context" / "config.json").read_text())
    assert config["synthesis"]["acquisition"]["trans_mm"] == 22.0
    result = spinereg("train", *data, "--init-model", tmp_path / "context" / "model.pt", "--out", tmp_path / "again")
    assert result.code == 0, result.err
    assert load_model(tmp_path / "again" / "model.pt").config.template_context_mm == 20.0


def test_register_uses_a_trained_model(trained, phantom_dir, tmp_path, spinereg):
    out, _ = trained
    views = []
    for view in ("AP", "LAT"):
        views += ["--xray", phantom_dir / f"{view}.png", "--geometry", phantom_dir / f"{view}.json"]
    result = spinereg("register", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz",
                      "--vertebra", "L2", *views, "--method", "learned", "--model", out / "model.pt",
                      "--out", tmp_path / "reg")
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "reg" / "result.json").read_text())
    assert data["method"] == "learned" and data["model"].endswith("model.pt")
    assert data["vertebrae"]["L2"]["stages"][0]["stage"] == "network"


def _bad(phantom_dir, tmp_path, trained_out):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02not a checkpoint")
    ct, seg = phantom_dir / "ct.nii.gz", phantom_dir / "seg.nii.gz"
    return {
        "ct without seg": (["--ct", ct], "give one labelmap per CT"),
        "missing data folder": (["--data", tmp_path / "nowhere"], "does not exist"),
        "empty data folder": (["--data", tmp_path], "holds no <case>_ct"),
        "unknown vertebra": (["--ct", ct, "--seg", seg, "--vertebra", "T4"], "T4 is not in the segmentation"),
        "corrupt init model": (["--ct", ct, "--seg", seg, "--init-model", corrupt], "not a readable spinereg model"),
        "other input size": (["--ct", ct, "--seg", seg, "--init-model", trained_out / "model.pt", "--size-px", "64"],
                             "trained for 32-pixel patches"),
        "resume nothing": (["--ct", ct, "--seg", seg, "--resume"], "nothing to resume"),
    }


@pytest.mark.parametrize("steps, message", [("3", "resume it with --steps 2"), ("2", "already finished its 2 steps")])
def test_resume_keeps_to_the_run_it_continues(steps, message, trained, phantom_dir, spinereg, snapshot,
                                              assert_one_line_error):
    out, _ = trained
    before = snapshot(out)
    result = spinereg("train", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz", *TINY,
                      "--steps", steps, "--out", out, "--resume")
    assert_one_line_error(result)
    assert message in result.err and snapshot(out) == before


@pytest.mark.parametrize("case", ["ct without seg", "missing data folder", "empty data folder", "unknown vertebra",
                                  "corrupt init model", "other input size", "resume nothing"])
def test_bad_training_input_is_one_line_and_touches_nothing(case, trained, phantom_dir, tmp_path, spinereg,
                                                            snapshot, assert_one_line_error):
    argv, message = _bad(phantom_dir, tmp_path, trained[0])[case]
    before = snapshot(tmp_path)
    result = spinereg("train", *TINY, *argv, "--steps", "1", "--out", tmp_path / "run")
    assert_one_line_error(result)
    assert message in result.err
    assert snapshot(tmp_path) == before


def test_a_used_training_folder_is_not_overwritten(trained, phantom_dir, spinereg, snapshot, assert_one_line_error):
    out, _ = trained
    before = snapshot(out)
    result = spinereg("train", "--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz", *TINY,
                      "--steps", "1", "--out", out)
    assert_one_line_error(result)
    assert "not empty" in result.err and snapshot(out) == before


@pytest.mark.slow
def test_two_processes_train_together_under_torchrun(phantom_dir, tmp_path):
    """DistributedDataParallel over Gloo on the CPU: what several GPUs do with NCCL."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "SpineRegistrationLib",
               "train", "--ct", str(phantom_dir / "ct.nii.gz"), "--seg", str(phantom_dir / "seg.nii.gz"), *TINY,
               "--steps", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "log.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert load_model(out / "model.pt").config.size_px == 32


def test_the_step_and_learning_rate_defaults_follow_the_kind_of_run(phantom_dir):
    """Not given: a patient-specific run (one --ct) takes the measured recipe's 20 000 steps at lr 5e-4,
    general training 4 500 at 1e-3; given, they stay."""
    from SpineRegistrationLib.cli import build_parser
    from SpineRegistrationLib.cli.train import optimiser_defaults

    pair = ("--ct", str(phantom_dir / "ct.nii.gz"), "--seg", str(phantom_dir / "seg.nii.gz"))
    cases = {(): (20000, 5e-4), pair: (4500, 1e-3), ("--steps", "7", "--lr", "0.01"): (7, 0.01)}
    for extra, expected in cases.items():
        args = build_parser().parse_args(["train", *pair, *extra, "--out", "run"])
        optimiser_defaults(args)
        assert (args.steps, args.lr) == expected, extra


def test_a_patient_specific_run_defaults_to_the_context_template(trained, phantom_dir, tmp_path, spinereg):
    """One --ct: the template with 40 mm of context, poses to ±22 mm and lr 5e-4 (what met the 3 mm target
    on the real CT); two CTs (general training): the vertebra alone, ±15 mm and lr 1e-3, as the shipped model."""
    out, code = trained
    assert code == 0
    assert load_model(out / "model.pt").config.template_context_mm == 40.0
    assert json.loads((out / "config.json").read_text())["synthesis"]["acquisition"]["trans_mm"] == 22.0
    assert json.loads((out / "config.json").read_text())["lr"] == 5e-4
    pair = ("--ct", phantom_dir / "ct.nii.gz", "--seg", phantom_dir / "seg.nii.gz")
    result = spinereg("train", *pair, *pair, "--vertebra", "l2", *TINY, "--steps", "1", "--out", tmp_path / "general")
    assert result.code == 0, result.err
    assert load_model(tmp_path / "general" / "model.pt").config.template_context_mm == 0.0
    assert json.loads((tmp_path / "general" / "config.json").read_text())["synthesis"]["acquisition"]["trans_mm"] == 15.0
    assert json.loads((tmp_path / "general" / "config.json").read_text())["lr"] == 1e-3
    # From a model with context, a general run keeps it.
    result = spinereg("train", *pair, *pair, "--vertebra", "l2", *TINY, "--steps", "1", "--init-model",
                      out / "model.pt", "--out", tmp_path / "general_ft")
    assert result.code == 0, result.err
    assert load_model(tmp_path / "general_ft" / "model.pt").config.template_context_mm == 40.0
