"""The module's patient-specific pose network on a real vtkMRMLScene (slicer-core): the CT and its
segmentation written for ``spinereg train``, the command line, a tiny training run end to end
whose model Register can take, Cancel keeping the checkpoint and the next start resuming it, and
bad input refused in one line with nothing written."""

from __future__ import annotations

import csv
import time

import pytest

slicer = pytest.importorskip("slicer")

import SpineRegistrationModuleLib as logic  # noqa: E402
from SpineRegistrationModuleLib.boxes import detect_arguments  # noqa: E402
from SpineRegistrationLib.errors import InputError  # noqa: E402
from SpineRegistrationLib.io import read_labelmap, read_volume  # noqa: E402
from SpineRegistrationLib.learned.checkpoint import load_model  # noqa: E402
from SpineRegistrationLib.learned.models import shipped_model  # noqa: E402

pytestmark = pytest.mark.skipif(shipped_model() is None, reason="training starts from the shipped pose network")

#: Small steps on L2 (two samples each: about a second), a checkpoint every step.
TINY = ("--vertebra", "L2", "--batch-size", "2", "--workers", "0", "--log-every", "1", "--validate-every", "1000",
        "--checkpoint-every", "1")


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def nodes(scene, phantom_dir):
    return logic.load_ct(scene, phantom_dir / "ct.nii.gz"), logic.load_segmentation(scene, phantom_dir / "seg.nii.gz")


def _inputs(nodes, folder, **changes):
    ct, seg = nodes
    return logic.PatientModelInputs(ct, seg, folder, **({"steps": 2, "device": "cpu", "options": TINY} | changes))


def _steps(run_folder):
    with open(run_folder / "log.csv") as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


def test_the_inputs_are_written_and_the_command_trains_from_the_shipped_model(nodes, phantom_dir, tmp_path):
    inputs = _inputs(nodes, tmp_path / "model", steps=15000, device="auto", options=())
    paths = logic.write_training_inputs(inputs)
    assert read_volume(paths["ct"]).array.shape == read_volume(phantom_dir / "ct.nii.gz").array.shape
    assert list(read_labelmap(paths["seg"]).labels) == ["L1", "L2", "L3"]
    args = logic.train_arguments(paths, inputs.steps, inputs.device, resume=False)
    assert args[0] == "train" and args[args.index("--init-model") + 1] == "shipped"
    assert args[args.index("--steps") + 1] == "15000" and args[args.index("--out") + 1] == str(tmp_path / "model" / "run")
    assert "--lr" not in args  # spinereg train's patient-specific default (5e-4), not set twice
    assert "--resume" not in args and "--resume" in logic.train_arguments(paths, 1, "cpu", resume=True)
    assert not logic.can_resume(tmp_path / "model")


def test_a_training_run_gives_a_model_register_can_take(nodes, tmp_path):
    events = []
    model = logic.PatientModelRun(_inputs(nodes, tmp_path / "model")).run(callback=events.append, timeout_s=300)
    assert model == logic.model_paths(tmp_path / "model")["model"] and model.is_file()
    assert load_model(model).config.template_context_mm == 40.0  # the patient-specific defaults of spinereg train
    assert any(event.fraction is not None and event.message == "train" for event in events), "no progress"


def test_cancel_keeps_the_checkpoint_and_the_next_start_resumes(nodes, tmp_path):
    folder = tmp_path / "model"
    run = logic.PatientModelRun(_inputs(nodes, folder, steps=400)).start()
    deadline = time.monotonic() + 120
    while not logic.can_resume(folder) and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.2)
    assert logic.can_resume(folder), "no checkpoint within 2 minutes"
    run.cancel()
    assert not run.running
    with pytest.raises(InputError, match="cancelled"):
        run.finish()
    done = _steps(folder / "run")
    assert done and done[-1] < 400 and logic.can_resume(folder)

    again = logic.PatientModelRun(_inputs(nodes, folder, steps=400))
    again.start()
    assert again.resumed and "--resume" in again.args
    deadline = time.monotonic() + 120
    while len(_steps(folder / "run")) <= len(done) and time.monotonic() < deadline:
        again.poll()
        time.sleep(0.2)
    again.cancel()
    after = _steps(folder / "run")
    # It went on from the checkpoint (the step it stopped at, or the one after), not from step 1.
    assert after[: len(done)] == done and len(after) > len(done) and after[len(done)] in (done[-1], done[-1] + 1)


