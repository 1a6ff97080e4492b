"""The global search of the rigid registration: a translation grid scored by gradient-NCC maps
in all views at once, trial rotations, and CMA-ES (the ``cmaes`` package)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.pose import params_to_matrix, params_to_matrix_torch
from ..errors import InputError
from ..geometry.triangulation import DetectorBox
from ..similarity import image_gradients
from .config import RigidConfig
from .problem import LevelProblem, VertebraDRR, View, crop_view, projected_window


def grid_search(
    vertebra: VertebraDRR, views: list[View], start: np.ndarray, config: RigidConfig, device,
    boxes: Sequence[DetectorBox] = (),
) -> list[np.ndarray]:
    """The best poses near ``start`` on a grid of translations x a few rotations.

    For each trial rotation (identity and +-``grid_rotation_deg`` about each axis, about
    the vertebra centre) the vertebra's DRR is a template; masked NCC maps of its
    gradients against each X-ray score every 2D shift, and every 3D translation of the
    grid is scored by the shifts it projects to in all views at once. Returns up to
    ``config.candidates`` poses, best first, with translations at least
    ``candidate_gap_mm`` apart: before the rotation is known a neighbouring vertebra can
    score nearly as well as the right one, so the next stages choose among them.

    ``boxes``: the vertebra's accepted boxes on the X-rays; a translation that puts its centre's
    projection outside one of them loses more than any score can win, so the candidates are
    the translations inside all of them (when there are any) and the neighbours are out.
    """
    center_world = vertebra.center_world(start)
    axis = np.arange(-config.search_mm, config.search_mm + 1e-6, config.search_step_mm)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    # The trial rotations turn about the centre, so where each translation projects, and the
    # boxes' verdict on it, are the same for all of them.
    shifts = [view.geometry.project(center_world + grid) - view.geometry.project(center_world)[None] for view in views]
    outside = (2 * len(views) + 1) * sum(~box.holds(center_world + grid) for box in boxes)
    scored = []  # (score, translation, rotated start)
    for rotated in trial_rotations(start, center_world, config.grid_rotation_deg):
        score = np.zeros(len(grid))
        pose = torch.as_tensor(rotated, dtype=torch.float32, device=device)[None]
        for view, shift in zip(views, shifts):
            reach_px = int(math.ceil(config.search_mm * view.geometry.magnification(center_world)
                                     / min(view.geometry.pixel_spacing) * math.sqrt(2))) + 2
            window = projected_window(vertebra, rotated, view, 2)
            template_geometry = crop_view(view, window).geometry
            with torch.no_grad():
                template = vertebra.render(pose, template_geometry)[0]
            weight = vertebra.support(pose, template_geometry, max(1, int(round(config.weight_dilate_mm
                                                                              / template_geometry.pixel_spacing[0]))))
            c0, r0, cols, rows = window
            search = crop_view(view, (c0 - reach_px, r0 - reach_px, cols + 2 * reach_px, rows + 2 * reach_px))
            ncc_map = gradient_ncc_map(template, weight, search.image.to(device))
            score += bilinear(ncc_map, shift[:, 1] + reach_px, shift[:, 0] + reach_px)
        score -= outside
        best = np.argsort(-score)[: 50 * config.candidates]
        scored += [(score[index], grid[index], rotated) for index in best]
    scored.sort(key=lambda item: -item[0])
    poses, kept = [], []
    for _, shift, rotated in scored:
        if len(poses) == config.candidates:
            break
        if all(np.linalg.norm(shift - other) >= config.candidate_gap_mm for other in kept):
            kept.append(shift)
            moved = rotated.copy()
            moved[:3, 3] += shift
            poses.append(moved)
    return poses


def trial_rotations(start: np.ndarray, center_world: np.ndarray, angle_deg: float) -> list[np.ndarray]:
    """``start`` and ``start`` turned by +-angle about each world axis through ``center_world``."""
    poses = [start]
    if angle_deg > 0:
        for axis in range(3):
            for sign in (-1.0, 1.0):
                params = np.zeros(6)
                params[axis] = sign * angle_deg
                turn = params_to_matrix(params, center_world)
                poses.append(turn @ start)
    return poses


def gradient_ncc_map(template: torch.Tensor, weight: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    """Masked NCC of the template's Sobel gradients at every offset inside ``image`` (valid region).

    Map index (dr, dc) is the template's top-left corner at image (dr, dc); the mean over
    the two derivative directions is returned as a (rows', columns') numpy array.
    """
    maps = []
    for t_grad, i_grad in zip(image_gradients(template), image_gradients(image)):
        w = weight[None, None]
        count = w.sum()
        t = (t_grad - (w[0, 0] * t_grad).sum() / count) * weight
        t_norm = torch.sqrt((t * t).sum()).clamp(min=1e-8)
        img = i_grad[None, None]
        numerator = F.conv2d(img, t[None, None])
        mean_i = F.conv2d(img, w) / count
        var_i = (F.conv2d(img * img, w) - count * mean_i**2).clamp(min=0)
        maps.append((numerator / (t_norm * torch.sqrt(var_i) + 1e-8))[0, 0])
    return (0.5 * (maps[0] + maps[1])).cpu().numpy()


def bilinear(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a 2D array at fractional (rows, cols); -1 outside."""
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    inside = (r0 >= 0) & (c0 >= 0) & (r0 + 1 < values.shape[0]) & (c0 + 1 < values.shape[1])
    r0, c0 = np.where(inside, r0, 0), np.where(inside, c0, 0)
    out = (values[r0, c0] * (1 - fr) * (1 - fc) + values[r0 + 1, c0] * fr * (1 - fc)
           + values[r0, c0 + 1] * (1 - fr) * fc + values[r0 + 1, c0 + 1] * fr * fc)
    return np.where(inside, out, -1.0)


