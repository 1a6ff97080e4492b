"""Iterative rigid and affine registration of two CTs (3D/3D), multi-resolution, in torch.

The result is a 4x4 matrix ``A`` in the resampling direction, **moving CT RAS <- fixed RAS**:
the fixed (world) point y corresponds to the moving CT point x = A @ [y, 1]. It is the start
of the deformable stage (:mod:`.ct_pair`); :func:`matrix_field` gives it as a
:class:`~.field.DisplacementField` (d(y) = A y - y).

Transforms (``AffineConfig.transform``), all about the centre c of the fixed region:
x = A y = c + t + L (y - c) with

- ``rigid``          L = R (rotation vector, 6 parameters);
- ``affine_noscale`` L = R U, U upper unitriangular (shears): affine without scaling, so
  det L = 1 and organ volumes are kept (9 parameters);
- ``affine``         L = R S U, S = diag(exp(s)) (12 parameters).

Each pyramid level (``levels_mm``) resamples the fixed CT onto an RAS grid of that spacing
over the region (the whole fixed volume, a box, or a mask's bounding box plus a margin)
and runs Adam on the similarity (:mod:`.similarity`) of the moving CT sampled at A y,
averaged over the mask and where A y falls inside the moving volume. The search is local:
misalignments beyond about 30 mm or 20 degrees need ``init`` (e.g. ``init="centre"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.pose import rotvec_to_matrix, se3_log
from ..core.volume import Volume
from ..errors import InputError
from ..core.displacement import DisplacementField
from ..core.grid import Grid, _pooled, hu_to_unit, normalising_matrix, volume_on_grid
from .similarity import SIMILARITIES, similarity_loss

TRANSFORMS = ("rigid", "affine_noscale", "affine")
#: Parameter units (what one optimiser unit means): rotation and shear (rad), translation (mm), log-scale.
_UNITS = {"rotation": 0.05, "translation": 5.0, "shear": 0.05, "scale": 0.05}
#: Body voxels for ``init="centre"``: HU above this.
_BODY_HU = -500.0


@dataclass
class AffineConfig:
    """transform: one of :data:`TRANSFORMS`; similarity: one of :data:`.similarity.SIMILARITIES`.
    levels_mm / steps: pyramid spacings (mm, coarse -> fine) and Adam steps at each.
    lr: Adam step in parameter units (:data:`_UNITS`: 0.05 rad, 5 mm, ...).
    init: ``identity`` (scanner coordinates roughly agree) or ``centre`` (start by aligning
        the centres of the body voxels, HU > -500, of both volumes).
    margin_mm: grown around a mask's bounding box to make the region.
    max_points: the point-wise measures (mse, ncc, mi) use this many fixed voxels per level,
        drawn once at random (as elastix's random sampler), when the level has more; the
        local ones (lncc, mind) need whole neighbourhoods and use every voxel.
    """

    transform: str = "rigid"
    similarity: str = "ncc"
    levels_mm: tuple[float, ...] = (8.0, 4.0, 2.5)
    steps: tuple[int, ...] = (80, 40, 20)
    lr: float = 0.1
    init: str = "identity"
    margin_mm: float = 20.0
    max_points: int = 30000

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise InputError(f"unknown transform {self.transform!r}; choose one of {', '.join(TRANSFORMS)}")
        if self.similarity not in SIMILARITIES:
            raise InputError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if len(self.levels_mm) != len(self.steps) or not self.levels_mm:
            raise InputError("levels_mm and steps need one entry per pyramid level")
        if self.init not in ("identity", "centre"):
            raise InputError(f"unknown init {self.init!r}; choose identity or centre")


@dataclass
class AffineResult:
    """matrix: (4, 4) moving CT RAS <- fixed RAS; loss: final similarity loss at the finest
    level; info: per-level losses and the time (s)."""

    matrix: np.ndarray
    loss: float
    info: dict


def linear_part(params: torch.Tensor, transform: str) -> torch.Tensor:
    """(12,) optimiser parameters (rotation, translation, shear, log-scale; see :data:`_UNITS`) -> (3, 3) L."""
    rotation = rotvec_to_matrix((params[:3] * _UNITS["rotation"])[None])[0]
    if transform == "rigid":
        return rotation
    shear = params[6:9] * _UNITS["shear"]
    zero, one = torch.zeros((), dtype=params.dtype), torch.ones((), dtype=params.dtype)
    upper = torch.stack([torch.stack([one, shear[0], shear[1]]), torch.stack([zero, one, shear[2]]),
                         torch.stack([zero, zero, one])])
    if transform == "affine_noscale":
        return rotation @ upper
    return rotation @ torch.diag(torch.exp(params[9:12] * _UNITS["scale"])) @ upper


def params_to_matrix(params: torch.Tensor, transform: str, centre: torch.Tensor) -> torch.Tensor:
    """(12,) parameters -> (4, 4) A with x = c + t + L (y - c), differentiable."""
    linear = linear_part(params, transform)
    offset = centre + params[3:6] * _UNITS["translation"] - linear @ centre
    top = torch.cat([linear, offset[:, None]], 1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=params.dtype)], 0)


def region_box(fixed: Volume, mask: np.ndarray | None = None, box_ras=None,
               margin_mm: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """The RAS box (lo, hi) registered: ``box_ras``, else the mask's voxels grown by ``margin_mm``,
    else the whole fixed volume; always clipped to the fixed volume. InputError when empty."""
    lo, hi = fixed.bounds_ras()
    if box_ras is not None:
        box_lo, box_hi = (np.asarray(b, float) for b in box_ras)
        lo, hi = np.maximum(lo, box_lo), np.minimum(hi, box_hi)
    elif mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != fixed.array.shape:
            raise InputError(f"the mask's shape {mask.shape} is not the fixed CT's {fixed.array.shape}")
        if not mask.any():
            raise InputError("the mask of the fixed CT is empty")
        k, j, i = np.nonzero(mask)
        corners = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]], float)
        corners = np.array([[a, b, c] for a in corners[:, 0] for b in corners[:, 1] for c in corners[:, 2]])
        points = fixed.ijk_to_ras_points(corners)
        lo = np.maximum(lo, points.min(0) - margin_mm)
        hi = np.minimum(hi, points.max(0) + margin_mm)
    if np.any(hi <= lo):
        raise InputError("the registration box does not overlap the fixed CT")
    return lo, hi


def _body_centre(volume: Volume, spacing_mm: float = 8.0) -> np.ndarray:
    pooled, matrix = _pooled(torch.as_tensor(volume.array, dtype=torch.float32)[None], volume.ijk_to_ras, spacing_mm)
    k, j, i = np.nonzero(pooled[0].numpy() > _BODY_HU)
    if len(i) == 0:
        raise InputError("a CT holds no body voxel (nothing above -500 HU): is it in HU?")
    return (matrix @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]


def register_affine(fixed: Volume, moving: Volume, config: AffineConfig | None = None,
                    mask: np.ndarray | None = None, box_ras=None, init: np.ndarray | None = None) -> AffineResult:
    """Register ``moving`` to ``fixed`` (both CTs in HU); see the module docstring.

    mask: optional (K, J, I) bool on the fixed grid: the loss counts these voxels only (and
        the region is their bounding box plus ``margin_mm``); box_ras: optional (lo, hi) RAS mm.
    init: optional rigid (4, 4) starting matrix (moving RAS <- fixed RAS); overrides ``config.init``.
    """
    config = config or AffineConfig()
    start = time.perf_counter()
    lo, hi = region_box(fixed, mask, box_ras, config.margin_mm)
    centre = torch.as_tensor((lo + hi) / 2.0)
    if init is not None:
        params = _params_of(init, centre)
    else:
        params = torch.zeros(12, dtype=torch.float64)
        if config.init == "centre":
            params[3:6] = torch.as_tensor(_body_centre(moving) - _body_centre(fixed)) / _UNITS["translation"]
    params.requires_grad_(True)
    moving_array = torch.as_tensor(np.ascontiguousarray(moving.array), dtype=torch.float32)[None]
    mask_volume = None if mask is None else fixed.with_array(np.asarray(mask, np.uint8))
    losses = []
    for level_mm, steps in zip(config.levels_mm, config.steps):
        voxels, level = _level_setup(fixed, moving, moving_array, lo, hi, level_mm, config, mask_volume)
        optimizer = torch.optim.Adam([params], lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1), eta_min=config.lr * 0.05)
        for _ in range(steps):
            loss = _level_loss(params, config, centre, *level)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            final = float(_level_loss(params, config, centre, *level))
        losses.append({"level_mm": level_mm, "loss": final, "voxels": voxels})
    matrix = params_to_matrix(params.detach(), config.transform, centre).numpy()
    return AffineResult(matrix, losses[-1]["loss"], {"levels": losses, "transform": config.transform,
                                                     "similarity": config.similarity,
                                                     "time_s": time.perf_counter() - start})


def similarity_losses(fixed: Volume, moving: Volume, matrices, config: AffineConfig, box_ras=None) -> list[float]:
    """The loss of ``config``'s similarity (lower: the CTs agree better) at each rigid (4, 4) matrix
    (moving RAS <- fixed RAS), at ``config``'s first level, that level set up once for them all."""
    lo, hi = region_box(fixed, None, box_ras, config.margin_mm)
    centre = torch.as_tensor((lo + hi) / 2.0)
    moving_array = torch.as_tensor(np.ascontiguousarray(moving.array), dtype=torch.float32)[None]
    _, level = _level_setup(fixed, moving, moving_array, lo, hi, config.levels_mm[0], config, None)
    with torch.no_grad():
        return [float(_level_loss(_params_of(matrix, centre), config, centre, *level)) for matrix in matrices]


def _params_of(init: np.ndarray, centre: torch.Tensor) -> torch.Tensor:
    """(12,) parameters of a rigid (4, 4) matrix about ``centre``; InputError when not rigid."""
    init = np.asarray(init, float)
    if not np.allclose(init[:3, :3] @ init[:3, :3].T, np.eye(3), atol=1e-4):
        raise InputError("an init matrix must be rigid (a rotation and a translation)")
    # Every transform's linear part is R (its shears and scales at 0): a rigid start fits all.
    params = torch.zeros(12, dtype=torch.float64)
    params[:3] = se3_log(torch.as_tensor(init)[None])[0, :3] / _UNITS["rotation"]  # the rotation vector of R
    moved_centre = torch.as_tensor(init[:3, :3]) @ centre + torch.as_tensor(init[:3, 3])
    params[3:6] = (moved_centre - centre) / _UNITS["translation"]
    return params


def _level_setup(fixed: Volume, moving: Volume, moving_array: torch.Tensor, lo, hi, level_mm: float,
                 config: AffineConfig, mask_volume: Volume | None):
    """One pyramid level over the box [lo, hi]: (its grid's voxel count, (points, fixed_image,
    weight, level_moving, to_normalised)), the latter the arguments :func:`_level_loss` takes
    after the parameters: the fixed grid's points (float32 RAS mm), the pooled moving CT and the
    (4, 4) float64 matrix from its RAS to grid_sample's coordinates."""
    grid = Grid.covering(lo, hi, level_mm, multiple=1)
    fixed_image = hu_to_unit(volume_on_grid(fixed, grid))[None, None]
    weight = torch.ones_like(fixed_image)
    if mask_volume is not None:
        weight = (volume_on_grid(mask_volume, grid, labels=True) > 0.5).float()[None, None]
    level_moving, level_matrix = _pooled(moving_array, moving.ijk_to_ras, level_mm)
    points = grid.points_ras()
    if config.similarity in ("mse", "ncc", "mi"):  # point-wise: only the voxels that count are sampled
        keep = torch.arange(grid.voxels) if mask_volume is None else torch.nonzero(weight.reshape(-1) > 0)[:, 0]
        if len(keep) > config.max_points:
            keep = keep[torch.as_tensor(np.random.default_rng(0).choice(len(keep), config.max_points, replace=False))]
        points = points.reshape(-1, 3)[keep][None, None]  # (1, 1, N, 3): a "volume" of N points
        fixed_image = fixed_image.reshape(-1)[keep].view(1, 1, 1, 1, -1)
        weight = weight.reshape(-1)[keep].view(1, 1, 1, 1, -1)
    to_normalised = torch.as_tensor(normalising_matrix(level_matrix, level_moving.shape[1:]))
    return grid.voxels, (points, fixed_image, weight, level_moving[None], to_normalised)


def _level_loss(params, config, centre, points, fixed_image, weight, level_moving, to_normalised) -> torch.Tensor:
    # The transform and the moving grid's normalisation composed first (float64, 4x4): one
    # float32 matmul per point, the moving CT sampled where it lands.
    matrix = (to_normalised @ params_to_matrix(params, config.transform, centre)).float()
    coords = points @ matrix[:3, :3].T + matrix[:3, 3]
    warped = torch.nn.functional.grid_sample(level_moving, coords.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                             padding_mode="border", align_corners=True)
    warped = hu_to_unit(warped).reshape(fixed_image.shape)
    w = weight * (coords.abs() <= 1.0).all(-1).float().reshape(weight.shape)
    if float(w.sum()) < 1.0:
        raise InputError("the moving CT does not overlap the fixed CT's region (non-overlapping volumes?)")
    return similarity_loss(config.similarity, fixed_image, warped, w)


def matrix_field(matrix: np.ndarray, grid: Grid) -> DisplacementField:
    """The matrix (moving RAS <- fixed RAS) as a displacement field on ``grid``: d(y) = A y - y."""
    points = grid.points_ras(torch.float64).numpy()
    matrix = np.asarray(matrix, float)
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    return DisplacementField(moved - points, grid.ijk_to_ras)
