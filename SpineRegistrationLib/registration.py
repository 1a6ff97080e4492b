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

The quality verdict compares the final similarity with ``doubt_below``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .drr import Detectors, DRRRenderer
from .errors import InputError
from .geometry import XrayGeometry
from .pose import matrix_to_params, params_to_matrix, params_to_matrix_torch, pose_matrix, rotvec_to_matrix
from .similarity import image_gradients, vertebra_similarity
from .volume import Volume, bounding_box_ijk, mask_center_ras

#: progress(stage, fraction in [0, 1]) callback type.
Progress = Callable[[str, float], None]


GLOBAL_SEARCHES = ("grid+cmaes", "grid", "cmaes", "none")


@dataclass
class RigidConfig:
    """Knobs of :func:`register_vertebra` (mm at the detector unless said otherwise).

    pixel_mm: detector pixel size of each pyramid level, coarse -> fine (never finer than
        the X-ray itself).
    iterations: Adam steps per level.
    lr_deg / lr_mm: Adam step sizes at the coarsest level (rotation in degrees,
        translation in mm); each finer level halves them.
    global_search: "grid+cmaes" (default: the translation grid, then CMA-ES around its
        best pose with ``polish_sigma_*``), "grid", "cmaes" or "none".
    search_mm / search_step_mm: half-range and step of the translation grid, per axis.
    grid_rotation_deg: trial rotations of the grid search (0: translations only).
    candidates / candidate_gap_mm: how many of the grid's best translations (at least the
        gap apart) CMA-ES polishes before the best one is kept.
    cmaes_sigma_deg / cmaes_sigma_mm / cmaes_evaluations: CMA-ES initial spread and budget
        when it searches alone ("cmaes").
    polish_sigma_deg / polish_sigma_mm: CMA-ES spread after the grid ("grid+cmaes"), which
        finds the rotation the translation grid does not search.
    cmaes_all_levels: also run CMA-ES instead of Adam at the finer levels (the
        gradient-free baseline).
    roi_margin_mm: the vertebra's 3D box grows by this (CT mm) before projection.
    tournament_margin: candidates within this coarse score of the best are all refined
        before one is chosen.
    doubt_below: final similarity under which the verdict is "doubt".
    ambiguity_margin: the verdict is also "doubt" when a rival candidate elsewhere (a
        wrong vertebra level, typically) scored within this of the winner.
    seed: seeds CMA-ES.
    """

    pixel_mm: tuple[float, ...] = (3.2, 1.6, 0.8)
    iterations: tuple[int, ...] = (20, 30, 15)
    lr_deg: float = 1.0
    lr_mm: float = 1.0
    global_search: str = "grid+cmaes"
    search_mm: float = 25.0
    search_step_mm: float = 1.0
    grid_rotation_deg: float = 7.0
    candidates: int = 3
    candidate_gap_mm: float = 12.0
    cmaes_sigma_deg: float = 5.0
    cmaes_sigma_mm: float = 8.0
    cmaes_evaluations: int = 400
    polish_sigma_deg: float = 7.0
    polish_sigma_mm: float = 2.0
    cmaes_all_levels: bool = False
    roi_margin_mm: float = 4.0
    tournament_margin: float = 0.05
    doubt_below: float = 0.5
    ambiguity_margin: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.global_search not in GLOBAL_SEARCHES:
            raise InputError(f"global_search must be one of {', '.join(GLOBAL_SEARCHES)}, got {self.global_search!r}")
        if len(self.pixel_mm) != len(self.iterations) or not self.pixel_mm:
            raise InputError(f"pixel_mm {self.pixel_mm} and iterations {self.iterations} need the same non-zero length")


@dataclass
class VertebraResult:
    """Registration result of one vertebra.

    matrix_ras: (4, 4) CT RAS -> world. params: (rx, ry, rz deg, tx, ty, tz mm) about
    center_ras (the vertebra centroid, CT RAS mm). similarity: final objective in [-1, 1].
    verdict: "pass" or "doubt". time_s: wall time. evaluations: DRR renders used.
    rival_margin: similarity lead over the best candidate at another place (typically the
    neighbouring vertebra level), None when the search kept no rival.
    """

    name: str
    matrix_ras: np.ndarray
    params: np.ndarray
    center_ras: np.ndarray
    similarity: float
    verdict: str
    time_s: float
    evaluations: int
    rival_margin: float | None = None
    stages: list[dict] = field(default_factory=list)


@dataclass
class _View:
    """One X-ray at one pyramid level: image (rows, columns) tensor and its geometry."""

    image: torch.Tensor
    geometry: XrayGeometry


