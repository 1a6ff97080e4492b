"""CT-to-CT registration: rigid / affine, then vertebra by vertebra or the learned deformable
network, as one field.

:func:`register_ct_pair` returns a :class:`~.field.DisplacementField` whose map
y -> y + d(y) takes a fixed CT (world) RAS point to the moving CT RAS point it shows:

    x = A (y + u(y))

with A the linear stage's matrix (moving RAS <- fixed RAS: the iterative :mod:`.affine`
registration, started from the identity or from the learned rigid keypoint network of
:mod:`.rigid_network`, or the keypoint network alone; ``PairConfig.rigid_start``) and u the
network's diffeomorphic displacement between the fixed CT and the moving CT resampled
through A (:mod:`.network`), optionally refined by instance optimisation (Adam on the
network's velocity field against LNCC + bending energy, so it stays diffeomorphic).

With ``PairConfig.articulated`` the field after the linear stage is instead the poly-rigid blend
of every vertebra's own rigid registration (:mod:`.articulated`), rigid inside each vertebra,
refined near the bone (:mod:`.freeform`, ``PairConfig.refine_steps``); given a model or instance
steps, the network then refines it: x = P(y + u(y)), with P that map in place of A.

The network's field lives on the working grid: the network's spacing, RAS-aligned, over the fixed
segmentation's box plus ``margin_mm`` (the whole fixed CT without one). Outside that grid
the displacement is zero (ITK's convention), which is why the region keeps a margin
around everything that is evaluated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dataclass_field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.labelmap import Labelmap
from ..core.volume import Volume
from ..errors import InputError
from .affine import AffineConfig, region_box, register_affine, similarity_losses
from .articulated import ArticulatedConfig, articulated_field, start_config
from .freeform import FreeFormConfig
from ..core.displacement import DisplacementField, available_memory_bytes
from ..core.grid import Grid, hu_to_unit, voxel_to_ras_mm, volume_on_grid

#: How the linear stage starts: ``iterative`` (:mod:`.affine` from the identity or its ``init``),
#: ``learned`` (the rigid keypoint network alone, one forward pass per pass: fast, ~1-2 mm) or
#: ``learned+iterative`` (the keypoint network's matrix as the iterative stage's start). Either
#: way the network's pose is kept only when the CTs agree better there than at the identity;
#: when it is not, the iterative stage runs as without the network.
RIGID_STARTS = ("iterative", "learned", "learned+iterative")
#: The level (mm) at which the learned pose is checked against the identity.
CHECK_LEVEL_MM = 4.0
#: Memory per working-grid node of the network's forward pass and instance optimisation
#: (float32 activations of the full-resolution layers, their gradients, the warps), bytes;
#: measured ~1.1 kB on a 96^3 grid, rounded up.
BYTES_PER_NODE = 2048


@dataclass
class PairConfig:
    """model: a deformable model file (None: the shipped one; ``deformable=False``: affine only).
    affine: the first stage; margin_mm: around the fixed segmentation's box for the region.
    rigid_start: one of :data:`RIGID_STARTS`; rigid_model: the rigid keypoint network's model file
        (None: the shipped one).
    articulated: after the linear stage, register every vertebra of the moving segmentation on
        its own and blend the poses (:mod:`.articulated`); the deformable network runs after it only
        when a model or instance steps are given.
    refine_steps: Adam steps of the articulated field's free-form refinement near the bone
        (:mod:`.freeform`; 0: the poly-rigid blend as it is).
    instance_steps / instance_lr / instance_bending: test-time optimisation (0 steps: off).
    memory_bytes: refuse working grids needing more (None: 75 % of the memory available now).
    device: torch device of the network."""

    model: Path | None = None
    deformable: bool = True
    affine: AffineConfig = dataclass_field(default_factory=lambda: AffineConfig(transform="rigid", similarity="ncc"))
    margin_mm: float = 20.0
    rigid_start: str = "iterative"
    rigid_model: Path | None = None
    articulated: bool = False
    refine_steps: int = FreeFormConfig.steps
    instance_steps: int = 0
    instance_lr: float = 0.2
    instance_bending: float = 0.5
    memory_bytes: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.refine_steps < 0:
            raise InputError(f"the free-form refinement's steps must be >= 0, got {self.refine_steps}")
        if self.rigid_start not in RIGID_STARTS:
            raise InputError(f"unknown rigid start {self.rigid_start!r}; choose one of {', '.join(RIGID_STARTS)}")


def linear_stage(fixed: Volume, moving: Volume, config: PairConfig, box_ras) -> tuple[np.ndarray, dict]:
    """The linear stage's matrix (moving RAS <- fixed RAS) over ``box_ras`` (lo, hi) and its info."""
    if config.rigid_start == "iterative":
        affine = register_affine(fixed, moving, config.affine, box_ras=box_ras)
        return affine.matrix, affine.info
    from .rigid_network import load_rigid_network, predict_rigid, shipped_rigid_path

    path = Path(config.rigid_model) if config.rigid_model is not None else shipped_rigid_path()
    if path is None:
        raise InputError("no rigid CT-to-CT model is shipped in Resources/Models: train one "
                         "(spinereg train-deform --network rigid) or start the linear stage iteratively")
    started = time.perf_counter()
    centre = (np.asarray(box_ras[0], float) + np.asarray(box_ras[1], float)) / 2.0
    matrix = predict_rigid(load_rigid_network(path, config.device), fixed, moving, centre, device=config.device)
    # The network has seen phantoms only: on anatomy unlike them its keypoints can line up along
    # the spine and the fit turn about it. Its pose is kept only where the CTs agree better there
    # than at the identity (the similarity at one coarse level, set up once, two evaluations).
    check = AffineConfig(transform="rigid", similarity=config.affine.similarity, levels_mm=(CHECK_LEVEL_MM,), steps=(0,))
    losses = similarity_losses(fixed, moving, (matrix, np.eye(4)), check, box_ras)
    kept = losses[0] < losses[1]
    learned = {"model": str(path), "time_s": time.perf_counter() - started, "kept": bool(kept),
               "loss_learned": losses[0], "loss_identity": losses[1]}
    if config.rigid_start == "learned" and kept:
        return matrix, {"transform": "rigid", "start": "learned", "learned": learned, "time_s": learned["time_s"]}
    # Refused: the iterative stage as if no network had been asked (from config.affine.init's start).
    affine = register_affine(fixed, moving, config.affine, box_ras=box_ras, init=matrix if kept else None)
    return affine.matrix, {**affine.info, "start": "learned", "learned": learned}