def cmaes_search(problem: LevelProblem, start: np.ndarray, center_world: np.ndarray, sigma_deg: float,
           sigma_mm: float, evaluations: int, seed: int, device) -> tuple[np.ndarray, float]:
    """CMA-ES over (rotation deg, translation mm) about ``center_world``; returns the best pose and its score."""
    try:
        from cmaes import CMA
    except ImportError as error:
        raise InputError("the CMA-ES stage needs the cmaes package: pip install cmaes") from error
    scale = np.array([sigma_deg] * 3 + [sigma_mm] * 3)
    optimizer = CMA(mean=np.zeros(6), sigma=1.0, seed=seed, bounds=np.tile([-3.0, 3.0], (6, 1)))
    start_t = torch.as_tensor(start, dtype=torch.float32, device=device)
    center_t = torch.as_tensor(center_world, dtype=torch.float32, device=device)
    best, best_score = np.zeros(6), -np.inf
    for _ in range(max(1, evaluations // optimizer.population_size)):
        candidates = np.stack([optimizer.ask() for _ in range(optimizer.population_size)])
        params = torch.as_tensor(candidates * scale, dtype=torch.float32, device=device)
        params[:, :3] = torch.deg2rad(params[:, :3])
        poses = params_to_matrix_torch(params, center_t) @ start_t
        with torch.no_grad():
            scores = problem.similarity(poses).cpu().numpy()
        optimizer.tell([(x, -s) for x, s in zip(candidates, scores)])
        if scores.max() > best_score:
            best_score, best = float(scores.max()), candidates[int(np.argmax(scores))]
    params = torch.as_tensor(best * scale, dtype=torch.float32, device=device)[None]
    params[:, :3] = torch.deg2rad(params[:, :3])
    return (params_to_matrix_torch(params, center_t)[0] @ start_t).double().cpu().numpy(), best_score


def global_search(
    vertebra: VertebraDRR, coarse: list[View], pose: np.ndarray, config: RigidConfig, device,
    boxes: Sequence[DetectorBox] = (),
) -> list[tuple[np.ndarray, float]]:
    """Candidate poses with their coarse-level scores (-inf where none was computed); ``boxes``: see
    :func:`grid_search`."""
    candidates = [pose]
    if config.global_search.startswith("grid"):
        candidates = grid_search(vertebra, coarse, pose, config, device, boxes)
    if "cmaes" not in config.global_search:
        return [(candidate, -np.inf) for candidate in candidates]
    wide = config.global_search == "cmaes"
    reach_mm = config.search_mm if wide else 3 * config.polish_sigma_mm
    margin = [int(math.ceil(reach_mm * 1.7 / v.geometry.pixel_spacing[0])) for v in coarse]
    polished = []
    for index, candidate in enumerate(candidates):
        problem = LevelProblem(vertebra, coarse, candidate, margin, device, config.weight_dilate_mm)
        polished.append(cmaes_search(
            problem, candidate, vertebra.center_world(candidate),
            config.cmaes_sigma_deg if wide else config.polish_sigma_deg,
            config.cmaes_sigma_mm if wide else config.polish_sigma_mm,
            config.cmaes_evaluations if wide else config.cmaes_evaluations // 2, config.seed + index, device,
        ))
    return polished
