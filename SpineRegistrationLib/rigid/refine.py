"""Local refinement of the rigid registration at one pyramid level: Adam through the
differentiable DRR (or CMA-ES for the gradient-free baseline)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .config import RigidConfig
from .problem import LevelProblem, VertebraDRR, View, delta_pose
from .search import cmaes_search


def adam_refine(problem: LevelProblem, start: np.ndarray, center_world: np.ndarray, iterations: int,
          lr_deg: float, lr_mm: float, device) -> tuple[np.ndarray, float]:
    """Adam on (rotation vector, translation) about ``center_world``; returns the best pose seen and its score."""
    start_t = torch.as_tensor(start, dtype=torch.float32, device=device)[None]
    center_t = torch.as_tensor(center_world, dtype=torch.float32, device=device)[None]
    rotvec = torch.zeros(1, 3, device=device, requires_grad=True)
    translation = torch.zeros(1, 3, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [rotvec], "lr": math.radians(lr_deg)},
                                  {"params": [translation], "lr": lr_mm}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, iterations), eta_min=0.0)
    best_pose, best_score = start, -np.inf
    if iterations == 0:
        with torch.no_grad():
            return start, float(problem.similarity(start_t)[0])
    for _ in range(iterations):
        optimizer.zero_grad()
        pose = delta_pose(rotvec, translation, center_t, start_t)
        score = problem.similarity(pose)[0]
        if score.item() > best_score:
            best_score, best_pose = score.item(), pose[0].detach().double().cpu().numpy()
        (-score).backward()
        optimizer.step()
        schedule.step()
    return best_pose, best_score


def level_problem(
    vertebra: VertebraDRR, views: list[View], pose: np.ndarray, level: int, config: RigidConfig, device
) -> LevelProblem:
    """The objective of pyramid ``level`` around ``pose``: the finest level's narrow weight and
    fixed context, the wide weight and moving context at the others."""
    margin = [max(2, int(math.ceil(3.0 / v.geometry.pixel_spacing[0]))) for v in views]
    finest = level == len(config.pixel_mm) - 1
    return LevelProblem(vertebra, views, pose, margin, device,
                        config.fine_dilate_mm if finest else config.weight_dilate_mm,
                        fixed_context=finest and config.fixed_context_at_finest)


def refine_level(
    vertebra: VertebraDRR, views: list[View], pose: np.ndarray, level: int, config: RigidConfig, device
) -> tuple[np.ndarray, float]:
    """One pyramid level of local optimisation (Adam, or CMA-ES for the gradient-free baseline)."""
    problem = level_problem(vertebra, views, pose, level, config, device)
    center_world = vertebra.center_world(pose)
    if config.cmaes_all_levels:
        shrink = 0.25 * 0.5**level
        return cmaes_search(problem, pose, center_world, config.cmaes_sigma_deg * shrink, config.cmaes_sigma_mm * shrink,
                      config.cmaes_evaluations // 2, config.seed + level, device)
    return adam_refine(problem, pose, center_world, config.iterations[level], config.lr_deg * 0.5**level,
                 config.lr_mm * 0.5**level, device)
