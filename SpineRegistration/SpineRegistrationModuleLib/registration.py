"""From the user's chosen nodes to a finished ``spinereg register`` run.

:func:`check_inputs` turns the nodes into library objects (CT Volume in HU, Labelmap on the
CT grid, (rows, columns) X-ray arrays, XrayGeometry in world RAS mm) and validates them
with the library's one validator, :func:`SpineRegistrationLib.pipeline.inputs.load_case`;
only what is about MRML nodes (nothing selected, the CT's parent transform, which becomes
the initial pose, an X-ray with no geometry attached, of another size or under a transform)
is checked here. :func:`prepare_registration`
writes the checked inputs to a work folder and builds the command line;
:class:`RegistrationRun` runs it out of process (:mod:`.process`) and, only when it
succeeds, puts the result into the scene (:mod:`.results`). The work folder is named after
what it holds (:func:`..io.journal.fingerprint` of the written inputs and the settings): a
cancelled run keeps it when vertebrae were done, and Register on the same inputs goes on
from them (``spinereg register --resume``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from slicer.util import arrayFromVolume

from SpineRegistrationLib.core.labels import SCHEMES
from SpineRegistrationLib.core.volume import Volume
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap, write_labelmap, write_volume, write_xray
from SpineRegistrationLib.io.geometry_json import save_geometry
from SpineRegistrationLib.io.journal import fingerprint, journal_path
from SpineRegistrationLib.io.xray_boxes import write_xray_boxes
from SpineRegistrationLib.pipeline.inputs import RegisterConfig, load_case

from .nodes import pose_of, require_untransformed, vertebra_labelmap, volume_of
from .process import CliProcess, wait_or_cancel
from .results import apply_registration_result, read_registration_result
from .rois import roi_boxes, write_scene_rois
from .xrays import VIEWS, check_xray_size, geometry_of, xray_size


@dataclass
class RegistrationInputs:
    """What the user chose in the module.

    xrays: view name ("AP", "LAT") -> X-ray volume node with attached geometry.
    vertebrae: names to register; empty: every vertebra both views see.
    method, device: one of SpineRegistrationLib.methods.METHODS, DEVICES ("auto" device: the GPU when there is one).
    boxes: accepted vertebra boxes on the X-rays, view -> [XrayBox] (``--boxes``); empty: none.
    model: the pose network's model file for auto/learned (``--model``), e.g. a patient-specific
    one from ``spinereg train --ct``; None or "": the shipped model.
    """

    ct_node: object
    segmentation_node: object
    xrays: dict
    vertebrae: list = field(default_factory=list)
    method: str = "auto"
    device: str = "auto"
    boxes: dict = field(default_factory=dict)
    model: str | None = None


@dataclass
class CheckedInputs:
    """Inputs that passed :func:`check_inputs`: the library objects the CLI will get.

    vertebrae: names, cranial -> caudal; geometries, xray_arrays: by view; notes: the
    validator's one-line remarks (e.g. method ``auto`` falls back to ``intensity``);
    init: (4, 4) initial pose, world <- CT RAS (the CT's parent transform; identity without one);
    model: the user's pose-network file, checked (None: the shipped one, or no network needed).
    """

    ct: Volume
    labelmap: Labelmap
    vertebrae: list
    geometries: dict
    xray_arrays: dict
    notes: list = field(default_factory=list)
    init: np.ndarray = field(default_factory=lambda: np.eye(4))
    model: Path | None = None


def check_inputs(inputs: RegistrationInputs) -> CheckedInputs:
    """Validate the user's inputs; InputError (one line, naming what is wrong) otherwise.

    Here: CT, segmentation and both X-rays chosen; the CT under no transform or a rigid
    linear one (its pose, world <- CT RAS, becomes the initial pose ``init``), the
    segmentation under the same; each X-ray has a geometry attached that matches its size
    and no transform. Then the
    library's :func:`load_case` checks the rest (method, device, contrast, vertebra labels
    and names, the segmentation on the CT's grid, the scene's vertebra ROI boxes and the
    accepted X-ray boxes, every vertebra to register seen by both views where it starts);
    with no vertebra requested it takes those every view sees.
    """
    if inputs.ct_node is None:
        raise InputError("no CT selected")
    init = pose_of(inputs.ct_node, "CT")
    missing = [view for view in VIEWS if inputs.xrays.get(view) is None]
    if missing:
        raise InputError(f"no {' and '.join(missing)} X-ray selected")
    geometries, arrays = xray_inputs(inputs.xrays)
    labelmap = vertebra_labelmap(inputs.segmentation_node, inputs.ct_node)
    case = load_case(RegisterConfig(
        ct=volume_of(inputs.ct_node),
        seg=labelmap,
        xrays=[arrays[view] for view in VIEWS],
        geometries=[geometries[view] for view in VIEWS],
        vertebrae=list(inputs.vertebrae),
        init=init,
        method=inputs.method,
        device=inputs.device,
        views=list(VIEWS),
        roi=roi_boxes(inputs.ct_node.GetScene(), init) or None,
        boxes=inputs.boxes or None,
        model=inputs.model or None,
    ))
    return CheckedInputs(
        ct=case.ct,
        labelmap=case.labelmap,
        vertebrae=[name for name in case.labelmap.labels if name in case.vertebrae],  # cranial -> caudal
        geometries=dict(zip(case.views, case.geometries)),
        xray_arrays=dict(zip(case.views, case.xrays)),
        notes=list(case.notes),
        init=case.init,
        model=case.model_path if inputs.model else None,
    )


def xray_inputs(xrays: dict) -> tuple[dict, dict]:
    """(geometry by view, (rows, columns) float32 array by view) of the X-ray nodes ``xrays``
    (view -> node; views without a node are left out), in VIEWS order. InputError (one line)
    for an X-ray without geometry or of another size than its geometry says."""
    geometries, arrays = {}, {}
    for view in VIEWS:
        node = xrays.get(view)
        if node is None:
            continue
        geometry = geometry_of(node)
        if geometry is None:
            raise InputError(f"the {view} X-ray {node.GetName()!r} has no geometry: load its geometry file (JSON or DICOM)")
        require_untransformed(node, f"{view} X-ray")
        check_xray_size(node, geometry, f"the {view} X-ray")
        geometries[view] = geometry
        arrays[view] = np.array(arrayFromVolume(node)[0], dtype=np.float32)
    return geometries, arrays


def write_xray_inputs(xray_arrays: dict, geometries: dict, folder: str | os.PathLike) -> dict[str, Path]:
    """Write X-rays as the CLI reads them: <view>.nrrd (float32, values kept) and its
    geometry sidecar <view>.json (the file stem is the view's name in the CLI's outputs,
    e.g. drr_<view>.nrrd). Returns {view: image path, f"{view}_geometry": sidecar path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for view, array in xray_arrays.items():
        paths[view] = folder / f"{view}.nrrd"
        paths[f"{view}_geometry"] = folder / f"{view}.json"
        write_xray(array, paths[view])
        save_geometry(geometries[view], paths[f"{view}_geometry"])
    return paths


def xray_arguments(paths: dict, views) -> list[str]:
    """``--xray <view>.nrrd --geometry <view>.json`` per view, for files of :func:`write_xray_inputs`."""
    args = []
    for view in views:
        args += ["--xray", str(paths[view]), "--geometry", str(paths[f"{view}_geometry"])]
    return args


def as_verse(labelmap: Labelmap) -> Labelmap:
    """The same labelmap numbered VerSe's way (the CLI's auto-detection then cannot misread it)."""
    verse = SCHEMES["verse"]
    if labelmap.scheme.name == "verse":
        return labelmap
    array = np.zeros(labelmap.volume.array.shape, np.int16)
    for name, value in labelmap.labels.items():
        if name in verse.label_of:
            array[labelmap.volume.array == value] = verse.label_of[name]
    return Labelmap(labelmap.volume.with_array(array), verse)


def write_registration_inputs(checked: CheckedInputs, folder: str | os.PathLike) -> dict[str, Path]:
    """Write the checked inputs as the files ``spinereg register`` reads: ct.nii.gz,
    seg.nii.gz (VerSe numbering), <view>.nrrd (float32, values kept) and <view>.json, and
    init.json (``{"matrix_ras": 4x4}``, world <- CT RAS) when the initial pose is not the identity."""
    paths = write_ct_inputs(checked.ct, checked.labelmap, checked.init, folder)
    paths.update(write_xray_inputs({view: checked.xray_arrays[view] for view in VIEWS}, checked.geometries, folder))
    return paths


def write_ct_inputs(ct: Volume, labelmap: Labelmap, init: np.ndarray, folder: str | os.PathLike) -> dict[str, Path]:
    """The CT and its labels as ``--ct``/``--seg`` read them (ct.nii.gz, seg.nii.gz numbered VerSe's
    way) and init.json (``{"matrix_ras": 4x4}``, world <- CT RAS) when ``init`` is not the identity."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / "ct.nii.gz", "seg": folder / "seg.nii.gz"}
    write_volume(ct, paths["ct"])
    write_labelmap(as_verse(labelmap), paths["seg"])
    if not np.array_equal(init, np.eye(4)):
        paths["init"] = folder / "init.json"
        paths["init"].write_text(json.dumps({"matrix_ras": np.asarray(init).tolist()}))
    return paths


def register_arguments(paths: dict, vertebrae: list, method: str, device: str, out_dir, model=None) -> list[str]:
    """The ``spinereg register`` arguments (without the program name) for files from
    :func:`write_registration_inputs` (``--init`` when it wrote init.json, ``--roi`` with the
    scene's vertebra boxes, :func:`.rois.write_scene_rois`; ``--boxes`` with the accepted X-ray
    boxes, ``paths["boxes"]``; ``--model`` with the user's pose-network file). ``--device``
    always: the CLI's own default is the CPU, "auto" takes the GPU when there is one."""
    args = ["register", "--ct", str(paths["ct"]), "--seg", str(paths["seg"])]
    for name in vertebrae:
        args += ["--vertebra", name]
    args += xray_arguments(paths, VIEWS)
    if "init" in paths:
        args += ["--init", str(paths["init"])]
    if "roi" in paths:
        args += ["--roi", str(paths["roi"])]
    args += ["--method", method, "--device", device]
    if model is not None:
        args += ["--model", str(model)]
    if "boxes" in paths:
        args += ["--boxes", str(paths["boxes"])]
    args += ["--out", str(out_dir)]
    return args


#: The work folders of Register under the work folder's base (one per inputs and settings).
WORK_FOLDERS = "SpineRegistration"


def prepare_registration(inputs: RegistrationInputs, work_dir: str | os.PathLike | None = None
                         ) -> tuple[CheckedInputs, list[str], Path, Path]:
    """Check the inputs, write them to their work folder and build the command line.

    Returns (checked inputs, ``spinereg`` arguments, work folder, output folder). The work
    folder, under ``work_dir`` (or the system's temporary folder) / :data:`WORK_FOLDERS`, is
    named after the fingerprint of the written inputs and the settings; when a cancelled run left
    it with vertebrae done (its journal), the run goes on from them (the arguments end in ``--resume``),
    otherwise it starts afresh there. The caller owns it (:class:`RegistrationRun` removes it, or
    keeps it on a cancel that leaves a journal). Raises InputError before writing anything when
    the inputs are bad.
    """
    checked = check_inputs(inputs)
    base = Path(work_dir or tempfile.gettempdir()) / WORK_FOLDERS
    base.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="new-", dir=base))
    try:
        paths = write_registration_inputs(checked, fresh / "input")
        if inputs.boxes:
            paths["boxes"] = write_xray_boxes(fresh / "input" / "boxes.json", inputs.boxes)
        paths.update(write_scene_rois(inputs.ct_node.GetScene(), fresh / "input", checked.init))
        settings = {"vertebrae": checked.vertebrae, "method": inputs.method, "device": inputs.device,
                    "model": None if checked.model is None else str(checked.model)}
        work = base / f"register-{fingerprint(sorted((fresh / 'input').iterdir()), settings)[:16]}"
        resumed = journal_path(work / "output", "register").is_file()
        if resumed:  # the same inputs, byte for byte (SimpleITK's writers are deterministic)
            shutil.rmtree(fresh)
        else:
            shutil.rmtree(work, ignore_errors=True)  # a run that ended before its first vertebra
            fresh.rename(work)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    paths = {name: work / "input" / path.name for name, path in paths.items()}
    out_dir = work / "output"
    args = register_arguments(paths, checked.vertebrae, inputs.method, inputs.device, out_dir, checked.model)
    return checked, args + (["--resume"] if resumed else []), work, out_dir


