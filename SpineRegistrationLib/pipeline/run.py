"""Running a registration job: every vertebra of a checked case registered, and its result folder.

Three steps, each usable alone from Python (the CLI is a thin layer over them)::

    config = RegisterConfig(ct="ct.nii.gz", seg="seg.nii.gz", xrays=["AP.png", "LAT.png"],
                            geometries=["AP.json", "LAT.json"], vertebrae=["L1", "L2"])
    case = load_case(config)              # read + check everything (InputError, one line)
    results = register_case(case)         # list[VertebraResult], one per vertebra
    write_result("out/", results, case)   # result.json, L1.h5, L2.h5, drr_AP.nrrd, drr_LAT.nrrd

The folder's schema is :mod:`SpineRegistrationLib.io.results`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .. import __version__
from ..io.roi import roi_entry
from ..io.results import VertebraResult, drr_name, write_result_folder
from ..rigid import register_vertebra
from .inputs import DICOM_GEOMETRY, CaseInputs, RegisterConfig, is_dicom_keyword, is_path, load_case


@dataclass(frozen=True)
class CaseProgress:
    """What :func:`register_case` reports: vertebra ``index`` (1-based) of ``count``, its
    name, the stage it is in and the fraction of that vertebra done, in [0, 1]."""

    index: int
    count: int
    vertebra: str
    stage: str
    fraction: float


def register_case(
    case: CaseInputs | RegisterConfig, progress: Callable[[CaseProgress], None] | None = None,
    done: Mapping[str, VertebraResult] | None = None,
) -> list[VertebraResult]:
    """Register every vertebra of ``case`` (a :class:`RegisterConfig` is loaded first), one
    after the other, each from its start (:meth:`CaseInputs.start`: the initial pose, moved by
    its ROI or X-ray boxes); returns one result per vertebra, in order.

    progress: called with a :class:`CaseProgress` at each stage of each vertebra. done: results
    already known (name -> result, e.g. a resumed run's, from :class:`..io.journal.RunJournal`), taken
    as they are in their place, without progress.
    """
    return list(iter_register_case(case, progress, done))


def iter_register_case(
    case: CaseInputs | RegisterConfig, progress: Callable[[CaseProgress], None] | None = None,
    done: Mapping[str, VertebraResult] | None = None,
) -> Iterator[VertebraResult]:
    """:func:`register_case` one vertebra at a time: yields each result as soon as it is done."""
    import torch

    if isinstance(case, RegisterConfig):
        case = load_case(case)
    threads = case.config.threads
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    predictor = None
    if case.method in ("learned", "auto"):
        from ..learned.inference import PosePredictor, register_vertebra_learned

        predictor = PosePredictor(case.model, case.device)
    try:
        count = len(case.vertebrae)
        for index, name in enumerate(case.vertebrae, start=1):
            if done and name in done:
                yield done[name]
                continue

            def report(stage: str, fraction: float, index=index, name=name) -> None:
                if progress is not None:
                    stage = stage.removeprefix(f"{name}: ")
                    progress(CaseProgress(index, count, name, stage, float(fraction)))

            report("start", 0.0)
            if predictor is not None:
                yield register_vertebra_learned(
                    name, case.mu, case.mask(name), case.xrays, case.geometries, predictor, init=case.start(name),
                    config=case.config.rigid, refine=case.method == "auto", device=case.device, progress=report,
                    region=case.rois.get(name), boxes=case.boxes.get(name, ()),
                    neighbour_offsets=case.neighbour_offsets(name),
                )
                continue
            yield register_vertebra(
                name, case.mu, case.mask(name), case.xrays, case.geometries, init=case.start(name),
                config=case.config.rigid, device=case.device, progress=report,
                region=case.rois.get(name), boxes=case.boxes.get(name, ()),
                neighbour_offsets=case.neighbour_offsets(name),
            )
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)


def case_fingerprint(case: CaseInputs) -> str:
    """What decides the results of ``case``, hashed (:func:`..io.journal.fingerprint`): its input
    files' contents, the label scheme, --invert, the method, the model file and the rigid
    configuration. Paths and the device do not count."""
    from ..io.journal import fingerprint

    config = case.config
    files = [config.ct, config.seg, *config.xrays, *config.geometries, config.init, config.roi, config.boxes,
             case.model_path]
    return fingerprint(files, {"label_scheme": case.labelmap.scheme.name, "invert": bool(config.invert),
                               "method": case.method, "rigid": asdict(config.rigid)})


def render_vertebra_drrs(case: CaseInputs, poses: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per view, the sum of the vertebrae's DRRs at ``poses`` (name -> matrix_ras, any vertebra of
    the segmentation): (rows, columns) float32 optical depth, the X-ray's size."""
    import torch

    from ..render.drr import Detectors, DRRRenderer

    images = [np.zeros((g.rows, g.columns), np.float32) for g in case.geometries]
    detectors = [Detectors.from_geometries([g], device=case.device) for g in case.geometries]
    for name, matrix in poses.items():
        mask = case.labelmap.volume.array == case.labelmap.labels[name]
        renderer = DRRRenderer(case.mu, mask=mask).to(case.device)
        pose = torch.as_tensor(matrix, dtype=torch.float32, device=case.device)[None]
        with torch.no_grad():
            for image, detector in zip(images, detectors):
                image += renderer(pose, detector)[0, 0].cpu().numpy()
    return images


def _input_path(value) -> str | None:
    """An input as written to result.json: the absolute path of a file, None for an in-memory object."""
    if is_dicom_keyword(value):
        return DICOM_GEOMETRY
    return str(Path(value).absolute()) if is_path(value) else None


def result_document(case: CaseInputs, results: Sequence[VertebraResult], total_time_s: float | None = None) -> dict:
    """The ``result.json`` content but its header and vertebrae (:mod:`..io.results` adds them)."""
    config = case.config
    return {
        "software": f"SpineRegistration {__version__}",
        "frame": "RAS",
        "inputs": {
            "ct": _input_path(config.ct),
            "seg": _input_path(config.seg),
            "label_scheme": case.labelmap.scheme.name,
            "xrays": [_input_path(x) for x in config.xrays],
            "geometries": [_input_path(g) for g in config.geometries],
            "invert": bool(config.invert),
            "init": _input_path(config.init) if config.init is not None else None,
            "roi": _input_path(config.roi) if config.roi is not None else None,
            "boxes": _input_path(config.boxes) if config.boxes is not None else None,
        },
        "roi": {name: roi_entry(box) for name, box in case.rois.items()},
        "xray_boxes": {name: {box.view: np.asarray(box.corners_px).tolist() for box in boxes}
                       for name, boxes in case.boxes.items()},
        "start_matrix_ras": {name: start.tolist() for name, start in case.starts.items()},
        "views": {
            view: {"drr": drr_name(view), "geometry": geometry.to_json_dict()}
            for view, geometry in zip(case.views, case.geometries)
        },
        "init_matrix_ras": case.init.tolist(),
        "method": case.method,
        "method_requested": config.method,
        "model": None if case.model_path is None else str(case.model_path.absolute()),
        "device": case.device,
        "rigid_config": asdict(config.rigid),
        "total_time_s": round(float(sum(r.time_s for r in results) if total_time_s is None else total_time_s), 3),
    }


def write_result(
    directory: str | os.PathLike,
    results: Sequence[VertebraResult],
    case: CaseInputs,
    total_time_s: float | None = None,
) -> dict[str, Path]:
    """Write the result folder's files into the existing folder ``directory``.

    Returns name -> path: ``result`` (result.json), each vertebra name (its .h5) and
    ``drr_<VIEW>`` per view. Writing into a staging folder that is renamed when complete
    (:func:`..io.atomic.staged_output_dir`) is the caller's business.
    """
    drrs = render_vertebra_drrs(case, {r.name: r.matrix_ras for r in results})
    return write_result_folder(directory, result_document(case, results, total_time_s), list(results),
                               dict(zip(case.views, drrs)))
