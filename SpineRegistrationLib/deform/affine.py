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
:func:`register_affine_batch` runs many such registrations under one config together (the
vertebrae of :mod:`.articulated`); :func:`register_affine` is a batch of one.
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
from .similarity import PER_SAMPLE, SIMILARITIES, similarity_loss

TRANSFORMS = ("rigid", "affine_noscale", "affine")
#: Parameter units (what one optimiser unit means): rotation and shear (rad), translation (mm), log-scale.
_UNITS = {"rotation": 0.05, "translation": 5.0, "shear": 0.05, "scale": 0.05}
#: Similarities of independent voxels: each level samples a list of the voxels that count (mask,
#: ``max_points``) rather than the whole grid.
POINTWISE = ("mse", "ncc", "mi")
#: Those whose lists of several problems stack into one batch: one loss per problem (mi's
#: histogram takes no weights).
STACKABLE = PER_SAMPLE
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
    """(..., 12) optimiser parameters (rotation, translation, shear, log-scale; see :data:`_UNITS`) -> (..., 3, 3) L."""
    rotation = rotvec_to_matrix((params[..., :3] * _UNITS["rotation"]).reshape(-1, 3)).reshape(params.shape[:-1] + (3, 3))
    if transform == "rigid":
        return rotation
    shear = params[..., 6:9] * _UNITS["shear"]
    zero, one = torch.zeros_like(shear[..., 0]), torch.ones_like(shear[..., 0])
    upper = torch.stack([torch.stack([one, shear[..., 0], shear[..., 1]], -1),
                         torch.stack([zero, one, shear[..., 2]], -1),
                         torch.stack([zero, zero, one], -1)], -2)
    if transform == "affine_noscale":
        return rotation @ upper
    return rotation @ torch.diag_embed(torch.exp(params[..., 9:12] * _UNITS["scale"])) @ upper


def params_to_matrix(params: torch.Tensor, transform: str, centre: torch.Tensor) -> torch.Tensor:
    """(..., 12) parameters, (..., 3) centres -> (..., 4, 4) A with x = c + t + L (y - c), differentiable."""
    linear = linear_part(params, transform)
    offset = centre + params[..., 3:6] * _UNITS["translation"] - (linear @ centre[..., None])[..., 0]
    top = torch.cat([linear, offset[..., None]], -1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=params.dtype).expand(top.shape[:-2] + (1, 4))
    return torch.cat([top, bottom], -2)


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


@dataclass
class Problem:
    """One registration of :func:`register_affine_batch`: its CTs, mask, box and start as
    :func:`register_affine` takes them."""

    fixed: Volume
    moving: Volume
    mask: np.ndarray | None = None
    box_ras: tuple | None = None
    init: np.ndarray | None = None


def register_affine(fixed: Volume, moving: Volume, config: AffineConfig | None = None,
                    mask: np.ndarray | None = None, box_ras=None, init: np.ndarray | None = None) -> AffineResult:
    """Register ``moving`` to ``fixed`` (both CTs in HU); see the module docstring.

    mask: optional (K, J, I) bool on the fixed grid: the loss counts these voxels only (and
        the region is their bounding box plus ``margin_mm``); box_ras: optional (lo, hi) RAS mm.
    init: optional rigid (4, 4) starting matrix (moving RAS <- fixed RAS); overrides ``config.init``.
    """
    return register_affine_batch([Problem(fixed, moving, mask, box_ras, init)], config)[0]


