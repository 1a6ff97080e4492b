"""The ``spinereg deform --result`` job as a Python API: the spine-wide deformation of a CT's
segmentation from the per-vertebra poses of a ``spinereg register`` result folder.

:func:`deform_from_result` reads and checks the inputs (the result must come from this
segmentation: its vertebra centres are the segmentation's centroids), builds the poly-rigid
field (:mod:`..deform.polyrigid`), warps the segmentation and measures the field; the CLI
and the Slicer module only show progress and write the folder (:mod:`..io.deform_folder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field as dataclass_field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.displacement import DisplacementField, check_memory, jacobian_stats
from ..core.labelmap import Labelmap, centroids_ras, check_same_grid
from ..core.metrics import rotation_error_deg, translation_error_mm
from ..core.volume import Volume
from ..deform.polyrigid import PolyRigidConfig, polyrigid_field, rigid_residuals
from ..deform.refine import JointRefineConfig, JointRefinement, refine_jointly
from ..errors import InputError
from ..io.displacement import warp_image
from ..io.images import read_volume, volume_to_image
from ..io.labelmaps import read_labelmap
from ..io.results import ResultFolder, read_result_folder
from .inputs import RegisterConfig, load_case
from .run import render_vertebra_drrs

#: A result's vertebra centre may differ this much from the segmentation's centroid (mm).
CENTRE_TOLERANCE_MM = 0.5
#: Peak bytes per field node while the poly-rigid field is built and measured (65 measured on the
#: real CT at 1.25 and 2 mm: one vertebra's distance map at a time, the Jacobian in slabs).
BYTES_PER_NODE = 120


@dataclass
class DeformOutput:
    """field: world -> CT. warped: the segmentation moved by it (CT grid, world). document:
    deform.json but its header and grid. drrs: view -> (rows, columns) DRR of the registered
    vertebrae at their final poses (when X-rays were given)."""

    field: DisplacementField
    warped: Labelmap
    document: dict
    drrs: dict[str, np.ndarray] = dataclass_field(default_factory=dict)


def deform_from_result(result: str | Path | ResultFolder, ct: str | Path | Volume, seg: str | Path | Labelmap,
                       label_scheme: str = "auto", config: PolyRigidConfig | None = None,
                       xrays: Sequence = (), geometries: Sequence = (), invert: bool = False,
                       refine: JointRefineConfig | None = None, refine_poses: bool = True, device: str = "cpu",
                       keep_doubted: bool = False, progress: Callable[[str], None] | None = None) -> DeformOutput:
    """The poly-rigid deformation of ``seg`` from the poses in ``result``; InputError for bad input.

    xrays / geometries: optional X-rays (files or arrays, bone bright unless ``invert``) and
    their geometries (files or XrayGeometry), as ``spinereg register`` takes them: the poses
    of the registered vertebrae are then refined jointly against them first
    (:mod:`..deform.refine`, with ``refine`` or its defaults; not when ``refine_poses`` is False), and the DRRs of every vertebra at
    its final pose (the field is rigid inside each, so this is the warped segmentation's DRR)
    come back in ``drrs``. A vertebra whose registration said ``doubt`` does not trust its pose:
    it follows its neighbours (and, with X-rays, the joint refinement starts it there), unless
    ``keep_doubted``. A pose that passed and that the intensity stages refined (every method but
    ``learned``) is held as it is: on the real CT the joint refinement moved such poses by
    0.1-3 mm for hundredths of similarity (README, the chain). progress: called with a short stage name as the work goes
    ("refine 0%" ... "refine 100%", field, jacobian, warping), once the inputs are read and checked.
    """
    config = config or PolyRigidConfig()
    say = progress or (lambda stage: None)
    started = time.perf_counter()
    folder = result if isinstance(result, ResultFolder) else read_result_folder(result)
    ct_volume = ct if isinstance(ct, Volume) else read_volume(ct)
    labelmap = seg if isinstance(seg, Labelmap) else read_labelmap(seg, label_scheme)
    check_same_grid(labelmap, ct_volume, "the segmentation")
    poses = _poses_of(folder, labelmap)
    doubted = [] if keep_doubted else [name for name in poses if folder.vertebrae[name].verdict == "doubt"]
    trusted = {name: matrix for name, matrix in poses.items() if name not in doubted}
    if not trusted:
        raise InputError(f"every vertebra of the result says doubt ({', '.join(doubted)}): nothing to build the "
                         "deformation from; give --keep-doubted to use their poses anyway")
    held = [] if folder.document.get("method") == "learned" else list(trusted)
    case = None
    if xrays or geometries:
        case = load_case(RegisterConfig(ct=ct_volume, seg=labelmap, xrays=list(xrays), geometries=list(geometries),
                                        vertebrae=list(poses), invert=invert, method="intensity", device=device,
                                        views=None))
    extent = (np.array(labelmap.volume.shape_ijk) - 1) * labelmap.volume.spacing_mm
    check_memory(int(np.prod(np.floor(extent / config.spacing_mm) + 1)), BYTES_PER_NODE, config.spacing_mm)

    refinement = None
    starts = poses  # where each registered vertebra's refinement starts
    # Nothing to refine when every pose is held: no 50 Adam steps that move nothing.
    if case is not None and refine_poses and len(held) < len(poses):
        start = polyrigid_field(labelmap, trusted, config)
        starts = {name: start.poses[name] if name in doubted else poses[name] for name in poses}
        start_field = start.field
        shown = [-1]

        def refine_progress(fraction: float) -> None:  # "refine 40%" every 10 %
            if int(10 * fraction) > shown[0]:
                shown[0] = int(10 * fraction)
                say(f"refine {10 * shown[0]}%")

        refinement = refine_jointly(ct_volume, labelmap, starts, start_field, case.xrays, case.geometries,
                                    refine, case.device, progress=refine_progress, held=held)
        registered = {name: refinement.poses[name] for name in poses}
        del start, start_field
    else:
        registered = trusted
    say("field")
    built = polyrigid_field(labelmap, registered, config)
    say("jacobian")
    jacobian = jacobian_stats(built.field)
    residuals = rigid_residuals(built.field, labelmap, built.poses)
    say("warping")
    image = volume_to_image(labelmap.volume)
    warped_image = warp_image(image, built.field, image, labels=True)
    warped = Labelmap(labelmap.volume.with_array(sitk.GetArrayFromImage(warped_image)), labelmap.scheme)
    document = {
        "mode": "poses",
        "inputs": {"result": str(Path(folder.directory).absolute()), "ct": _path(ct), "seg": _path(seg),
                   "label_scheme": labelmap.scheme.name},
        "polyrigid": asdict(config) | {"rigid_margin_mm": config.margin_mm, "unfolded_nodes": built.unfolded_nodes},
        "jacobian": jacobian,
        "vertebrae": {
            name: {"registered": name in poses, "doubted": name in doubted, "matrix_ras": np.round(matrix, 9).tolist(),
                   "rigid_residual": residuals.get(name)} | _refinement_entry(refinement, name, starts, held, folder)
            for name, matrix in built.poses.items()
        },
        "refined": refinement is not None,
        "held": held if case is not None and refine_poses else [],
        "views": [] if case is None else case.views,
        "time_s": round(time.perf_counter() - started, 3),
    }
    drrs = {} if case is None else dict(zip(case.views, render_vertebra_drrs(case, built.poses)))
    return DeformOutput(built.field, warped, document, drrs)


def _refinement_entry(refinement: JointRefinement | None, name: str, starts: dict[str, np.ndarray],
                      held: list[str], folder: ResultFolder) -> dict:
    """A vertebra's refinement figures in deform.json: similarity before/after, how far it moved
    from its start (rotation, deg; its centre, mm); none for a vertebra ``held`` at its pose."""
    if refinement is None or name not in refinement.poses or name in held:
        return {}
    start, final = starts[name], refinement.poses[name]
    angle = rotation_error_deg(final, start)
    shift = translation_error_mm(final, start, folder.vertebrae[name].center_ras)
    return {"refinement": {"similarity_before": round(refinement.before[name], 4),
                           "similarity_after": round(refinement.after[name], 4),
                           "rotation_deg": round(angle, 3), "centre_shift_mm": round(shift, 3),
                           "kept_start": name in refinement.kept}}


def _poses_of(folder: ResultFolder, labelmap: Labelmap) -> dict[str, np.ndarray]:
    """The result's poses, checked to belong to ``labelmap``: every vertebra present and its centre
    the segmentation's centroid (a result of another CT or segmentation is refused)."""
    centres = centroids_ras(labelmap)
    poses = {}
    for name, entry in folder.vertebrae.items():
        if name not in centres:
            raise InputError(f"the result folder's vertebra {name} is not in the segmentation "
                             f"(present: {', '.join(centres)}): is the result from another CT?")
        offset = float(np.linalg.norm(np.asarray(entry.center_ras) - centres[name]))
        if offset > CENTRE_TOLERANCE_MM:
            raise InputError(f"the result folder's centre of {name} is {offset:.1f} mm from the segmentation's "
                             "centroid: the result comes from another CT or segmentation")
        poses[name] = np.asarray(entry.matrix_ras, dtype=np.float64)
    return poses


def _path(value) -> str | None:
    return None if isinstance(value, (Volume, Labelmap)) else str(Path(value).absolute())
