"""The Deform step: ``spinereg deform`` on the scene's registration result, and its output in the scene.

After Register, the scene holds one linear transform per vertebra (``<name> registration``,
matrixTransformToParent = matrix_ras). :class:`DeformationRun` writes those poses back as a
``spinereg register`` result folder (through the library's own writer, so the schema has one
home; each transform node keeps its result.json entry in ATTR_RESULT, the pose itself is read
from the node, so a pose the user adjusted is the one deformed), writes the CT and its
segmentation beside it, and runs in the background, as Register does (:mod:`.process`)::

    spinereg deform --result <work>/result --ct <work>/input/ct.nii.gz --seg <work>/input/seg.nii.gz --out <work>/output

then, per X-ray and per vertebra, ``spinereg drr --ct ... --seg ... --vertebra V --transform <V's pose>``.
The poly-rigid field is exactly rigid inside every vertebra (the registered ones at their
pose, the others at the pose they inherit from their neighbours, both in deform.json), so
the sum of these per-vertebra DRRs is the DRR of the warped segmentation: it is what the
rigid result's DRR is, with the unregistered vertebrae where the deformation put them.
(``spinereg deform`` takes no X-rays in this library version; when it renders the DRRs
itself, the per-vertebra ``drr`` steps go.) A vertebra a view does not see adds nothing to
that view's DRR.

Only once every step succeeded does :func:`apply_deformation_result` change the scene:

- the field as a grid transform node ``<CT name> deformation`` (Slicer's
  vtkMRMLTransformStorageNode reads displacement.h5; its TransformFromParent maps a world
  point to the CT point it came from; made the CT's parent it shows the CT at the
  operating-room pose; the CT is left as it is, so Register can run again);
- the warped segmentation (world coordinates, no parent transform) as a segmentation node
  ``<segmentation name> deformed``, shown in 3D as closed surfaces (the rigidly moved
  surfaces are hidden then, :func:`.views.set_results_visibility`);
- per view, the DRR of the warped vertebrae ``<view> deformed DRR`` on the X-ray's plane,
  referenced from the X-ray as REF_DEFORMED_DRR (slice views blend it instead of the rigid DRR);
- a one-line summary: Jacobian folding %, determinant range, SDlogJ, rigid residual.

Anything that fails (bad input, a ``spinereg`` exit status 2, a folder with a missing or
unreadable file) raises InputError (a ValueError) with one line and leaves the scene as it
was. A new Register result removes the nodes of an earlier Deform (:mod:`.results`).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer

from SpineRegistrationLib.core.pose import matrix_to_params
from SpineRegistrationLib.errors import InputError
from SpineRegistrationLib.io import Labelmap, centroids_ras, read_labelmap, write_labelmap, write_transform, write_volume
from SpineRegistrationLib.io.deform_folder import (
    DEFORM_FILE,
    DEFORM_FORMAT,
    DEFORM_VERSION,
    FIELD_FILE,
    WARPED_SEGMENTATION_FILE,
)
from SpineRegistrationLib.io.geometry_json import save_geometry
from SpineRegistrationLib.io.jsonfile import read_json
from SpineRegistrationLib.io.results import VertebraResult, drr_name, write_result_folder

from .nodes import (
    ATTR_RESULT,
    ATTR_VERTEBRA,
    DEFORMATION_ROLES,
    ROLE_DEFORMATION,
    ROLE_DEFORMED_DRR,
    ROLE_DEFORMED_SEGMENTATION,
    ROLE_TRANSFORM,
    SceneChange,
    add_segmentation_node,
    fill_volume_node,
    ijk_to_ras_of,
    nodes_with,
    remove_node,
    require_untransformed,
    tag_node,
    transform_to_parent_of,
    vertebra_labelmap,
    volume_of,
)
from .process import CliProcess, ProgressEvent
from .registration import _as_verse
from .results import _drr_color_node, _read_image_with_mrml, _read_in_private_scene, _style_drr
from .xrays import REF_DEFORMED_DRR, VIEWS, geometry_of, xray_size

#: Where each ``spinereg deform`` progress line (``deform: <stage>``) puts the deform step (fraction of it).
DEFORM_STAGES = {"field": 0.05, "jacobian": 0.7, "warping": 0.85}
_STAGE_TEXT = {"field": "building the displacement field", "jacobian": "measuring the Jacobian",
               "warping": "warping the segmentation"}
_DEFORM_LINE = re.compile(r"^deform:\s*(\w+)")

#: Weight of the deform step against one per-vertebra DRR step in the progress bar (~10 s vs ~4 s).
DEFORM_STEP_WEIGHT = 3.0

#: A ``spinereg drr`` failure that only means the view does not see that vertebra.
_NOT_SEEN = "does not see"

#: Name of the closed-surface representation (vtkSegmentationConverter's).
CLOSED_SURFACE = "Closed surface"


@dataclass
class DeformationInputs:
    """What the Deform step works on: the CT and segmentation the scene's result was
    registered from, and the X-rays to show the warped vertebrae's DRR over (view -> node;
    a view without a node or without geometry gets no DRR). drrs: render those DRRs.
    device: of the DRR rendering ("auto": the CLI's default)."""

    ct_node: object
    segmentation_node: object
    xrays: dict = field(default_factory=dict)
    drrs: bool = True
    device: str = "auto"


# ---------------------------------------------------------------------- the scene's result
def scene_result_vertebrae(scene, labelmap: Labelmap) -> list[VertebraResult]:
    """The registration result the scene holds, one VertebraResult per vertebra transform node.

    The pose is the node's matrixTransformToParent now; the rest (centre, similarity,
    verdict ...) comes from its ATTR_RESULT entry (a transform made by another version,
    without one: centre = the segmentation's centroid). InputError (one line) when there is
    no result or a vertebra of it is not in ``labelmap``.
    """
    transforms = [node for node in nodes_with(scene, ROLE_TRANSFORM) if node.GetAttribute(ATTR_VERTEBRA)]
    if not transforms:
        raise InputError("no registration result in the scene: Register first (Deform starts from the vertebra poses)")
    centres = centroids_ras(labelmap)
    vertebrae = []
    for node in transforms:
        name = node.GetAttribute(ATTR_VERTEBRA)
        if name not in centres:
            raise InputError(f"the registered vertebra {name} is not in the segmentation "
                             f"(present: {', '.join(centres)}): choose the segmentation it was registered with")
        require_untransformed(node, "registration transform")
        try:
            entry = json.loads(node.GetAttribute(ATTR_RESULT) or "{}")
        except json.JSONDecodeError:
            entry = {}
        matrix = transform_to_parent_of(node)
        centre = np.asarray(entry.get("center_ras", centres[name]), dtype=np.float64)
        vertebrae.append(VertebraResult(
            name=name,
            matrix_ras=matrix,
            params=matrix_to_params(matrix, centre),
            center_ras=centre,
            similarity=float(entry.get("similarity", 0.0)),
            verdict=str(entry.get("verdict", "doubt")),
            time_s=float(entry.get("time_s", 0.0)),
            evaluations=int(entry.get("evaluations", 0)),
            rival_margin=entry.get("rival_margin"),
            verdict_reason=entry.get("verdict_reason", None if entry else "pose from the scene"),
        ))
    return vertebrae


def write_deformation_inputs(scene, inputs: DeformationInputs, folder) -> dict:
    """Check the inputs and write what ``spinereg deform`` and ``spinereg drr`` read into
    ``folder``: input/ct.nii.gz, input/seg.nii.gz (VerSe numbering), result/ (the scene's
    result folder), input/<view>.json per view with a geometry. Returns name -> path (views
    under their name) plus "vertebrae": the segmentation's vertebrae, cranial -> caudal."""
    if inputs.ct_node is None:
        raise InputError("no CT selected")
    require_untransformed(inputs.ct_node, "CT")
    labelmap = vertebra_labelmap(inputs.segmentation_node, inputs.ct_node)
    ct = volume_of(inputs.ct_node)
    vertebrae = scene_result_vertebrae(scene, labelmap)
    geometries = {view: geometry_of(node) for view, node in inputs.xrays.items() if node is not None}
    folder = Path(folder)
    paths = {"ct": folder / "input" / "ct.nii.gz", "seg": folder / "input" / "seg.nii.gz", "result": folder / "result"}
    paths["result"].mkdir(parents=True)
    paths["ct"].parent.mkdir(parents=True, exist_ok=True)
    write_volume(ct, paths["ct"])
    write_labelmap(_as_verse(labelmap), paths["seg"])
    write_result_folder(paths["result"], {"source": "scene"}, vertebrae, {})
    if inputs.drrs:
        for view, geometry in geometries.items():
            if geometry is not None:
                paths[view] = folder / "input" / f"{view}.json"
                save_geometry(geometry, paths[view])
    paths["vertebrae"] = list(labelmap.labels)
    return paths


def deform_arguments(paths: dict, out_dir) -> list[str]:
    """The ``spinereg deform`` arguments (no program name) for :func:`write_deformation_inputs`' files."""
    return ["deform", "--result", str(paths["result"]), "--ct", str(paths["ct"]), "--seg", str(paths["seg"]),
            "--out", str(out_dir)]


def drr_arguments(paths: dict, view: str, vertebra: str, transform, out, device: str = "auto") -> list[str]:
    """The ``spinereg drr`` arguments of one vertebra at its pose (``transform``: an ITK file) in one view."""
    args = ["drr", "--ct", str(paths["ct"]), "--seg", str(paths["seg"]), "--vertebra", vertebra,
            "--geometry", str(paths[view]), "--transform", str(transform), "--out", str(out)]
    if device != "auto":
        args += ["--device", device]
    return args


# ---------------------------------------------------------------------- reading a deform folder
@dataclass
class DeformationResult:
    """A ``spinereg deform`` output folder, read and checked (nothing in the scene yet).

    document: deform.json; transform: the grid transform node Slicer read displacement.h5
    into (in a private scene, kept alive by ``_scratch``); labelmap: the warped segmentation;
    drrs: view -> (rows, columns) DRR of the warped vertebrae (empty when none was rendered).
    """

    folder: Path
    document: dict
    transform: object
    labelmap: Labelmap
    drrs: dict = field(default_factory=dict)
    _scratch: object = None


def read_deform_document(out_dir) -> dict:
    """deform.json of a deform folder, checked (format, version, Jacobian statistics, vertebrae)."""
    path = Path(out_dir) / DEFORM_FILE
    document = read_json(path, DEFORM_FORMAT)
    if not isinstance(document, dict) or document.get("format") != DEFORM_FORMAT or document.get("version") != DEFORM_VERSION:
        raise InputError(f"{path} is not a {DEFORM_FORMAT} version {DEFORM_VERSION} file")
    jacobian = document.get("jacobian")
    if not isinstance(jacobian, dict) or not all(isinstance(jacobian.get(k), (int, float))
                                                 for k in ("min", "max", "folding_percent", "sdlogj")):
        raise InputError(f"{path} has no Jacobian statistics")
    vertebrae = document.get("vertebrae")
    if not isinstance(vertebrae, dict) or not vertebrae:
        raise InputError(f"{path} holds no vertebra")
    for name, entry in vertebrae.items():
        matrix = np.asarray(entry.get("matrix_ras") if isinstance(entry, dict) else None, dtype=object)
        if matrix.shape != (4, 4):
            raise InputError(f"{path}: the matrix_ras of {name} is not a 4x4 matrix")
    return document


def read_deformation_result(out_dir, drrs: dict | None = None) -> DeformationResult:
    """Read deform.json, displacement.h5 (through vtkMRMLTransformStorageNode, as a grid
    transform) and warped_seg.seg.nrrd. drrs: view -> array of the warped vertebrae's DRRs;
    None: the folder's own ``drr_<VIEW>.nrrd`` (``spinereg deform --xray`` writes them, of the
    registered vertebrae at their refined poses), if any. InputError (one line) for a
    missing or unreadable file."""
    folder = Path(out_dir)
    document = read_deform_document(folder)
    field_path = folder / FIELD_FILE
    if not field_path.is_file():
        raise InputError(f"the deform folder has no {FIELD_FILE}")
    transform = slicer.vtkMRMLGridTransformNode()
    scratch = _read_in_private_scene(transform, slicer.vtkMRMLTransformStorageNode(), field_path)
    if scratch is None or transform.GetTransformFromParent() is None:
        raise InputError(f"cannot read {FIELD_FILE} as a grid transform")
    segmentation_path = folder / WARPED_SEGMENTATION_FILE
    if not segmentation_path.is_file():
        raise InputError(f"the deform folder has no {WARPED_SEGMENTATION_FILE}")
    labelmap = read_labelmap(segmentation_path)
    if not labelmap.labels:
        raise InputError(f"{WARPED_SEGMENTATION_FILE} holds no vertebra")
    if drrs is None:
        drrs = {view: _read_image_with_mrml(folder / drr_name(view)) for view in VIEWS if (folder / drr_name(view)).is_file()}
    return DeformationResult(folder, document, transform, labelmap, dict(drrs), scratch)


def deformation_summary(document: dict) -> str:
    """One line on a deformation: vertebrae, who followed their neighbours, folding, Jacobian, rigid residual."""
    jacobian = document["jacobian"]
    vertebrae = document["vertebrae"]
    inferred = [name for name, entry in vertebrae.items() if not entry.get("registered", True)]
    residuals = {name: entry["rigid_residual"] for name, entry in vertebrae.items() if entry.get("rigid_residual")}
    text = f"Deformed {len(vertebrae)} vertebrae"
    if inferred:
        text += f" ({', '.join(inferred)} followed {'its' if len(inferred) == 1 else 'their'} neighbours)"
    if document.get("refined"):
        text += ", poses refined against the X-rays"
    text += (f": folding {jacobian['folding_percent']:.4f} % (Jacobian determinant {jacobian['min']:.3f}.."
             f"{jacobian['max']:.3f}, SDlogJ {jacobian['sdlogj']:.3f})")
    if residuals:
        worst = max(residuals, key=lambda name: residuals[name]["p99_mm"])
        text += (f"; rigid residual p99 {residuals[worst]['p99_mm']:.3f} mm (worst {worst}), "
                 f"max {max(r['max_mm'] for r in residuals.values()):.3f} mm")
    if "time_s" in document:
        text += f"; {float(document['time_s']):.1f} s"
    return text + "."


# ---------------------------------------------------------------------- into the scene
def _ensure_closed_surface_conversion() -> None:
    """Register the binary labelmap -> closed surface rule when no rule makes closed surfaces
    (the Slicer application registers it at startup; slicer-core's factory starts empty)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules() or ()
    if not any(rule.GetTargetRepresentationName() == CLOSED_SURFACE for rule in rules):
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())


def apply_deformation_result(scene, result: DeformationResult, ct_node, segmentation_node=None,
                             xrays: dict | None = None) -> dict:
    """Put a read deformation into the scene (module docstring); the nodes of an earlier
    Deform are replaced. Returns {"transform", "segmentation", "drrs": {view: node},
    "summary": str, "document": dict}."""
    xrays = xrays or {}
    # Everything that can fail on bad input happens before the scene changes.
    for view, array in result.drrs.items():
        if xrays.get(view) is None:
            raise InputError(f"the deformation has a {view} DRR but no {view} X-ray is selected")
        cols, rows = xray_size(xrays[view])
        if array.shape != (rows, cols):
            raise InputError(f"the {view} deformed DRR is {array.shape[1]} x {array.shape[0]} pixels, the X-ray {cols} x {rows}")
    summary = deformation_summary(result.document)
    _ensure_closed_surface_conversion()
    earlier = [node for role in DEFORMATION_ROLES for node in nodes_with(scene, role)]
    ct_name = ct_node.GetName() if ct_node is not None else "CT"
    segmentation_name = segmentation_node.GetName() if segmentation_node is not None else "Segmentation"
    made = {"transform": None, "segmentation": None, "drrs": {}, "summary": summary, "document": result.document}
    with SceneChange(scene) as change:
        transform = change.add(slicer.vtkMRMLGridTransformNode(), f"{ct_name} deformation", display=False)
        tag_node(transform, ROLE_DEFORMATION)
        transform.SetAndObserveTransformFromParent(result.transform.GetTransformFromParent())
        transform.SetDescription(summary)
        made["transform"] = transform

        segmentation = add_segmentation_node(scene, result.labelmap, f"{segmentation_name} deformed")
        tag_node(segmentation, ROLE_DEFORMED_SEGMENTATION)
        if not segmentation.CreateClosedSurfaceRepresentation():
            raise InputError("cannot make the closed surfaces of the warped segmentation")
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
            display.SetVisibility3D(True)
            display.SetVisibility2DFill(False)  # outlines in the slice views, the CT stays readable
        made["segmentation"] = segmentation

        for view, array in result.drrs.items():
            xray = xrays[view]
            drr = slicer.vtkMRMLScalarVolumeNode()
            fill_volume_node(drr, array[None], ijk_to_ras_of(xray))
            change.add(drr, f"{view} deformed DRR")
            tag_node(drr, ROLE_DEFORMED_DRR, view=view)
            _style_drr(drr, array, _drr_color_node(scene, change))
            xray.SetNodeReferenceID(REF_DEFORMED_DRR, drr.GetID())
            made["drrs"][view] = drr
        for node in earlier:  # replaced; removed last, once nothing can fail
            remove_node(scene, node)
    return made


# ---------------------------------------------------------------------- the background run
@dataclass
class _Step:
    """One ``spinereg`` command of the run: kind "deform" or "drr" (view, vertebra, out)."""

    kind: str
    args: list
    what: str
    view: str | None = None
    vertebra: str | None = None
    out: Path | None = None
    skipped: bool = False


class DeformationRun:
    """The Deform step in the background, from the scene's result to scene nodes.

    Like :class:`.registration.RegistrationRun`: ``start`` checks and writes the inputs
    (InputError, nothing started, for bad ones) and starts ``spinereg deform``; the caller
    calls ``poll`` (progress events, fraction over all steps) while ``running``; then
    ``finish(scene)`` applies the result when every step succeeded, raises InputError with
    the failing step's one-line reason otherwise, and always removes the work folder;
    ``cancel`` ends the running process tree and removes the work folder. The per-vertebra
    ``spinereg drr`` steps start one after the other as ``poll``/``running`` see the
    previous one end.
    """

    def __init__(self, scene, inputs: DeformationInputs, python: str | None = None, work_dir=None, env=None) -> None:
        self.scene = scene
        self.inputs = inputs
        self._python = python
        self._work_dir = work_dir
        self._env = env
        self.work: Path | None = None
        self.out_dir: Path | None = None
        self.paths: dict = {}
        self.process: CliProcess | None = None
        self.failure: str | None = None
        self.cancelled = False
        self.started_s: float | None = None
        self._steps: list[_Step] = []
        self._index = 0
        self._done = False
        self._backlog: list[ProgressEvent] = []
        self._planned_drr_steps = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DeformationRun:
        work = Path(tempfile.mkdtemp(prefix="spinereg-deform-", dir=self._work_dir))
        self.work = work
        try:
            self.paths = write_deformation_inputs(self.scene, self.inputs, work)
        except BaseException:
            self._cleanup()
            raise
        self.out_dir = work / "output"
        views = [view for view in VIEWS if view in self.paths]
        self._planned_drr_steps = len(views) * len(self.paths["vertebrae"])
        self._steps = [_Step("deform", deform_arguments(self.paths, self.out_dir), "deformation")]
        self.started_s = time.monotonic()
        self._start_step()
        return self

    def _start_step(self) -> None:
        step = self._steps[self._index]
        try:
            self.process = CliProcess(step.args, python=self._python, env=self._env).start()
        except OSError as error:
            self._cleanup()
            raise InputError(f"cannot start spinereg: {error}") from None

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started_s is None else time.monotonic() - self.started_s

    @property
    def running(self) -> bool:
        """True until every step ended (or one failed, or the run was cancelled)."""
        if self.process is None or self.cancelled:
            return False
        self._advance()
        return not self._done and self.failure is None

    def poll(self) -> list[ProgressEvent]:
        """Progress events since the last call, with the fraction over the whole run."""
        if self.process is None:
            return []
        events = self._backlog + [self._overall(event) for event in self.process.poll()]
        self._backlog = []
        if not self.cancelled:
            self._advance()
            events += self._backlog
            self._backlog = []
        return events

    def _overall(self, event: ProgressEvent) -> ProgressEvent:
        """An event of the current step, its fraction over the whole run."""
        step = self._steps[self._index]
        total = DEFORM_STEP_WEIGHT + max(self._planned_drr_steps, 0)
        if step.kind == "deform":
            match = _DEFORM_LINE.match(event.message)
            if not match:
                return ProgressEvent(None, event.message, event.line)
            stage = match.group(1)
            within = DEFORM_STAGES.get(stage)
            fraction = None if within is None else DEFORM_STEP_WEIGHT * within / total
            return ProgressEvent(fraction, f"Deform: {_STAGE_TEXT.get(stage, stage)}", event.line)
        done = DEFORM_STEP_WEIGHT + (self._index - 1)
        return ProgressEvent(done / total, step.what, event.line)

    def _advance(self) -> None:
        """When the current process ended: judge it, plan the DRR steps after deform, start the next."""
        while not self._done and self.failure is None and self.process is not None and not self.process.running:
            self._backlog += [self._overall(event) for event in self.process.poll()]
            step = self._steps[self._index]
            if self.process.returncode != 0:
                message = self.process.failure_message()
                if step.kind == "drr" and _NOT_SEEN in message:
                    step.skipped = True
                else:
                    self.failure = f"{step.what} failed: {message}"
                    return
            if step.kind == "deform":
                try:
                    self._plan_drrs()
                except InputError as error:
                    self.failure = f"deformation failed: {error}"
                    return
            self._index += 1
            if self._index >= len(self._steps):
                self._done = True
                self._backlog.append(ProgressEvent(1.0, "Deform: done", ""))
                return
            try:
                self._start_step()
            except InputError as error:
                self.failure = str(error)
                return

    def _plan_drrs(self) -> None:
        """After deform: one DRR step per view and vertebra, at the pose deform.json gives it."""
        views = [view for view in VIEWS if view in self.paths] if self.inputs.drrs else []
        if not views:
            self._planned_drr_steps = 0
            return
        document = read_deform_document(self.out_dir)
        poses_dir = self.work / "poses"
        drr_dir = self.work / "drr"
        poses_dir.mkdir()
        drr_dir.mkdir()
        names = list(document["vertebrae"])
        for name in names:
            write_transform(np.asarray(document["vertebrae"][name]["matrix_ras"], dtype=np.float64), poses_dir / f"{name}.h5")
        count = len(views) * len(names)
        for view in views:
            for name in names:
                out = drr_dir / f"{view}_{name}.nrrd"
                args = drr_arguments(self.paths, view, name, poses_dir / f"{name}.h5", out, self.inputs.device)
                index = len(self._steps)
                self._steps.append(_Step("drr", args, f"DRR of {name} in {view} ({index}/{count})", view, name, out))
        self._planned_drr_steps = count

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None:
            self.process.cancel()
        self._cleanup()

    def finish(self, scene=None) -> dict:
        """Apply the finished run's result to ``scene`` (default: the run's); see the class docstring."""
        if self.process is None:
            raise RuntimeError("DeformationRun.finish before start")
        if self.running:
            raise RuntimeError("DeformationRun.finish while a step still runs")
        try:
            if self.cancelled:
                raise InputError("deformation cancelled")
            if self.failure is not None:
                raise InputError(self.failure)
            drrs = {}
            for step in self._steps:
                if step.kind != "drr" or step.skipped:
                    continue
                array = _read_image_with_mrml(step.out)
                drrs[step.view] = drrs[step.view] + array if step.view in drrs else array
            result = read_deformation_result(self.out_dir, drrs)
            return apply_deformation_result(scene if scene is not None else self.scene, result, self.inputs.ct_node,
                                            self.inputs.segmentation_node, self.inputs.xrays)
        finally:
            self._cleanup()

    def wait(self, timeout_s: float | None = None, callback=None, interval_s: float = 0.1) -> None:
        """Block until every step ended, calling ``callback(event)`` per progress event; on
        TimeoutError (``timeout_s`` passed) or any other exception the run is cancelled."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                for event in self.poll():
                    if callback:
                        callback(event)
                if not self.running:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the deformation did not finish within {timeout_s:g} s")
                time.sleep(interval_s)
            for event in self.poll():
                if callback:
                    callback(event)
        except BaseException:
            self.cancel()
            raise

    def run(self, scene=None, callback=None, timeout_s: float | None = None) -> dict:
        """start, wait and finish, blocking."""
        self.start()
        self.wait(timeout_s, callback)
        return self.finish(scene)

    def _cleanup(self) -> None:
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
