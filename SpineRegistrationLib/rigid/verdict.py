"""The verdict on a rigid registration result: ``pass`` or ``doubt``, and why."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..similarity import partial_gradient_ncc, vertebra_similarity
from .config import RigidConfig
from .problem import LevelProblem, VertebraDRR, View
from .refine import adam_refine, level_problem

#: Reasons written with a ``doubt`` verdict (result.json ``verdict_reason``).
LOW_SIMILARITY = "low similarity"
RIVAL_ELSEWHERE = "rival at another place"
RIVAL_LEVEL = "rival at another level"
NETWORK_ONLY = "network only, not refined"
VIEW_DISAGREES = "a view disagrees"
CUT_BY_CT = "vertebra cut by the CT's end"
WEAK_EVIDENCE = "weak vertebra evidence"
#: Said with LOW_SIMILARITY for a vertebra the CT ends next to (:func:`at_ct_edge`).
AT_CT_EDGE = "vertebra at the CT's edge"


def judge(similarity: float, rival_margin: float | None, config: RigidConfig,
          optimiser_similarity: float | None = None, scan_end_mm: float | None = None,
          view_similarities: list[float] | None = None,
          level_margin: float | None = None, evidence: float | None = None) -> tuple[str, str | None]:
    """("pass", None) or ("doubt", reason) for a final ``similarity`` (:func:`final_similarities`,
    averaged over ``view_similarities``, each view's; None: not known), the lead over the best
    rival candidate at another place (None when the search kept none), the refinement's own
    best score at the finest level (None: not known), the vertebra's distance to the nearer end
    of the CT's scanned range (mm, :func:`..core.volume.scan_end_distance_mm`; None: not known),
    the result's lead over the neighbouring levels (:func:`level_margin`; None: not known) and
    the vertebra's own evidence (:func:`vertebra_evidence`; None: not read).

    A vertebra the CT cuts (``scan_end_mm`` 0: part of it lies outside the scan) is doubted: the
    DRR lacks bone that the X-ray shows, and no similarity vouches for its pose. The similarity is
    low when ``similarity`` is under ``doubt_below`` and the refinement's score under
    ``optimiser_doubt_below``: each alone is fooled by one kind of case (see
    :class:`.config.RigidConfig`), a result is doubted when neither vouches for it. A vertebra at
    the CT's edge (:func:`at_ct_edge`) is held to ``edge_doubt_below`` and
    ``edge_optimiser_doubt_below`` instead, and the reason says so. A view under
    ``view_doubt_below`` disagrees with the pose whatever the other says (one view alone leaves
    the depth along its beam free to go wrong).

    The level margin compares within the case, where the similarities meet thresholds common to
    every case: a result that stands out from the neighbouring levels by ``level_vouch`` is held
    to ``level_vouched_doubt_below`` instead of ``optimiser_doubt_below`` (vertebrae over the liver
    or behind the shoulders score low at right poses, but the places of their neighbours score
    lower still; not at the CT's edge, where the context is cut), and a result that scores under
    another level (margin under ``level_doubt_below``) is doubted whatever it scores.

    The vertebra evidence is a third similarity reading: a result whose X-ray holds the vertebra's
    own edges (``evidence`` of ``evidence_vouch`` or more, not at the CT's edge) is not doubted for
    a low similarity, whose readings are lowered when the vertebra moved against the rest of the
    patient, and its views are held to ``view_vouched_doubt_below`` instead of ``view_doubt_below``;
    the other reasons still apply. A result whose evidence is under ``evidence_doubt_below`` (not at
    the CT's edge) is doubted whatever it scores: the neighbours' edges explain its X-ray.
    """
    if scan_end_mm is not None and scan_end_mm <= 0.0:
        return "doubt", CUT_BY_CT
    edge = scan_end_mm is not None and at_ct_edge(scan_end_mm, config)
    fresh, refined = ((config.edge_doubt_below, config.edge_optimiser_doubt_below) if edge
                      else (config.doubt_below, config.optimiser_doubt_below))
    if not edge and level_margin is not None and level_margin >= config.level_vouch:
        refined = min(refined, config.level_vouched_doubt_below)
    vouched = not edge and evidence is not None and evidence >= config.evidence_vouch
    own = "" if evidence is None or vouched else f"; vertebra evidence {evidence:.3f} < {config.evidence_vouch:g}"
    if similarity < fresh and (optimiser_similarity is None or optimiser_similarity < refined) and not vouched:
        where = f", {AT_CT_EDGE}" if edge else ""
        return "doubt", f"{LOW_SIMILARITY} ({similarity:.3f} < {fresh:g}{where}{own})"
    if not edge and evidence is not None and evidence < config.evidence_doubt_below:
        return "doubt", f"{WEAK_EVIDENCE} ({evidence:.3f} < {config.evidence_doubt_below:g})"
    view_floor = config.view_vouched_doubt_below if vouched else config.view_doubt_below
    if view_similarities and min(view_similarities) < view_floor:
        view = int(np.argmin(view_similarities))
        return "doubt", f"{VIEW_DISAGREES} (view {view + 1}: {view_similarities[view]:.3f} < {view_floor:g}{own})"
    if level_margin is not None and level_margin < config.level_doubt_below:
        return "doubt", f"{RIVAL_LEVEL} (margin {level_margin:.3f} < {config.level_doubt_below:g})"
    if rival_margin is not None and rival_margin < config.ambiguity_margin:
        return "doubt", f"{RIVAL_ELSEWHERE} (margin {rival_margin:.3f} < {config.ambiguity_margin:g})"
    return "pass", None


def needs_evidence(*readings) -> bool:
    """Could the vertebra evidence change :func:`judge`'s verdict on ``readings`` (its arguments from
    ``similarity`` to ``level_margin``, in order), either way? The evidence costs a short fit, so it
    is read only then: away from the CT's edge, for a result that passes (a weak evidence doubts it)
    or that only a low similarity or a view under ``view_doubt_below`` doubts (a strong one lifts
    that); not where another rule doubts the result whatever the evidence says."""
    return judge(*readings, evidence=math.inf)[0] != judge(*readings, evidence=-math.inf)[0]


def at_ct_edge(scan_end_mm: float, config: RigidConfig) -> bool:
    """Does the CT end within ``config.ct_edge_mm`` of the vertebra? ``scan_end_mm``: its distance to
    the nearer end of the scanned range (:func:`..core.volume.scan_end_distance_mm`)."""
    return scan_end_mm < config.ct_edge_mm


def final_similarities(vertebra: VertebraDRR, levels: list[list[View]], pose: np.ndarray, config: RigidConfig,
                       device) -> list[float]:
    """Each view's similarity at ``pose``, at the finest level, with the objective set up at ``pose``
    (``levels``: per view, its pyramid).

    What the verdict reads: the optimiser's own best score was taken on a problem set up where
    its level started (the weight and, at the finest level, the fixed context stay there), which
    flatters a pose that wandered off (the real CT's T1 of bench_real_ct case 0: 0.72 there,
    0.49 set up afresh, 0.55 at the truth).
    """
    finest = len(levels[0]) - 1
    return similarities_at(vertebra, [views[finest] for views in levels], pose, finest, config, device)


def similarities_at(vertebra: VertebraDRR, views: list[View], pose: np.ndarray, level: int, config: RigidConfig,
                    device) -> list[float]:
    """Each view's similarity at ``pose`` with the objective of pyramid ``level`` set up at ``pose``
    (``views``: that level's)."""
    problem = level_problem(vertebra, views, pose, level, config, device)
    with torch.no_grad():
        scores = problem.view_similarities(torch.as_tensor(pose, dtype=torch.float32, device=device)[None])[:, 0]
    return [float(score) for score in scores]


def level_margin(vertebra: VertebraDRR, levels: list[list[View]], pose: np.ndarray,
                 neighbour_offsets: Sequence[np.ndarray], config: RigidConfig, device) -> float | None:
    """How far the similarity at ``pose`` stands above the best at the same pose moved along the
    spine by each of ``config.level_shifts`` (fractions) of each neighbour offset (CT RAS mm, from the
    vertebra's centroid to a neighbour's: :func:`..core.labelmap.neighbour_offsets`), rotated
    with the pose: where the neighbours lie if the result is right, and halfway there. None when no
    offset is given or no shifted pose is seen by every view.

    Read at the level before the finest (its wide weight, the context moving with the vertebra):
    there the context, ribs and organs, tells the levels apart, and neighbours that moved a few
    millimetres on their own are under two pixels. Each pose is set up afresh, without refinement.
    """
    level = max(0, len(levels[0]) - 2)
    views = [per_view[level] for per_view in levels]

    def score(at: np.ndarray) -> float:
        return float(np.mean(similarities_at(vertebra, views, at, level, config, device)))

    rivals = []
    for offset in neighbour_offsets:
        for fraction in config.level_shifts:
            shifted = np.array(pose, dtype=np.float64)
            shifted[:3, 3] += fraction * (shifted[:3, :3] @ np.asarray(offset, dtype=np.float64))
            if all(view.geometry.sees(vertebra.center_world(shifted)[None])[0] for view in views):
                rivals.append(score(shifted))
    return score(np.asarray(pose, dtype=np.float64)) - max(rivals) if rivals else None


class _HeldVertebra:
    """The objective of the background alone at one pyramid level: the context without the vertebra
    at the poses tried, the vertebra's attenuation held where it was drawn (``problem``'s crops,
    X-rays and weights)."""

    def __init__(self, vertebra: VertebraDRR, problem: LevelProblem, held: torch.Tensor):
        self.vertebra, self.problem = vertebra, problem
        with torch.no_grad():
            self.excess = [vertebra.render_excess(held, crop.geometry) for crop in problem.crops]

    def similarity(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) background poses -> (B,) mean similarity over the views."""
        scores = [vertebra_similarity(self.vertebra.render_background(poses, crop.geometry) + excess, image, weight)
                  for crop, excess, image, weight in zip(self.problem.crops, self.excess, self.problem.images,
                                                         self.problem.weights)]
        return torch.stack(scores).mean(0)


def vertebra_evidence(vertebra: VertebraDRR, levels: list[list[View]], pose: np.ndarray, config: RigidConfig,
                      device) -> float:
    """How much of the X-rays' edges the vertebra alone explains at ``pose``: the partial correlation of
    each X-ray's gradients with the vertebra's (its attenuation above soft tissue), the background's
    (the context without it) regressed out (:func:`..similarity.partial_gradient_ncc`), where the
    vertebra projects at the finest level, averaged over the views.

    The background is first re-posed on its own (``evidence_steps`` Adam steps at the level before
    the finest, its wide weight, the vertebra held at ``pose``): after the vertebra moved against the
    rest of the patient, a background drawn at its pose would leave edges the vertebra does not
    make. At a right pose the X-ray holds the vertebra's edges beyond the background's; at a wrong
    one, what lies under it (a neighbour, ribs) is already the background's.
    """
    held = torch.as_tensor(pose, dtype=torch.float32, device=device)[None]
    level = max(0, len(levels[0]) - 2)
    fit = _HeldVertebra(vertebra, level_problem(vertebra, [views[level] for views in levels], pose, level, config,
                                                device), held)
    background_pose, _ = adam_refine(fit, pose, vertebra.center_world(pose), config.evidence_steps,
                                     config.lr_deg * 0.5**level, config.lr_mm * 0.5**level, device)
    finest = len(levels[0]) - 1
    problem = level_problem(vertebra, [views[finest] for views in levels], pose, finest, config, device)
    background_t = torch.as_tensor(background_pose, dtype=torch.float32, device=device)[None]
    with torch.no_grad():
        scores = [partial_gradient_ncc(image, vertebra.render_background(background_t, crop.geometry)[0],
                                       vertebra.render_excess(held, crop.geometry)[0], weight)
                  for crop, image, weight in zip(problem.crops, problem.images, problem.weights)]
    return float(torch.stack(scores).mean())