@pytest.mark.parametrize("change, message", [({"steps": 0}, "steps must be a whole number"),
                                             ({"ct": None}, "no CT selected")])
def test_bad_input_is_one_line_and_writes_nothing(nodes, tmp_path, change, message):
    ct, seg = nodes
    inputs = logic.PatientModelInputs(None if "ct" in change else ct, seg, tmp_path / "model",
                                      steps=change.get("steps", 2))
    with pytest.raises(InputError, match=message) as error:
        logic.PatientModelRun(inputs).start()
    assert "\n" not in str(error.value) and not (tmp_path / "model").exists()


def test_each_ct_and_segmentation_gets_its_own_folder(scene, nodes, phantom_dir, tmp_path):
    import numpy as np

    from SpineRegistrationLib.io import write_labelmap
    from SpineRegistrationLib.io.labelmaps import Labelmap

    ct, seg = nodes
    first = logic.patient_model_folder(tmp_path, ct, seg)
    assert first == logic.patient_model_folder(tmp_path, ct, seg) and first.name.startswith(ct.GetName())
    labelmap = read_labelmap(phantom_dir / "seg.nii.gz")
    fewer = np.where(labelmap.volume.array == labelmap.labels["L3"], 0, labelmap.volume.array)
    write_labelmap(Labelmap(labelmap.volume.with_array(fewer.astype(labelmap.volume.array.dtype)), labelmap.scheme),
                   tmp_path / "fewer.nii.gz")
    other = logic.load_segmentation(scene, tmp_path / "fewer.nii.gz")
    assert logic.patient_model_folder(tmp_path, ct, other) != first


def test_a_folder_trained_on_another_ct_is_not_resumed(nodes, tmp_path):
    folder = tmp_path / "model"
    paths = logic.model_paths(folder)
    paths["run"].mkdir(parents=True)
    (paths["run"] / "checkpoint.pt").write_bytes(b"another CT's training")
    paths["source"].parent.mkdir(parents=True)
    paths["source"].write_text("0" * 64 + "\n")
    before = sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file())
    with pytest.raises(InputError, match="another CT or segmentation") as error:
        logic.PatientModelRun(_inputs(nodes, folder)).start()
    assert "\n" not in str(error.value)
    assert sorted((p.relative_to(folder), p.read_bytes()) for p in folder.rglob("*") if p.is_file()) == before


def test_the_detector_trains_on_this_ct_from_scratch_and_detect_takes_its_model(nodes, tmp_path):
    """Train detector on this CT: ``spinereg train-detect`` (a new network: the shipped one knows phantoms)
    with the CLI's patient-specific steps unless given; its model goes to Detect as ``--model``."""
    from SpineRegistrationLib.cli.train_detect import PATIENT_STEPS
    from SpineRegistrationLib.learned.detector import load_detector

    assert logic.DETECTOR.steps == PATIENT_STEPS and logic.DETECTOR.folders != logic.POSE.folders
    inputs = _inputs(nodes, tmp_path / "detector", kind=logic.DETECTOR,
                     options=("--draws-per-ct", "16", "--validate-every", "2", "--log-every", "1"))
    args = logic.train_arguments(logic.write_training_inputs(inputs), 2, "cpu", resume=False, kind=logic.DETECTOR)
    assert args[0] == "train-detect" and "--init-model" not in args
    model = logic.PatientModelRun(inputs).run(timeout_s=300)
    assert _steps(model.parent) == [1, 2] and load_detector(model).config.mm_per_px == 2.0
    detect = detect_arguments({}, [], tmp_path / "boxes.json", "cpu", model)
    assert detect[detect.index("--model") + 1] == str(model)
    assert "--model" not in detect_arguments({}, [], tmp_path / "boxes.json", "cpu")