def prepare_xray(image: np.ndarray) -> torch.Tensor:
    """An X-ray as float32 (rows, columns), robustly scaled to ~[0, 1] (1st-99th percentile)."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [1.0, 99.0])
    if not high > low:
        raise InputError("the X-ray is constant (no contrast): nothing to register to")
    return torch.from_numpy(((image - low) / (high - low)).astype(np.float32))


def pyramid(image: torch.Tensor, geometry: XrayGeometry, pixel_mm: Sequence[float]) -> list[_View]:
    """Area-averaged copies of the X-ray with the detector pixel size of each level."""
    views = []
    for target in pixel_mm:
        factor = max(1.0, target / min(geometry.pixel_spacing))
        level = geometry.scaled(factor) if factor > 1.0 else geometry
        pooled = F.adaptive_avg_pool2d(image[None, None], (level.rows, level.columns))[0, 0]
        views.append(_View(pooled, level))
    return views


class _Vertebra:
    """A vertebra's renderers (one per volume resolution), centre and 3D ROI corners (CT RAS)."""

    def __init__(self, mu: Volume, mask: np.ndarray, margin_mm: float, device) -> None:
        margin_vox = np.ceil(margin_mm / mu.spacing_mm).astype(int)
        self.roi = bounding_box_ijk(mask, margin_vox)
        self.mu, self.mask, self.device = mu, mask, device
        self.renderers: dict[int, DRRRenderer] = {}
        self.center_ras = mask_center_ras(mask, mu)
        start, stop = self.roi
        box = np.array([[a, b, c] for a in (start[0], stop[0] - 1) for b in (start[1], stop[1] - 1)
                        for c in (start[2], stop[2] - 1)], float)
        self.corners_ras = mu.ijk_to_ras_points(box)
        self.evaluations = 0

    def render(self, poses: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        """(B, 4, 4) -> (B, rows, columns) DRRs in one view, from a volume no finer than the pixels need."""
        self.evaluations += poses.shape[0]
        matrix = poses[0].detach().cpu().double().numpy()
        center_world = matrix[:3, :3] @ self.center_ras + matrix[:3, 3]
        pixel_at_object_mm = min(geometry.pixel_spacing) / geometry.magnification(center_world)
        factor = max(1, int(round(pixel_at_object_mm / float(self.mu.spacing_mm.min()))))
        if factor not in self.renderers:
            self.renderers[factor] = DRRRenderer(self.mu, mask=self.mask, roi_ijk=self.roi, downsample=factor).to(
                self.device
            )
        detectors = Detectors.from_geometries([geometry], device=poses.device)
        return self.renderers[factor](poses, detectors)[:, 0]


def _window(vertebra: _Vertebra, matrix: np.ndarray, view: _View, margin_px: int) -> tuple[int, int, int, int]:
    """Pixel window (c0, r0, columns, rows) around the projected ROI box, grown by ``margin_px``."""
    world = vertebra.corners_ras @ matrix[:3, :3].T + matrix[:3, 3]
    pixels = view.geometry.project(world)
    c0, r0 = np.floor(pixels.min(0)).astype(int) - margin_px
    c1, r1 = np.ceil(pixels.max(0)).astype(int) + margin_px + 1
    return int(c0), int(r0), int(c1 - c0), int(r1 - r0)


def _crop(view: _View, window: tuple[int, int, int, int]) -> _View:
    """The X-ray inside ``window`` (zero outside the detector) and the matching sub-geometry."""
    c0, r0, cols, rows = window
    out = view.image.new_zeros(rows, cols)
    src_r0, src_c0 = max(r0, 0), max(c0, 0)
    src_r1, src_c1 = min(r0 + rows, view.geometry.rows), min(c0 + cols, view.geometry.columns)
    if src_r1 > src_r0 and src_c1 > src_c0:
        out[src_r0 - r0 : src_r1 - r0, src_c0 - c0 : src_c1 - c0] = view.image[src_r0:src_r1, src_c0:src_c1]
    return _View(out, view.geometry.cropped(c0, r0, cols, rows))


def _support(drr: torch.Tensor, dilate_px: int) -> torch.Tensor:
    """Where the DRR has content, dilated by ``dilate_px``: the region the similarity looks at."""
    mask = (drr > 1e-3 * drr.max()).to(drr.dtype)
    if dilate_px > 0:
        mask = F.max_pool2d(mask[None, None], 2 * dilate_px + 1, stride=1, padding=dilate_px)[0, 0]
    return mask


def _delta_pose(rotvec: torch.Tensor, translation: torch.Tensor, center_world: torch.Tensor, start: torch.Tensor):
    """(B, 4, 4): rotate by ``rotvec`` (rad) about ``center_world``, move it by ``translation`` (mm), after ``start``."""
    return pose_matrix(rotvec_to_matrix(rotvec), translation, center_world) @ start


class _LevelProblem:
    """The objective at one pyramid level: cropped X-rays, fixed ROI weights, batched poses."""

    def __init__(self, vertebra: _Vertebra, views: list[_View], start: np.ndarray, margin_px: list[int], device):
        self.vertebra = vertebra
        self.crops = [_crop(view, _window(vertebra, start, view, m)) for view, m in zip(views, margin_px)]
        pose = torch.as_tensor(start, dtype=torch.float32, device=device)[None]
        with torch.no_grad():
            self.weights = []
            for crop in self.crops:
                dilate = max(1, int(round(3.0 / crop.geometry.pixel_spacing[0])))
                self.weights.append(_support(vertebra.render(pose, crop.geometry)[0], dilate))
        self.images = [crop.image.to(device) for crop in self.crops]

    def similarity(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) -> (B,) mean similarity over the views."""
        scores = [
            vertebra_similarity(self.vertebra.render(poses, crop.geometry), image, weight)
            for crop, image, weight in zip(self.crops, self.images, self.weights)
        ]
        return torch.stack(scores).mean(0)


def _grid_search(
    vertebra: _Vertebra, views: list[_View], start: np.ndarray, config: RigidConfig, device
) -> list[np.ndarray]:
    """The best poses near ``start`` on a grid of translations x a few rotations.

    For each trial rotation (identity and +-``grid_rotation_deg`` about each axis, about
    the vertebra centre) the vertebra's DRR is a template; masked NCC maps of its
    gradients against each X-ray score every 2D shift, and every 3D translation of the
    grid is scored by the shifts it projects to in all views at once. Returns up to
    ``config.candidates`` poses, best first, with translations at least
    ``candidate_gap_mm`` apart: before the rotation is known a neighbouring vertebra can
    score nearly as well as the right one, so the next stages choose among them.
    """
    center_world = start[:3, :3] @ vertebra.center_ras + start[:3, 3]
    axis = np.arange(-config.search_mm, config.search_mm + 1e-6, config.search_step_mm)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    scored = []  # (score, translation, rotated start)
    for rotated in _trial_rotations(start, center_world, config.grid_rotation_deg):
        score = np.zeros(len(grid))
        pose = torch.as_tensor(rotated, dtype=torch.float32, device=device)[None]
        for view in views:
            reach_px = int(math.ceil(config.search_mm * view.geometry.magnification(center_world)
                                     / min(view.geometry.pixel_spacing) * math.sqrt(2))) + 2
            window = _window(vertebra, rotated, view, 2)
            with torch.no_grad():
                template = vertebra.render(pose, _crop(view, window).geometry)[0]
            c0, r0, cols, rows = window
            search = _crop(view, (c0 - reach_px, r0 - reach_px, cols + 2 * reach_px, rows + 2 * reach_px))
            ncc_map = _gradient_ncc_map(template, _support(template, 1), search.image.to(device))
            shift = view.geometry.project(center_world + grid) - view.geometry.project(center_world)[None]
            score += _bilinear(ncc_map, shift[:, 1] + reach_px, shift[:, 0] + reach_px)
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


def _trial_rotations(start: np.ndarray, center_world: np.ndarray, angle_deg: float) -> list[np.ndarray]:
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


def _gradient_ncc_map(template: torch.Tensor, weight: torch.Tensor, image: torch.Tensor) -> np.ndarray:
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


def _bilinear(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a 2D array at fractional (rows, cols); -1 outside."""
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    inside = (r0 >= 0) & (c0 >= 0) & (r0 + 1 < values.shape[0]) & (c0 + 1 < values.shape[1])
    r0, c0 = np.where(inside, r0, 0), np.where(inside, c0, 0)
    out = (values[r0, c0] * (1 - fr) * (1 - fc) + values[r0 + 1, c0] * fr * (1 - fc)
           + values[r0, c0 + 1] * (1 - fr) * fc + values[r0 + 1, c0 + 1] * fr * fc)
    return np.where(inside, out, -1.0)


def _cmaes(problem: _LevelProblem, start: np.ndarray, center_world: np.ndarray, sigma_deg: float,
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


def _adam(problem: _LevelProblem, start: np.ndarray, center_world: np.ndarray, iterations: int,
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
        pose = _delta_pose(rotvec, translation, center_t, start_t)
        score = problem.similarity(pose)[0]
        if score.item() > best_score:
            best_score, best_pose = score.item(), pose[0].detach().double().cpu().numpy()
        (-score).backward()
        optimizer.step()
        schedule.step()
    return best_pose, best_score


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
) -> VertebraResult:
    """Register one vertebra (``mask`` (K, J, I) in the CT ``mu``, 1/mm) to biplanar X-rays.

    ``xrays``: (rows, columns) arrays, bone bright, one per geometry. ``init``: (4, 4)
    starting matrix_ras (default identity).
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
    vertebra = _Vertebra(mu, mask, config.roi_margin_mm, device)
    pose = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
    for geometry in geometries:
        if not geometry.sees((pose[:3, :3] @ vertebra.center_ras + pose[:3, 3])[None])[0]:
            raise InputError(f"vertebra {name} is not seen by every X-ray at the initial pose "
                             "(its centre projects outside a detector)")
    levels = [pyramid(prepare_xray(x), g, config.pixel_mm) for x, g in zip(xrays, geometries)]
    stages = []

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(f"{name}: {stage}", fraction)

    report("global search", 0.0)
    coarse = [views[0] for views in levels]
    candidates = _global_search(vertebra, coarse, pose, config, device)
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
            candidate, score = _refine(vertebra, [v[level] for v in levels], candidate, level, config, device)
        refined.append((score, candidate))
    refined.sort(key=lambda item: -item[0])
    similarity, pose = refined[0]
    rivals = [similarity - score for score, other in refined[1:]
              if np.linalg.norm(other[:3, 3] - pose[:3, 3]) >= config.candidate_gap_mm]
    stages.append({"stage": "tournament", "finalists": len(finalists), "scores": [round(s, 4) for s, _ in refined],
                   "evaluations": vertebra.evaluations, "time_s": round(time.perf_counter() - started, 3)})
    for level in range(last, len(levels[0])):
        report(f"level {level + 1}/{len(levels[0])}", 0.9)
        pose, similarity = _refine(vertebra, [v[level] for v in levels], pose, level, config, device)
        stages.append({"stage": f"level{level + 1}", "evaluations": vertebra.evaluations,
                       "time_s": round(time.perf_counter() - started, 3)})
    margin = rivals[0] if rivals else None
    ambiguous = margin is not None and margin < config.ambiguity_margin
    report("done", 1.0)
    return VertebraResult(
        name=name,
        matrix_ras=pose,
        params=matrix_to_params(pose, vertebra.center_ras),
        center_ras=vertebra.center_ras,
        similarity=float(similarity),
        verdict="pass" if similarity >= config.doubt_below and not ambiguous else "doubt",
        time_s=time.perf_counter() - started,
        evaluations=vertebra.evaluations,
        rival_margin=margin,
        stages=stages,
    )


def _global_search(
    vertebra: _Vertebra, coarse: list[_View], pose: np.ndarray, config: RigidConfig, device
) -> list[tuple[np.ndarray, float]]:
    """Candidate poses with their coarse-level scores (-inf where none was computed)."""
    candidates = [pose]
    if config.global_search.startswith("grid"):
        candidates = _grid_search(vertebra, coarse, pose, config, device)
    if "cmaes" not in config.global_search:
        return [(candidate, -np.inf) for candidate in candidates]
    wide = config.global_search == "cmaes"
    reach_mm = config.search_mm if wide else 3 * config.polish_sigma_mm
    margin = [int(math.ceil(reach_mm * 1.7 / v.geometry.pixel_spacing[0])) for v in coarse]
    polished = []
    for index, candidate in enumerate(candidates):
        problem = _LevelProblem(vertebra, coarse, candidate, margin, device)
        polished.append(_cmaes(
            problem, candidate, candidate[:3, :3] @ vertebra.center_ras + candidate[:3, 3],
            config.cmaes_sigma_deg if wide else config.polish_sigma_deg,
            config.cmaes_sigma_mm if wide else config.polish_sigma_mm,
            config.cmaes_evaluations if wide else config.cmaes_evaluations // 2, config.seed + index, device,
        ))
    return polished


def _refine(
    vertebra: _Vertebra, views: list[_View], pose: np.ndarray, level: int, config: RigidConfig, device
) -> tuple[np.ndarray, float]:
    """One pyramid level of local optimisation (Adam, or CMA-ES for the gradient-free baseline)."""
    margin = [max(2, int(math.ceil(3.0 / v.geometry.pixel_spacing[0]))) for v in views]
    problem = _LevelProblem(vertebra, views, pose, margin, device)
    center_world = pose[:3, :3] @ vertebra.center_ras + pose[:3, 3]
    if config.cmaes_all_levels:
        shrink = 0.25 * 0.5**level
        return _cmaes(problem, pose, center_world, config.cmaes_sigma_deg * shrink, config.cmaes_sigma_mm * shrink,
                      config.cmaes_evaluations // 2, config.seed + level, device)
    return _adam(problem, pose, center_world, config.iterations[level], config.lr_deg * 0.5**level,
                 config.lr_mm * 0.5**level, device)