def check_inputs(fixed: Volume, moving: Volume, fixed_seg: Labelmap | None, moving_seg: Labelmap | None) -> None:
    """InputError (one line) for segmentations off their CT's grid or empty, or CTs that do not overlap."""
    from ..core.labelmap import check_same_grid

    for seg, ct, what in ((fixed_seg, fixed, "fixed"), (moving_seg, moving, "moving")):
        if seg is None:
            continue
        check_same_grid(seg, ct, f"the {what} segmentation")
        if not seg.values:
            raise InputError(f"the {what} segmentation is empty (no labelled voxel)")
    (f_lo, f_hi), (m_lo, m_hi) = fixed.bounds_ras(), moving.bounds_ras()
    if np.any(np.minimum(f_hi, m_hi) <= np.maximum(f_lo, m_lo)):
        raise InputError(
            f"the fixed and moving CTs do not overlap in RAS (fixed {np.round(f_lo).tolist()}..{np.round(f_hi).tolist()} "
            f"mm, moving {np.round(m_lo).tolist()}..{np.round(m_hi).tolist()} mm): not the same patient's scanner frame?")


def working_grid(fixed: Volume, fixed_seg: Labelmap | None, spacing_mm: float, multiple: int,
                 margin_mm: float = 20.0, memory_bytes: int | None = None) -> Grid:
    """The grid the network runs on (module docstring); InputError when it would not fit in memory."""
    mask = None if fixed_seg is None else fixed_seg.volume.array > 0
    lo, hi = region_box(fixed, mask, None, margin_mm)
    grid = Grid.covering(lo, hi, spacing_mm, multiple)
    budget = (available_memory_bytes() or 8 << 30) * 0.75 if memory_bytes is None else memory_bytes
    need = grid.voxels * BYTES_PER_NODE
    if need > budget:  # not field.check_memory: the network fixes the spacing, so the advice is a smaller region
        side_mm = (budget / BYTES_PER_NODE) ** (1.0 / 3.0) * spacing_mm
        raise InputError(
            f"the registration region ({' x '.join(f'{e:.0f}' for e in hi - lo)} mm, a {grid.shape[::-1]} grid at "
            f"{spacing_mm:g} mm) needs about {need / 2**30:.1f} GiB, {budget / 2**30:.1f} GiB is available: a region "
            f"up to about {side_mm:.0f} mm per side would fit (crop the CTs, or give --fixed-seg to work around the spine)")
    return grid