def register_affine_batch(problems: list[Problem], config: AffineConfig | None = None) -> list[AffineResult]:
    """Independent registrations under one config, optimised together: one Adam over their
    stacked parameters, one sampling of all their points per step. Their losses are summed, so
    each problem's gradient is its own, and Adam is element-wise: every result is its own
    registration's, up to rounding; what is shared is the per-step overhead (the 17 vertebrae
    of the real CT, :mod:`.articulated`: 2.9 s one by one, 0.9 s together). The
    :data:`STACKABLE` similarities stack; the others run one problem at a time.
    Each result's ``time_s`` is the batch's."""
    config = config or AffineConfig()
    if len(problems) > 1 and config.similarity not in STACKABLE:
        return [result for problem in problems for result in register_affine_batch([problem], config)]
    start = time.perf_counter()
    boxes = [region_box(p.fixed, p.mask, p.box_ras, config.margin_mm) for p in problems]
    centres = torch.stack([torch.as_tensor((lo + hi) / 2.0) for lo, hi in boxes])
    params = torch.stack([_start_params(p, c, config) for p, c in zip(problems, centres)]).requires_grad_(True)
    arrays = [torch.as_tensor(np.ascontiguousarray(p.moving.array), dtype=torch.float32)[None] for p in problems]
    masks = [None if p.mask is None else p.fixed.with_array(np.asarray(p.mask, np.uint8)) for p in problems]
    levels = []
    for level_mm, steps in zip(config.levels_mm, config.steps):
        setups = [_level_setup(p.fixed, p.moving, array, lo, hi, level_mm, config, mask)
                  for p, array, (lo, hi), mask in zip(problems, arrays, boxes, masks)]
        level = _stacked([setup for _, setup in setups])
        optimizer = torch.optim.Adam([params], lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1), eta_min=config.lr * 0.05)
        for _ in range(steps):
            loss = _level_loss(params, config, centres, *level).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            final = _level_loss(params, config, centres, *level)
        levels.append((level_mm, final, [voxels for voxels, _ in setups]))
    matrices = params_to_matrix(params.detach(), config.transform, centres).numpy()
    seconds = time.perf_counter() - start
    return [AffineResult(matrices[b], float(levels[-1][1][b]), {
        "levels": [{"level_mm": mm, "loss": float(final[b]), "voxels": voxels[b]} for mm, final, voxels in levels],
        "transform": config.transform, "similarity": config.similarity, "time_s": seconds})
        for b in range(len(problems))]


def similarity_losses(fixed: Volume, moving: Volume, matrices, config: AffineConfig, box_ras=None) -> list[float]:
    """The loss of ``config``'s similarity (lower: the CTs agree better) at each rigid (4, 4) matrix
    (moving RAS <- fixed RAS), at ``config``'s first level, that level set up once for them all."""
    lo, hi = region_box(fixed, None, box_ras, config.margin_mm)
    centre = torch.as_tensor((lo + hi) / 2.0)[None]
    moving_array = torch.as_tensor(np.ascontiguousarray(moving.array), dtype=torch.float32)[None]
    level = _stacked([_level_setup(fixed, moving, moving_array, lo, hi, config.levels_mm[0], config, None)[1]])
    with torch.no_grad():
        return [float(_level_loss(_params_of(matrix, centre[0])[None], config, centre, *level)[0]) for matrix in matrices]


def _start_params(problem: Problem, centre: torch.Tensor, config: AffineConfig) -> torch.Tensor:
    """(12,) starting parameters: the problem's init, else the identity or the body centres' shift."""
    if problem.init is not None:
        return _params_of(problem.init, centre)
    params = torch.zeros(12, dtype=torch.float64)
    if config.init == "centre":
        params[3:6] = torch.as_tensor(_body_centre(problem.moving) - _body_centre(problem.fixed)) / _UNITS["translation"]
    return params


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
    """One problem's pyramid level over the box [lo, hi]: (its grid's voxel count, (points,
    fixed_image, weight, level_moving, level_matrix)): the fixed grid's points (float32 RAS mm;
    for the point-wise similarities a list of the voxels that count), the fixed CT and the
    weight there ((1, 1, ...) tensors), the pooled moving CT (1, K, J, I) and its ijk -> RAS."""
    grid = Grid.covering(lo, hi, level_mm, multiple=1)
    fixed_image = hu_to_unit(volume_on_grid(fixed, grid))[None, None]
    weight = torch.ones_like(fixed_image)
    if mask_volume is not None:
        weight = (volume_on_grid(mask_volume, grid, labels=True) > 0.5).float()[None, None]
    level_moving, level_matrix = _pooled(moving_array, moving.ijk_to_ras, level_mm)
    points = grid.points_ras()
    if config.similarity in POINTWISE:  # only the voxels that count are sampled
        keep = torch.arange(grid.voxels) if mask_volume is None else torch.nonzero(weight.reshape(-1) > 0)[:, 0]
        if len(keep) > config.max_points:
            keep = keep[torch.as_tensor(np.random.default_rng(0).choice(len(keep), config.max_points, replace=False))]
        points = points.reshape(-1, 3)[keep]
        fixed_image = fixed_image.reshape(-1)[keep].view(1, 1, 1, 1, -1)
        weight = weight.reshape(-1)[keep].view(1, 1, 1, 1, -1)
    return grid.voxels, (points, fixed_image, weight, level_moving, level_matrix)


