"""Per-vertebra biplanar rigid registration: find the pose (CT RAS -> world) of one vertebra
that makes its DRRs match the AP and LAT X-rays.

Stages, coarse to fine over a pyramid of detector resolutions (``RigidConfig.pixel_mm``):

1. Global search (wide capture range) at the coarsest level, one of
   - ``"grid"``: the vertebra's DRR at the start pose is a template; masked NCC maps of its
     gradients against each X-ray give 2D shift scores; every 3D translation on a grid
     (``search_mm`` half-range) is scored by the shifts it projects to in both views at once
     (so the two views must agree), and the best one is kept;
   - ``"cmaes"``: CMA-ES (the ``cmaes`` package) over the 6 pose parameters;
   - ``"none"``: start from the initial pose.
2. Gradient refinement at every level: Adam on a rotation vector (about the vertebra's
   current centre) and a translation, maximising :func:`.similarity.vertebra_similarity`
   through the differentiable DRR of the vertebra alone, inside the projected ROI.

The verdict (:mod:`.verdict`) compares the final similarity (the objective set up afresh at
the final pose) with ``doubt_below`` and the refinement's own score with
``optimiser_doubt_below`` (``edge_*`` for a vertebra the CT ends next to), the winner's lead
over rival candidates elsewhere with ``ambiguity_margin``, its lead over the pose moved towards
the neighbouring levels (the level margin) with ``level_vouch`` and ``level_doubt_below``, and,
wherever it could change the verdict (a doubt it could lift: a low similarity, a weak view; a
pass it could doubt), the vertebra's own evidence with ``evidence_vouch`` and
``evidence_doubt_below``.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from ..core.box import OrientedBox
from ..core.pose import matrix_to_params
from ..core.volume import Volume, scan_end_distance_mm
from ..errors import InputError
from ..geometry import XrayGeometry
from ..geometry.triangulation import DetectorBox
from ..io.results import VertebraResult
from .config import Progress, RigidConfig
from .problem import VertebraDRR, prepare_xray, pyramid
from .refine import refine_level
from .search import global_search
from .verdict import final_similarities, judge, level_margin, needs_evidence, vertebra_evidence


def register_vertebra(
    name: str,
    mu: Volume,
    mask: np.ndarray,
    xrays: Sequence[np.ndarray],
    geometries: Sequence[XrayGeometry],
    init: np.ndarray | None = None,
    config: RigidConfig | None = None,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    region: OrientedBox | None = None,
    boxes: Sequence[DetectorBox] = (),
    neighbour_offsets: Sequence[np.ndarray] = (),
) -> VertebraResult:
    """Register one vertebra (``mask`` (K, J, I) in the CT ``mu``, 1/mm) to biplanar X-rays.

    ``xrays``: (rows, columns) arrays, bone bright, one per geometry. ``init``: (4, 4)
    starting matrix_ras (default identity). ``region``: the user's box (CT RAS) bounding what
    is compared (:class:`.problem.VertebraDRR`); ``boxes``: the vertebra's accepted boxes on
    the X-rays, which the translation grid does not leave (:func:`.search.grid_search`);
    ``neighbour_offsets``: CT RAS mm from the vertebra's centroid to its labelled neighbours'
    (:func:`..core.labelmap.neighbour_offsets`), which the verdict's level margin reads (none: not read).
    """
    started = time.perf_counter()
    config = RigidConfig() if config is None else config
    if len(xrays) != len(geometries) or not xrays:
        raise InputError(f"need one geometry per X-ray, got {len(xrays)} X-rays and {len(geometries)} geometries")
    for index, (xray, geometry) in enumerate(zip(xrays, geometries)):
        if tuple(np.asarray(xray).shape[::-1]) != geometry.size:
            raise InputError(
                f"X-ray {index + 1} is {np.asarray(xray).shape[1]}x{np.asarray(xray).shape[0]} pixels "
                f"but its geometry says {geometry.columns}x{geometry.rows}"
            )
    device = torch.device(device)
    vertebra = VertebraDRR(mu, mask, config.roi_margin_mm, device, config.context_mm, config.full_depth, region)
    pose = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
    for geometry in geometries:
        if not geometry.sees(vertebra.center_world(pose)[None])[0]:
            raise InputError(f"vertebra {name} is not seen by every X-ray at the initial pose "
                             "(its centre projects outside a detector)")
    levels = [pyramid(prepare_xray(x), g, config.pixel_mm) for x, g in zip(xrays, geometries)]
    stages = []

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(f"{name}: {stage}", fraction)

    report("global search", 0.0)
    coarse = [views[0] for views in levels]
    candidates = global_search(vertebra, coarse, pose, config, device, boxes)
    stages.append({"stage": f"global:{config.global_search}", "evaluations": vertebra.evaluations,
                   "scores": [round(float(score), 4) for _, score in candidates],
                   "time_s": round(time.perf_counter() - started, 3)})
    # Tournament: every candidate close to the best coarse score is refined through all but
    # the finest level, where the anatomy (not just the outline) decides between levels.
    best_coarse = max(score for _, score in candidates)
    finalists = [pose for pose, score in candidates if score >= best_coarse - config.tournament_margin]
    last = max(1, len(levels[0]) - 1)
    refined = []
    for index, candidate in enumerate(finalists):
        report(f"candidate {index + 1}/{len(finalists)}", 0.2 + 0.6 * index / len(finalists))
        score = -np.inf
        for level in range(min(last, len(levels[0]))):
            candidate, score = refine_level(vertebra, [v[level] for v in levels], candidate, level, config, device)
        refined.append((score, candidate))
    refined.sort(key=lambda item: -item[0])
    similarity, pose = refined[0]
    rivals = [similarity - score for score, other in refined[1:]
              if np.linalg.norm(other[:3, 3] - pose[:3, 3]) >= config.candidate_gap_mm]
    stages.append({"stage": "tournament", "finalists": len(finalists), "scores": [round(s, 4) for s, _ in refined],
                   "evaluations": vertebra.evaluations, "time_s": round(time.perf_counter() - started, 3)})
    for level in range(last, len(levels[0])):
        report(f"level {level + 1}/{len(levels[0])}", 0.9)
        pose, similarity = refine_level(vertebra, [v[level] for v in levels], pose, level, config, device)
        stages.append({"stage": f"level{level + 1}", "evaluations": vertebra.evaluations,
                       "time_s": round(time.perf_counter() - started, 3)})
    margin = rivals[0] if rivals else None
    optimiser_similarity = float(similarity)
    views = final_similarities(vertebra, levels, pose, config, device)
    similarity = float(np.mean(views))
    level_lead = level_margin(vertebra, levels, pose, neighbour_offsets, config, device)
    scan_end = scan_end_distance_mm(vertebra.mask, mu)
    readings = (similarity, margin, config, optimiser_similarity, scan_end, views, level_lead)
    verdict, reason = judge(*readings)
    evidence = None
    if needs_evidence(*readings):
        report("vertebra evidence", 0.95)
        evidence = vertebra_evidence(vertebra, levels, pose, config, device)
        verdict, reason = judge(*readings, evidence)
    report("done", 1.0)
    return VertebraResult(
        name=name,
        matrix_ras=pose,
        params=matrix_to_params(pose, vertebra.center_ras),
        center_ras=vertebra.center_ras,
        similarity=float(similarity),
        verdict=verdict,
        verdict_reason=reason,
        time_s=time.perf_counter() - started,
        evaluations=vertebra.evaluations,
        rival_margin=margin,
        view_similarities=views,
        optimiser_similarity=optimiser_similarity,
        level_margin=level_lead,
        vertebra_evidence=evidence,
        stages=stages,
    )
