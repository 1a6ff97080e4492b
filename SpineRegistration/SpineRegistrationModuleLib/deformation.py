"""The Deform step: ``spinereg deform`` in the background, and its output folder in the scene.

Two modes, one background process each (:mod:`.process`), one kind of result:

**From the vertebra poses** (after Register). The scene holds one linear transform per
vertebra (``<name> registration``, matrixTransformToParent = matrix_ras). :class:`DeformationRun`
writes those poses back as a ``spinereg register`` result folder (through the library's own
writer, so the schema has one home; each transform node keeps its result.json entry in
ATTR_RESULT, the pose itself is read from the node, so a pose the user adjusted is the one
deformed), the CT and its segmentation beside it, and the scene's X-rays with their geometry
sidecars as Register writes them (:func:`.registration.write_xray_inputs`), then runs::

    spinereg deform --result <work>/result --ct <work>/input/ct.nii.gz --seg <work>/input/seg.nii.gz
                    --xray <work>/input/AP.nrrd --geometry <work>/input/AP.json --xray ... LAT ... [--no-refine]
                    --out <work>/output

The library refines the registered vertebrae's poses jointly against the X-rays (unless
``refine`` is off: ``--no-refine``), builds the poly-rigid field (exactly rigid inside every
vertebra; the vertebrae not registered follow their neighbours) and writes ``drr_<VIEW>.nrrd``:
the DRR of every vertebra at its final pose, i.e. the warped segmentation's DRR. Its progress
lines (``deform: refine 40%``, ``deform: field``, ``deform: jacobian``, ``deform: warping``)
drive the progress bar.

**CT to CT** (a second CT, e.g. taken in the operating room, is chosen)::

    spinereg deform --fixed <work>/input/fixed.nii.gz --moving <work>/input/ct.nii.gz
                    --moving-seg <work>/input/seg.nii.gz --articulated --out <work>/output

(the rigid stage, then every vertebra registered rigidly on its own and the poses blended
poly-rigidly, ``--articulated``, the blend refined near the bone; with a model of the user's, the learned deformable network
instead; progress line ``deform: registering the CTs``).
The field maps a point of the second CT's frame to the point of the CT it shows, the warped
segmentation lies on the second CT's grid; no DRRs.

Only once the process succeeded does :func:`apply_deformation_result` change the scene:

- the field as a grid transform node ``<CT name> deformation`` (Slicer's
  vtkMRMLTransformStorageNode reads displacement.h5; its TransformFromParent maps a world
  point to the CT point it came from; made the CT's parent it shows the CT at the
  operating-room pose; the CT is left as it is, so Register can run again);
- the warped segmentation (world coordinates, no parent transform) as a segmentation node
  ``<segmentation name> deformed``, shown in 3D as closed surfaces (the rigidly moved
  surfaces are hidden then, :func:`.views.set_results_visibility`);
- per view with a ``drr_<VIEW>.nrrd``, the DRR of the warped vertebrae ``<view> deformed DRR``
  on the X-ray's plane, referenced from the X-ray as REF_DEFORMED_DRR (slice views blend it
  instead of the rigid DRR);
- a one-line summary (:func:`deformation_summary`): Jacobian folding %, determinant range,
  SDlogJ, and the rigid residual and how far the refinement moved the poses, or (CT to CT)
  the stages and the Dice deform.json has.

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
from SpineRegistrationLib.io import Labelmap, centroids_ras, read_labelmap, write_labelmap, write_volume
from SpineRegistrationLib.io.deform_folder import (
    DEFORM_FILE,
    DEFORM_FORMAT,
    DEFORM_VERSION,
    FIELD_FILE,
    WARPED_SEGMENTATION_FILE,
)
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
from .registration import as_verse, write_xray_inputs, xray_arguments, xray_inputs
from .results import _drr_color_node, _read_image_with_mrml, _read_in_private_scene, _style_drr
from .xrays import REF_DEFORMED_DRR, VIEWS, xray_size

#: The two modes of :class:`DeformationRun` (deform.json's "mode").
MODE_POSES, MODE_PAIR = "poses", "ct-pair"

#: Share of the run the joint refinement takes (``deform: refine NN%`` lines move the bar over it).
REFINE_SPAN = 0.8
#: Where each ``deform: <stage>`` line puts the run: (fraction when the poses are refined, when not).
DEFORM_STAGES = {"field": (0.80, 0.05), "jacobian": (0.88, 0.6), "warping": (0.93, 0.8), "registering": (0.05, 0.05)}
_STAGE_TEXT = {"field": "building the displacement field", "jacobian": "measuring the Jacobian",
               "warping": "warping the segmentation and rendering its DRRs",
               "registering": "registering the CTs (rigid, then vertebra by vertebra or the deformable network)"}
_DEFORM_LINE = re.compile(r"^deform:\s*(\w+)")
_REFINE_LINE = re.compile(r"^deform:\s*refine\s+(\d{1,3})\s*%")

#: Name of the closed-surface representation (vtkSegmentationConverter's).
CLOSED_SURFACE = "Closed surface"


@dataclass
class DeformationInputs:
    """What the Deform step works on.

    ct_node, segmentation_node: the CT and segmentation the scene's result was registered
    from (CT to CT: the CT that is deformed and its segmentation). xrays: view -> X-ray node
    (with its geometry): the poses are refined against them and the warped vertebrae's DRR is
    shown over them; a view without a node is left out. refine: refine the poses against the
    X-rays (off: ``--no-refine``, the poses as registered). second_ct_node: a second CT (the
    operating room's): when set, the CT is deformed onto it (CT to CT) instead. device: torch
    device ("auto": the GPU when there is one). model: the deformable model file of CT to CT (None:
    the shipped one).
    """

    ct_node: object
    segmentation_node: object
    xrays: dict = field(default_factory=dict)
    refine: bool = True
    second_ct_node: object = None
    device: str = "auto"
    model: str | None = None

    @property
    def mode(self) -> str:
        return MODE_PAIR if self.second_ct_node is not None else MODE_POSES


# ---------------------------------------------------------------------- the scene's result
def scene_result_vertebrae(scene, labelmap: Labelmap) -> tuple[list[VertebraResult], str | None]:
    """The registration result the scene holds, one VertebraResult per vertebra transform node,
    and the method that registered them (None when not one and the same, or not known).

    The pose is the node's matrixTransformToParent now; the rest (centre, similarity,
    verdict ...) comes from its ATTR_RESULT entry (a transform made by another version,
    without one: centre = the segmentation's centroid). A pose the user set (the node moved
    since Register, or without an entry) passes: the user's pose is not doubted. InputError (one
    line) when there is no result or a vertebra of it is not in ``labelmap``.
    """
    transforms = [node for node in nodes_with(scene, ROLE_TRANSFORM) if node.GetAttribute(ATTR_VERTEBRA)]
    if not transforms:
        raise InputError("no registration result in the scene: Register first (Deform starts from the vertebra poses)")
    centres = centroids_ras(labelmap)
    vertebrae, methods = [], set()
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
        registered = entry.get("matrix_ras")
        users = registered is None or not np.allclose(matrix, np.asarray(registered, dtype=np.float64), atol=1e-6)
        methods.add(None if users else entry.get("method"))
        centre = np.asarray(entry.get("center_ras", centres[name]), dtype=np.float64)
        vertebrae.append(VertebraResult(
            name=name,
            matrix_ras=matrix,
            params=matrix_to_params(matrix, centre),
            center_ras=centre,
            similarity=float(entry.get("similarity", 0.0)),
            verdict="pass" if users else str(entry.get("verdict", "doubt")),
            time_s=float(entry.get("time_s", 0.0)),
            evaluations=int(entry.get("evaluations", 0)),
            rival_margin=entry.get("rival_margin"),
            verdict_reason=None if users else entry.get("verdict_reason"),
        ))
    return vertebrae, (methods.pop() if len(methods) == 1 else None)



def write_deformation_inputs(scene, inputs: DeformationInputs, folder) -> dict:
    """Check the inputs and write what ``spinereg deform`` reads into ``folder``.

    Always input/ct.nii.gz and input/seg.nii.gz (VerSe numbering). From the poses: result/
    (the scene's result folder) and per X-ray input/<view>.nrrd with input/<view>.json (as
    Register writes them). CT to CT: input/fixed.nii.gz (the second CT). Returns name -> path
    (X-rays under their view and ``<view>_geometry``) plus "mode", "views" (the X-rays
    written) and "vertebrae" (the segmentation's, cranial -> caudal). InputError (one line,
    nothing written) for bad inputs.
    """
    if inputs.ct_node is None:
        raise InputError("no CT selected")
    pair = inputs.mode == MODE_PAIR
    if pair:  # CT to CT registers the two files as scanned: a parent transform would be ignored
        require_untransformed(inputs.ct_node, "CT")
        if inputs.second_ct_node is inputs.ct_node:
            raise InputError("the second CT is the CT itself: choose the CT taken in the operating room")
        require_untransformed(inputs.second_ct_node, "second CT")
    labelmap = vertebra_labelmap(inputs.segmentation_node, inputs.ct_node)
    ct = volume_of(inputs.ct_node)
    folder = Path(folder)
    paths = {"mode": inputs.mode, "ct": folder / "input" / "ct.nii.gz", "seg": folder / "input" / "seg.nii.gz"}
    if pair:
        fixed = volume_of(inputs.second_ct_node)
        geometries, arrays, vertebrae = {}, {}, []
    else:
        vertebrae, method = scene_result_vertebrae(scene, labelmap)
        if all(vertebra.verdict != "pass" for vertebra in vertebrae):  # the CLI's line would name a flag
            raise InputError(f"every registered vertebra says doubt ({', '.join(v.name for v in vertebrae)}): "
                             "nothing to build the deformation from; set a pose you trust by hand (a pose moved "
                             "after Register counts as yours) or Register again")
        geometries, arrays = xray_inputs(inputs.xrays)
    paths["ct"].parent.mkdir(parents=True, exist_ok=True)
    write_volume(ct, paths["ct"])
    write_labelmap(as_verse(labelmap), paths["seg"])
    if pair:
        paths["fixed"] = folder / "input" / "fixed.nii.gz"
        write_volume(fixed, paths["fixed"])
    else:
        paths["result"] = folder / "result"
        paths["result"].mkdir(parents=True)
        write_result_folder(paths["result"], {"source": "scene", "method": method}, vertebrae, {})
        paths.update(write_xray_inputs(arrays, geometries, paths["ct"].parent))
    paths["views"] = list(arrays)
    paths["vertebrae"] = list(labelmap.labels)
    return paths


def deform_arguments(paths: dict, out_dir, refine: bool = True, device: str = "auto", model=None) -> list[str]:
    """The ``spinereg deform`` arguments (no program name) for :func:`write_deformation_inputs`' files.

    From the poses: ``--result --ct --seg``, ``--xray/--geometry`` per view written,
    ``--no-refine`` when ``refine`` is off. CT to CT: ``--fixed <second CT> --moving <CT>
    --moving-seg <segmentation>``, then ``--model`` when given (the deformable network), else
    ``--articulated`` (the shipped deformable network has not learned yet; vertebra by vertebra is
    what works on CPU today). ``--device`` always: "auto" lets the
    CLI take the GPU when there is one (its own default is the CPU)."""
    if paths.get("mode") == MODE_PAIR:
        args = ["deform", "--fixed", str(paths["fixed"]), "--moving", str(paths["ct"]), "--moving-seg", str(paths["seg"])]
        args += ["--model", str(model)] if model is not None else ["--articulated"]
    else:
        args = ["deform", "--result", str(paths["result"]), "--ct", str(paths["ct"]), "--seg", str(paths["seg"])]
        args += xray_arguments(paths, paths.get("views", ()))
        if not refine:
            args.append("--no-refine")
    return args + ["--device", device, "--out", str(out_dir)]


def deform_progress(event: ProgressEvent, refining: bool = True) -> ProgressEvent:
    """A ``spinereg deform`` output line as progress of the whole run.

    ``deform: refine NN%`` moves the bar over the first REFINE_SPAN of the run, the stage
    lines (``deform: field`` ...) put it where DEFORM_STAGES says (``refining``: whether the
    run refines the poses, which then takes most of its time); any other line keeps its text
    and gives no fraction (a tqdm bar of some inner step must not move the bar back)."""
    text = event.message.strip()
    match = _REFINE_LINE.match(text)
    if match:
        percent = min(int(match.group(1)), 100)
        return ProgressEvent(REFINE_SPAN * percent / 100.0,
                             f"Deform: refining the poses against the X-rays ({percent} %)", event.line)
    match = _DEFORM_LINE.match(text)
    if match and match.group(1) in DEFORM_STAGES:
        stage = match.group(1)
        with_refine, without = DEFORM_STAGES[stage]
        return ProgressEvent(with_refine if refining else without, f"Deform: {_STAGE_TEXT[stage]}", event.line)
    return ProgressEvent(None, event.message, event.line)


# ---------------------------------------------------------------------- reading a deform folder
@dataclass
class DeformationResult:
    """A ``spinereg deform`` output folder, read and checked (nothing in the scene yet).

    document: deform.json; transform: the grid transform node Slicer read displacement.h5
    into (in a private scene, kept alive by ``_scratch``); labelmap: the warped segmentation;
    drrs: view -> (rows, columns) DRR of the warped vertebrae (the folder's drr_<VIEW>.nrrd).
    """

    folder: Path
    document: dict
    transform: object
    labelmap: Labelmap
    drrs: dict = field(default_factory=dict)
    _scratch: object = None


def read_deform_document(out_dir) -> dict:
    """deform.json of a deform folder, checked (format, version, Jacobian statistics, vertebrae:
    from the poses, one 4x4 matrix_ras each; CT to CT, a possibly empty table)."""
    path = Path(out_dir) / DEFORM_FILE
    document = read_json(path, DEFORM_FORMAT)
    if not isinstance(document, dict) or document.get("format") != DEFORM_FORMAT or document.get("version") != DEFORM_VERSION:
        raise InputError(f"{path} is not a {DEFORM_FORMAT} version {DEFORM_VERSION} file")
    jacobian = document.get("jacobian")
    if not isinstance(jacobian, dict) or not all(isinstance(jacobian.get(k), (int, float))
                                                 for k in ("min", "max", "folding_percent", "sdlogj")):
        raise InputError(f"{path} has no Jacobian statistics")
    vertebrae = document.get("vertebrae")
    if document.get("mode") == MODE_PAIR:
        if not isinstance(vertebrae, dict):
            raise InputError(f"{path} has no vertebra table")
        return document
    if not isinstance(vertebrae, dict) or not vertebrae:
        raise InputError(f"{path} holds no vertebra")
    for name, entry in vertebrae.items():
        matrix = np.asarray(entry.get("matrix_ras") if isinstance(entry, dict) else None, dtype=object)
        if matrix.shape != (4, 4):
            raise InputError(f"{path}: the matrix_ras of {name} is not a 4x4 matrix")
    return document


def read_deformation_result(out_dir) -> DeformationResult:
    """Read deform.json, displacement.h5 (through vtkMRMLTransformStorageNode, as a grid
    transform), warped_seg.seg.nrrd and the ``drr_<VIEW>.nrrd`` of the views the folder has
    (``spinereg deform --xray`` writes them: every vertebra at its final pose). InputError
    (one line) for a missing or unreadable file."""
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
    drrs = {view: _read_image_with_mrml(folder / drr_name(view)) for view in VIEWS if (folder / drr_name(view)).is_file()}
    return DeformationResult(folder, document, transform, labelmap, drrs, scratch)


def _jacobian_text(jacobian: dict) -> str:
    return (f"folding {jacobian['folding_percent']:.4f} % (Jacobian determinant {jacobian['min']:.3f}.."
            f"{jacobian['max']:.3f}, SDlogJ {jacobian['sdlogj']:.3f})")


def refinement_summary(document: dict) -> str | None:
    """How the joint refinement moved the poses (deform.json's per-vertebra "refinement"
    entries): the largest rotation and centre shift, the mean similarity before -> after and
    who kept the pose it started from; None when deform.json does not say (older files)."""
    if "refined" not in document:
        return None
    if not document["refined"]:
        return "poses as registered (not refined against the X-rays)"
    entries = {name: entry["refinement"] for name, entry in document["vertebrae"].items()
               if isinstance(entry.get("refinement"), dict)}
    if not entries:
        return "poses refined against the X-rays"
    rotated = max(entries, key=lambda name: entries[name]["rotation_deg"])
    shifted = max(entries, key=lambda name: entries[name]["centre_shift_mm"])
    before = np.mean([entry["similarity_before"] for entry in entries.values()])
    after = np.mean([entry["similarity_after"] for entry in entries.values()])
    text = (f"poses refined against the X-rays by up to {entries[rotated]['rotation_deg']:.2f}° ({rotated}) and "
            f"{entries[shifted]['centre_shift_mm']:.2f} mm ({shifted}), similarity {before:.3f} -> {after:.3f}")
    doubted = [name for name, entry in document["vertebrae"].items() if entry.get("doubted")]
    if doubted:
        text += (f", {', '.join(doubted)} (registration said doubt) started from "
                 f"{'its' if len(doubted) == 1 else 'their'} neighbours")
    kept = [name for name, entry in entries.items() if entry.get("kept_start")]
    if kept:
        text += f", {', '.join(kept)} kept {'its' if len(kept) == 1 else 'their'} starting pose"
    return text


def deformation_summary(document: dict) -> str:
    """One line on a deformation. From the poses: vertebrae, who followed their neighbours,
    folding, Jacobian, rigid residual, how far the refinement moved the poses. CT to CT: the
    stages, folding, Jacobian, Dice per vertebra (when deform.json has it)."""
    jacobian = document["jacobian"]
    vertebrae = document["vertebrae"]
    if document.get("mode") == MODE_PAIR:
        registration = document.get("registration") or {}
        linear = (registration.get("affine") or {}).get("transform", "linear")
        if registration.get("articulated"):
            count = len(registration["articulated"].get("vertebrae", {}))
            stages = f"{linear} stage, then {count} vertebrae each rigid on its own, blended"
            if (registration["articulated"].get("freeform") or {}).get("steps"):
                stages += ", refined near the bone"
        elif registration.get("model"):
            stages = f"{linear} stage, then the deformable network"
        else:
            stages = f"{linear} stage only"
        text = f"Deformed the CT onto the second CT ({stages}): {_jacobian_text(jacobian)}"
        dice = {name: entry["dice"] for name, entry in vertebrae.items()
                if isinstance(entry, dict) and isinstance(entry.get("dice"), (int, float))}
        if dice:
            worst = min(dice, key=dice.get)
            text += f"; Dice per vertebra mean {np.mean(list(dice.values())):.3f} (min {dice[worst]:.3f}, {worst})"
    else:
        # Not refined, a vertebra whose registration said doubt followed its neighbours too.
        inferred = [name for name, entry in vertebrae.items() if not entry.get("registered", True)
                    or (entry.get("doubted") and not document.get("refined"))]
        residuals = {name: entry["rigid_residual"] for name, entry in vertebrae.items() if entry.get("rigid_residual")}
        text = f"Deformed {len(vertebrae)} vertebrae"
        if inferred:
            text += f" ({', '.join(inferred)} followed {'its' if len(inferred) == 1 else 'their'} neighbours)"
        text += f": {_jacobian_text(jacobian)}"
        if residuals:
            worst = max(residuals, key=lambda name: residuals[name]["p99_mm"])
            text += (f"; rigid residual p99 {residuals[worst]['p99_mm']:.3f} mm (worst {worst}), "
                     f"max {max(r['max_mm'] for r in residuals.values()):.3f} mm")
        refinement = refinement_summary(document)
        if refinement:
            text += f"; {refinement}"
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
class DeformationRun:
    """The Deform step in the background, from the scene to scene nodes: one ``spinereg deform``.

    Like :class:`.registration.RegistrationRun`: ``start`` checks and writes the inputs
    (InputError, nothing started, for bad ones) and starts the process; the caller calls
    ``poll`` (progress events of the whole run, :func:`deform_progress`) while ``running``;
    then ``finish(scene)`` applies the result when the process succeeded, raises InputError
    with its one-line reason otherwise, and always removes the work folder; ``cancel`` ends
    the process tree and removes the work folder.
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
        self.args: list[str] = []
        self.process: CliProcess | None = None
        self.cancelled = False
        self._done_reported = False

    @property
    def refining(self) -> bool:
        """Whether the run refines the poses against X-rays (then most of its time goes there)."""
        return self.inputs.mode == MODE_POSES and self.inputs.refine and bool(self.paths.get("views"))

    def start(self) -> DeformationRun:
        self.work = Path(tempfile.mkdtemp(prefix="spinereg-deform-", dir=self._work_dir))
        try:
            self.paths = write_deformation_inputs(self.scene, self.inputs, self.work)
        except BaseException:
            self._cleanup()
            raise
        self.out_dir = self.work / "output"
        self.args = deform_arguments(self.paths, self.out_dir, self.inputs.refine, self.inputs.device, self.inputs.model)
        try:
            self.process = CliProcess(self.args, python=self._python, env=self._env).start()
        except OSError as error:
            self._cleanup()
            raise InputError(f"cannot start spinereg: {error}") from None
        return self

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.process is None else self.process.elapsed_s

    @property
    def running(self) -> bool:
        return self.process is not None and not self.cancelled and self.process.running

    def poll(self) -> list[ProgressEvent]:
        """Progress events since the last call (fractions of the whole run); a last one at 1.0
        once the process ended successfully."""
        if self.process is None:
            return []
        events = [deform_progress(event, self.refining) for event in self.process.poll()]
        if not self.cancelled and not self._done_reported and not self.process.running and self.process.returncode == 0:
            self._done_reported = True
            events.append(ProgressEvent(1.0, "Deform: done", ""))
        return events

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
            raise RuntimeError("DeformationRun.finish while the process still runs")
        try:
            if self.cancelled:
                raise InputError("deformation cancelled")
            if self.process.returncode != 0:
                raise InputError(f"deformation failed: {self.process.failure_message()}")
            result = read_deformation_result(self.out_dir)
            return apply_deformation_result(scene if scene is not None else self.scene, result, self.inputs.ct_node,
                                            self.inputs.segmentation_node, self.inputs.xrays)
        finally:
            self._cleanup()

    def wait(self, timeout_s: float | None = None, callback=None, interval_s: float = 0.1) -> None:
        """Block until the process ended, calling ``callback(event)`` per progress event; on
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
