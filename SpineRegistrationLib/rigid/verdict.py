"""The verdict on a rigid registration result: ``pass`` or ``doubt``, and why."""

from __future__ import annotations

import math

import numpy as np
import torch

from .config import RigidConfig
from .problem import VertebraDRR, View, delta_pose
from .refine import level_problem

#: Reasons written with a ``doubt`` verdict (result.json ``verdict_reason``).
LOW_SIMILARITY = "low similarity"
RIVAL_ELSEWHERE = "rival at another place"
NETWORK_ONLY = "network only, not refined"


def judge(similarity: float, rival_margin: float | None, config: RigidConfig,
          quality: dict | None = None) -> tuple[str, str | None]:
    """("pass", None) or ("doubt", reason) for a final ``similarity``, the lead over the best
    rival candidate at another place (None when the search kept none) and the measurements of
    :func:`assess` (None: not taken)."""
    if similarity < config.doubt_below:
        return "doubt", f"{LOW_SIMILARITY} ({similarity:.3f} < {config.doubt_below:g})"
    if rival_margin is not None and rival_margin < config.ambiguity_margin:
        return "doubt", f"{RIVAL_ELSEWHERE} (margin {rival_margin:.3f} < {config.ambiguity_margin:g})"
    return "pass", None


#: Steps of the sharpness probe: the final pose moved by this (mm, and degrees about the
#: vertebra centre) along each axis, both ways.
PROBE_MM = 1.5
PROBE_DEG = 1.5


def assess(vertebra: VertebraDRR, levels: list[list[View]], pose: np.ndarray, config: RigidConfig,
           device) -> dict:
    """What the verdict reads at a final ``pose`` (``levels``: per view, its pyramid).

    fine: per-view similarity at the finest level (the objective); context: per-view
    similarity one level coarser with the context moving and the wide weight (whether the
    surroundings agree: a neighbour's level rarely does); sharpness: per view, the fine
    similarity's drop when the pose moves by ``PROBE_MM`` / ``PROBE_DEG`` along each of the
    six axes (mean over the 12 probes): a right pose sits on a peak.
    """
    finest = len(levels[0]) - 1
    matrix = torch.as_tensor(pose, dtype=torch.float32, device=device)[None]
    center = torch.as_tensor(pose[:3, :3] @ vertebra.center_ras + pose[:3, 3], dtype=torch.float32,
                             device=device)[None]
    steps = torch.cat([torch.eye(6, device=device), -torch.eye(6, device=device)])
    probes = delta_pose(steps[:, :3] * math.radians(PROBE_DEG), steps[:, 3:] * PROBE_MM, center.expand(12, 3),
                        matrix.expand(12, 4, 4))
    with torch.no_grad():
        fine = level_problem(vertebra, [v[finest] for v in levels], pose, finest, config, device)
        scores = fine.view_similarities(torch.cat([matrix, probes]))
        coarser = max(0, finest - 1)
        context = level_problem(vertebra, [v[coarser] for v in levels], pose, coarser, config, device)
        context_scores = context.view_similarities(matrix)[:, 0]
    return {
        "fine": [round(float(x), 4) for x in scores[:, 0]],
        "context": [round(float(x), 4) for x in context_scores],
        "sharpness": [round(float(x), 4) for x in scores[:, 0] - scores[:, 1:].mean(1)],
    }