class RegistrationRun:
    """One ``spinereg register`` run in the background, from checked inputs to scene nodes.

    ``start`` checks and writes the inputs (InputError for bad ones, nothing started; ``resumed``
    when it goes on from a cancelled run's vertebrae), then the caller polls (``poll`` -> progress
    events; ``running``), and calls ``finish`` once ``running`` is False: it applies the result to
    the scene when the CLI succeeded, raises InputError with the CLI's one-line reason otherwise,
    and always removes the work folder. ``cancel`` ends the process tree and removes the work
    folder, unless vertebrae were done (``kept`` is then True: Register on the same inputs goes on).
    """

    def __init__(self, inputs: RegistrationInputs, python: str | None = None, work_dir=None, env=None) -> None:
        self.inputs = inputs
        self._python = python
        self._work_dir = work_dir
        self._env = env
        self.checked: CheckedInputs | None = None
        self.process: CliProcess | None = None
        self.work: Path | None = None
        self.out_dir: Path | None = None
        self.resumed = False
        self.kept = False

    def start(self) -> RegistrationRun:
        self.checked, args, self.work, self.out_dir = prepare_registration(self.inputs, self._work_dir)
        self.resumed = "--resume" in args
        try:
            self.process = CliProcess(args, python=self._python, env=self._env).start()
        except OSError as error:
            self._cleanup()
            raise InputError(f"cannot start spinereg: {error}") from None
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def poll(self):
        return self.process.poll() if self.process else []

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()
        self.kept = self.out_dir is not None and journal_path(self.out_dir, "register").is_file()
        if not self.kept:
            self._cleanup()

    def finish(self, scene) -> dict:
        """Apply the finished run's result to ``scene`` (see the class docstring)."""
        if self.process is None:
            raise RuntimeError("RegistrationRun.finish before start")
        if self.running:
            raise RuntimeError("RegistrationRun.finish while the process still runs")
        try:
            if self.process.returncode != 0:
                raise InputError(f"registration failed: {self.process.failure_message()}")
            sizes = {view: xray_size(node) for view, node in self.inputs.xrays.items()}
            result = read_registration_result(self.out_dir, sizes)
            return apply_registration_result(scene, result, self.inputs.xrays, self.checked.labelmap)
        finally:
            self._cleanup()

    def run(self, scene, callback=None, timeout_s: float | None = None) -> dict:
        """start, wait (``callback(event)`` per progress line) and finish, blocking."""
        self.start()
        wait_or_cancel(self, timeout_s, callback)
        return self.finish(scene)

    def _cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            try:
                self.work.parent.rmdir()  # WORK_FOLDERS, when no other run keeps a folder there
            except OSError:
                pass


def available_commands() -> list[str]:
    """The ``spinereg`` subcommands of the installed library (without starting it)."""
    from SpineRegistrationLib.cli import COMMANDS

    return list(COMMANDS)