def _stacked(setups: list[tuple]) -> tuple:
    """The problems' levels (:func:`_level_setup`) as one batch: (points (B, N, 3), fixed_image,
    weight (B, 1, ...), moving (B, 1, K, J, I), to_normalised (B, 4, 4) float64: RAS -> grid_sample's
    coordinates, upper (B, 1, 3): the coordinate of each CT's last voxel). Several problems' point
    lists are padded (weight 0) and their moving CTs padded by repeating their edge, which is what
    grid_sample's border mode reads there."""
    if len(setups) == 1:
        points, fixed_image, weight, moving, matrix = setups[0]
        to_normalised = torch.as_tensor(normalising_matrix(matrix, moving.shape[1:]))[None]
        return points.reshape(1, -1, 3), fixed_image, weight, moving[None], to_normalised, torch.ones(1, 1, 3)
    shape = np.max([setup[3].shape[1:] for setup in setups], axis=0)  # (K, J, I)
    count = max(len(setup[0]) for setup in setups)
    out = [[] for _ in range(6)]
    for points, fixed_image, weight, moving, matrix in setups:
        pad = count - len(points)
        out[0].append(torch.nn.functional.pad(points, (0, 0, 0, pad)))
        out[1].append(torch.nn.functional.pad(fixed_image, (0, pad)))
        out[2].append(torch.nn.functional.pad(weight, (0, pad)))
        grow = [int(a - b) for a, b in zip(shape, moving.shape[1:])]
        out[3].append(torch.nn.functional.pad(moving[None], (0, grow[2], 0, grow[1], 0, grow[0]), mode="replicate"))
        out[4].append(torch.as_tensor(normalising_matrix(matrix, tuple(shape))))
        last = (np.array(moving.shape[1:][::-1], float) - 1.0) / np.maximum(shape[::-1] - 1.0, 1.0)
        out[5].append(torch.as_tensor(2.0 * last - 1.0, dtype=torch.float32)[None])
    return (torch.stack(out[0]), torch.cat(out[1]), torch.cat(out[2]), torch.cat(out[3]), torch.stack(out[4]),
            torch.stack(out[5]))


def _level_loss(params, config, centres, points, fixed_image, weight, moving, to_normalised, upper) -> torch.Tensor:
    """(B,) losses of (B, 12) parameters about (B, 3) centres on a :func:`_stacked` level."""
    # The transform and the moving grid's normalisation composed first (float64, 4x4): one
    # float32 matmul per point, the moving CT sampled where it lands.
    matrix = (to_normalised @ params_to_matrix(params, config.transform, centres)).float()
    coords = points @ matrix[:, :3, :3].transpose(1, 2) + matrix[:, None, :3, 3]
    warped = torch.nn.functional.grid_sample(moving, coords[:, :, None, None, :], mode="bilinear",
                                             padding_mode="border", align_corners=True)
    warped = hu_to_unit(warped).reshape(fixed_image.shape)
    w = weight * ((coords >= -1.0) & (coords <= upper)).all(-1).float().reshape(weight.shape)
    if bool((w.flatten(1).sum(1) < 1.0).any()):
        raise InputError("the moving CT does not overlap the fixed CT's region (non-overlapping volumes?)")
    if config.similarity in STACKABLE:
        return similarity_loss(config.similarity, fixed_image, warped, w, per_sample=True)
    return torch.stack([similarity_loss(config.similarity, fixed_image[b:b + 1], warped[b:b + 1], w[b:b + 1])
                        for b in range(len(params))])


def matrix_field(matrix: np.ndarray, grid: Grid) -> DisplacementField:
    """The matrix (moving RAS <- fixed RAS) as a displacement field on ``grid``: d(y) = A y - y."""
    points = grid.points_ras(torch.float64).numpy()
    matrix = np.asarray(matrix, float)
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    return DisplacementField(moved - points, grid.ijk_to_ras)