def _velocity(network, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """VoxelMorph's stationary velocity (B, 3, ...), voxels of its grid (halved with ``half_res``):
    the first half of MONAI's VoxelMorph.forward, kept apart so that it can be optimised."""
    x = network.backbone(torch.cat([moving, fixed], dim=1))
    if not network.half_res:
        return x
    return F.interpolate(x, scale_factor=0.5, mode="trilinear", align_corners=True) * 2.0


def _displacement(network, velocity: torch.Tensor) -> torch.Tensor:
    """The second half of MONAI's VoxelMorph.forward: integrate (and back to full resolution), voxels."""
    ddf = network.dvf2ddf(velocity) if network.diffeomorphic else velocity
    if not network.half_res:
        return ddf
    return F.interpolate(ddf * 0.5, scale_factor=2.0, mode="trilinear", align_corners=True)


def deformable_displacement(network, moving: torch.Tensor, fixed: torch.Tensor, instance_steps: int = 0,
                            lr: float = 0.2, bending: float = 0.5, predict: bool = True) -> torch.Tensor:
    """(1, 1, K, J, I) moving (already affinely aligned) and fixed in [0, 1] -> (1, 3, K, J, I)
    displacement in voxels, with ``instance_steps`` of test-time optimisation of the velocity,
    started from the network's prediction (``predict``) or from zero velocity."""
    if predict:
        with torch.no_grad():
            velocity = _velocity(network, moving, fixed)
    else:  # no forward pass: a zero field on the velocity's grid (halved with half_res)
        size = [n // 2 if network.half_res else n for n in moving.shape[2:]]
        velocity = moving.new_zeros((moving.shape[0], 3, *size))
    if instance_steps <= 0:
        with torch.no_grad():
            return _displacement(network, velocity)
    from monai.losses import BendingEnergyLoss, LocalNormalizedCrossCorrelationLoss

    torch.set_flush_denormal(True)  # tiny gradients through the integration: see training.py
    lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
    bending_loss = BendingEnergyLoss()
    velocity = velocity.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([velocity], lr=lr)
    for p in network.parameters():
        p.requires_grad_(False)
    for _ in range(instance_steps):
        ddf = _displacement(network, velocity)
        loss = lncc(network.warp(moving, ddf), fixed) + bending * bending_loss(ddf)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return _displacement(network, velocity)


def register_ct_pair(fixed: Volume, moving: Volume, fixed_seg: Labelmap | None = None,
                     moving_seg: Labelmap | None = None, config: PairConfig | None = None,
                     network=None) -> tuple[DisplacementField, dict]:
    """Register ``moving`` onto ``fixed`` (CTs in HU); returns the field (fixed RAS -> moving RAS)
    and an info dict (the affine matrix, the grid, times in s). ``moving_seg`` is checked, and used
    by the articulated stage only (the network registers images); ``network``: an already loaded
    (module, config)."""
    from .network import DeformModelConfig, load_network, shipped_network_path

    config = config or PairConfig()
    started = time.perf_counter()
    check_inputs(fixed, moving, fixed_seg, moving_seg)
    model_config, model_path = DeformModelConfig(), None
    if config.articulated and moving_seg is None:
        raise InputError("the articulated registration needs the moving CT's vertebra segmentation (--moving-seg)")
    # Vertebra by vertebra needs no network; given a model or instance steps, the network refines its field.
    wants_network = config.deformable and (not config.articulated or config.model is not None or config.instance_steps > 0)
    if not wants_network:
        network = None
    elif network is None:
        model_path = Path(config.model) if config.model is not None else shipped_network_path()
        if model_path is None:
            raise InputError("no deformable model is shipped in Resources/Models: train one (spinereg train-deform)")
        network = load_network(model_path, config.device)
    if network is not None:
        network, model_config = network
    grid = working_grid(fixed, fixed_seg, model_config.spacing_mm, model_config.multiple, config.margin_mm,
                        config.memory_bytes)
    lo = grid.ijk_to_ras[:3, 3]  # the first and the last node (RAS-aligned): not every node's point
    hi = lo + grid.spacing_mm * (np.array(grid.shape[::-1]) - 1.0)
    if config.articulated:
        config = replace(config, affine=start_config(config.affine))
    linear, linear_info = linear_stage(fixed, moving, config, (lo, hi))
    matrix = torch.as_tensor(linear, dtype=torch.float64)
    info = {"matrix_moving_from_fixed": linear.tolist(), "affine": linear_info,
            "grid": {"shape_ijk": list(grid.shape[::-1]), "spacing_mm": grid.spacing_mm,
                     "origin_ras": grid.ijk_to_ras[:3, 3].tolist()},
            "model": None if model_path is None else str(model_path), "instance_steps": 0}
    if config.articulated:
        stage = ArticulatedConfig(freeform=FreeFormConfig(steps=config.refine_steps))
        articulated, info["articulated"] = articulated_field(fixed, moving, moving_seg, linear, stage)

        def before(points: torch.Tensor) -> torch.Tensor:  # (..., 3) fixed RAS -> moving RAS, float64
            mapped = articulated.map_points(points.reshape(-1, 3).numpy(), border=True)
            return torch.as_tensor(mapped).reshape(points.shape)
        if network is None:
            info["time_s"] = time.perf_counter() - started
            return articulated, info
    else:
        def before(points: torch.Tensor) -> torch.Tensor:
            return points @ matrix[:3, :3].T + matrix[:3, 3]
    points = grid.points_ras(torch.float64)
    displacement = torch.zeros(points.shape, dtype=torch.float64)
    if network is not None:
        tick = time.perf_counter()
        with torch.no_grad():
            fixed_image = hu_to_unit(volume_on_grid(fixed, grid))[None, None].to(config.device)
            aligned = before(points).float()
            moving_image = hu_to_unit(volume_on_grid(moving, grid, points_ras=aligned))[None, None].to(config.device)
        # After vertebra by vertebra, instance optimisation starts from zero velocity unless a model
        # was asked for: the network learnt pairs whose vertebrae are still apart (up to 5 deg / 3 mm),
        # not that stage's sub-millimetre residual (started from its prediction, the real CT's Dice
        # fell from 0.944 to 0.906).
        predict = not config.articulated or config.model is not None
        ddf = deformable_displacement(network, moving_image, fixed_image, config.instance_steps, config.instance_lr,
                                      config.instance_bending, predict)
        displacement = voxel_to_ras_mm(ddf.cpu(), grid)[0].double()
        info.update(deformable_s=time.perf_counter() - tick, instance_steps=config.instance_steps)
    field = DisplacementField((before(points + displacement) - points).numpy(), grid.ijk_to_ras)
    info["time_s"] = time.perf_counter() - started
    return field, info


def warp_labelmap(labelmap: Labelmap, field: DisplacementField, reference: Volume) -> Labelmap:
    """The moving segmentation carried onto ``reference``'s grid (the fixed CT) through the field."""
    from ..io.images import volume_to_image
    from ..io.displacement import warp_image
    import SimpleITK as sitk

    image = warp_image(volume_to_image(labelmap.volume), field, volume_to_image(reference), labels=True)
    return Labelmap(Volume(sitk.GetArrayFromImage(image), reference.ijk_to_ras.copy()), labelmap.scheme)
