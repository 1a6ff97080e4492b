"""CT to CT: a free-form refinement of the vertebra-by-vertebra field near the bone.

The poly-rigid field P (fixed RAS -> moving RAS, :mod:`.articulated`) is exactly rigid inside
each vertebra, but a second scan of a spine is not quite its vertebrae moved rigidly (the
surfaces, the partial volumes, the tissue that moves with them): on the real CT's benchmark pair
even the truth's best rigid poses, blended, reach a mean vertebra Dice of 0.909 only. The
refinement puts a smooth displacement u (RAS mm) before P,

    x = P(y + u(y)),

u trilinear on an RAS control grid (``control_mm``), fitted by Adam to the mean squared
difference of the two CTs' intensities (both in HU, so one tissue has one value; [0, 1] units,
:func:`..core.grid.hu_to_unit`) plus a membrane penalty (the mean squared first differences of
u per control spacing). Each step draws ``points`` new random points (elastix's random sampler
with new samples every iteration) in the band around the vertebrae: the cells of P's grid whose
nodes P takes into a vertebra of the moving segmentation, grown by ``band_mm`` (rounded to whole
nodes), and inside the fixed CT. A step costs its points, not a grid: both CTs are sampled at
them at full resolution. u is not invertible by construction (unlike the network's scaling and
squaring); the membrane penalty keeps it smooth (no folding on the benchmark's pairs). The result
is written on P's grid (P's extent; u is zero one control cell beyond the band).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.displacement import DisplacementField
from ..core.grid import Grid, hu_to_unit, sample
from ..core.labelmap import Labelmap
from ..core.volume import Volume
from ..errors import InputError


@dataclass(frozen=True)
class FreeFormConfig:
    """steps: Adam steps (0: no refinement); points: random points per step; control_mm: the
    control grid's spacing; band_mm: how far around the vertebrae points are drawn; lr_mm: Adam's
    step (mm of u); smoothness: weight of the membrane penalty against the mean squared
    intensity difference; seed: of the random points."""

    steps: int = 20
    points: int = 20000
    control_mm: float = 5.0
    band_mm: float = 4.0
    lr_mm: float = 0.3
    smoothness: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.points < 1 or not self.control_mm > 0 or self.band_mm < 0:
            raise InputError("free-form refinement: steps >= 0, points >= 1, a positive control spacing, "
                             "a band of 0 mm or more")


def refine_near_bone(fixed: Volume, moving: Volume, moving_seg: Labelmap, field: DisplacementField,
                     config: FreeFormConfig | None = None) -> tuple[DisplacementField, dict]:
    """``field`` (fixed RAS -> moving RAS, P of the module docstring) refined: P(y + u(y)) on P's grid,
    and an info dict (the band's nodes, the first and the last step's loss, time in s)."""
    config = config or FreeFormConfig()
    if config.steps == 0:
        return field, {"steps": 0}
    started = time.perf_counter()
    mapped = field.torch_map(torch.float32, border=True)
    shape = field.displacement.shape[:3]
    spacing = float(np.linalg.norm(field.ijk_to_ras[:3, 0]))
    ijk_to_ras = torch.as_tensor(field.ijk_to_ras[:3], dtype=torch.float32)
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    nodes_ijk = torch.stack([i, j, k], -1).reshape(-1, 3)
    nodes = nodes_ijk @ ijk_to_ras[:, :3].T + ijk_to_ras[:, 3]
    images = nodes + torch.as_tensor(field.displacement, dtype=torch.float32).reshape(-1, 3)
    bone = sample(torch.as_tensor(moving_seg.volume.array > 0)[None], moving_seg.volume.ijk_to_ras, images,
                  labels=True)[0].reshape(shape)
    grow = int(round(config.band_mm / spacing))
    band = F.max_pool3d(bone[None, None], 2 * grow + 1, stride=1, padding=grow)[0, 0].reshape(-1) > 0
    in_fixed = torch.as_tensor(fixed.ras_to_ijk, dtype=torch.float32)
    fixed_ijk = nodes @ in_fixed[:3, :3].T + in_fixed[:3, 3]
    band &= ((fixed_ijk >= 0) & (fixed_ijk <= torch.as_tensor(np.array(fixed.shape_ijk) - 1.0))).all(-1)
    band = torch.nonzero(band)[:, 0]
    info = {"steps": config.steps, "points": config.points, "band_nodes": int(len(band))}
    if len(band) == 0:  # no vertebra lands in the fixed CT
        return field, {**info, "steps": 0, "time_s": time.perf_counter() - started}
    reach = nodes[band]
    control = Grid.covering(reach.min(0).values.double().numpy() - config.control_mm,
                            reach.max(0).values.double().numpy() + config.control_mm, config.control_mm, 1)
    u = torch.zeros((3,) + control.shape, requires_grad=True)
    fixed_array = torch.as_tensor(np.asarray(fixed.array, np.float32))[None]
    moving_array = torch.as_tensor(np.asarray(moving.array, np.float32))[None]
    to_moving = torch.as_tensor(moving.ras_to_ijk, dtype=torch.float32)
    moving_last = torch.as_tensor(np.array(moving.shape_ijk) - 1.0, dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam([u], lr=config.lr_mm)
    losses = []
    for _ in range(config.steps):
        pick = band[torch.randint(len(band), (config.points,), generator=generator)]
        points = (nodes_ijk[pick] + torch.rand(config.points, 3, generator=generator) - 0.5) @ ijk_to_ras[:, :3].T \
            + ijk_to_ras[:, 3]
        target = hu_to_unit(sample(fixed_array, fixed.ijk_to_ras, points)[0])
        moved = mapped(points + sample(u, control.ijk_to_ras, points, padding="zeros").T)
        warped = hu_to_unit(sample(moving_array, moving.ijk_to_ras, moved)[0])
        moved_ijk = moved.detach() @ to_moving[:3, :3].T + to_moving[:3, 3]
        weight = ((moved_ijk >= 0) & (moved_ijk <= moving_last)).all(-1).float()  # inside the moving CT
        difference = (weight * (warped - target) ** 2).sum() / weight.sum().clamp(min=1.0)
        membrane = sum((torch.diff(u, dim=axis) ** 2).mean() for axis in (1, 2, 3)) / config.control_mm ** 2
        loss = difference + config.smoothness * membrane
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        refined = mapped(nodes + sample(u, control.ijk_to_ras, nodes, padding="zeros").T) - nodes
    info.update(loss_first=losses[0], loss_last=losses[-1], max_mm=float(u.detach().norm(dim=0).max()),
                time_s=time.perf_counter() - started)
    return DisplacementField(refined.double().numpy().reshape(shape + (3,)), field.ijk_to_ras), info
