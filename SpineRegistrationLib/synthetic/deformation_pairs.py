"""Synthetic CT-to-CT pairs with a known deformation, for training and benchmarking the
deformable registration: articulated vertebra motions plus smooth soft-tissue warps.

A training CT (phantom or patient, with its vertebra labelmap) is resampled once onto an
RAS working grid (:class:`PairSource`). Each sample crops it and draws a stationary
velocity field v (RAS mm):

    v(x) = sum_k w_k(x) [omega_k x (x - c_k) + t_k]  +  s(x) v_soft(x)  (+ a global twist)

- vertebra k turns by the rotation vector omega_k about its centroid c_k and shifts by t_k
  (uniform within ``rotation_deg`` / ``translation_mm`` per axis); the normalised weights
  w_k = 1 / (eps + (D_k / f)^2) (D_k: distance to vertebra k, f = ``rigid_falloff_mm``,
  eps = 1e-3) are all but one-hot inside a vertebra, so the flow there is its rigid screw
  motion, and hand one motion to the next across the discs and soft tissue;
- v_soft is smooth noise (a random lattice of ``soft_scale_mm`` spacing, trilinearly
  upsampled, amplitude ``soft_mm``), kept off the bone by s(x) = min(1, D(x) / ``bone_margin_mm``).

The displacement is exp(v) (MONAI's ``DVF2DDF``, scaling and squaring), a diffeomorphism,
computed at half resolution and upsampled.
The velocity is blended rather than the se(3) logs of :mod:`..deform.polyrigid` because
samples are drawn by the thousand on small crops in torch; both give rigid vertebrae and a
smooth invertible field between them.

Direction (:mod:`..core.displacement`): the truth u maps a fixed point y to the moving point
y + u(y). The source crop is the moving image and fixed = moving o (id + u).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.labelmap import Labelmap
from ..core.volume import Volume
from ..core.grid import Grid, hu_to_unit, ras_mm_to_voxel, voxel_to_ras_mm, volume_on_grid

#: eps of the vertebra weights 1 / (eps + (D_k / f)^2): vertebra k's own weight is 1 / eps inside it.
_RIGID_EPS = 1e-3
#: Voxels added around a crop while synthesising, so that the warp never reads past the crop.
_MARGIN_VOXELS = 8


@dataclass
class DeformationConfig:
    """Knobs of the synthetic deformations (mm, degrees; intensities in [0, 1] units).

    rotation_deg / translation_mm: per vertebra and axis, uniform +-.
    soft_mm / soft_scale_mm: amplitude and lattice spacing of the soft-tissue velocity.
    rigid_falloff_mm: f of the vertebra weights; bone_margin_mm: soft motion fades to 0 at bone.
    global_rotation_deg / global_translation_mm: one extra twist of the whole crop (0 for
        training the deformable stage after an affine one).
    noise: standard deviation of Gaussian noise added to each image independently.
    integration_steps: scaling-and-squaring steps.
    """

    rotation_deg: float = 5.0
    translation_mm: float = 3.0
    soft_mm: float = 4.0
    soft_scale_mm: float = 32.0
    rigid_falloff_mm: float = 2.0
    bone_margin_mm: float = 6.0
    global_rotation_deg: float = 0.0
    global_translation_mm: float = 0.0
    noise: float = 0.01
    integration_steps: int = 7


class PairSource:
    """One CT and its labelmap on an RAS working grid of ``spacing_mm``, ready for :meth:`sample`."""

    def __init__(self, ct: Volume, labelmap: Labelmap, spacing_mm: float, name: str = "ct") -> None:
        from scipy.ndimage import distance_transform_edt

        self.name = name
        lo, hi = ct.bounds_ras()
        self.grid = Grid.covering(lo, hi, spacing_mm, multiple=1)
        self.image = hu_to_unit(volume_on_grid(ct, self.grid))
        self.labels = volume_on_grid(labelmap.volume, self.grid, labels=True).to(torch.int64)
        self.label_values = [v for v in labelmap.values if bool((self.labels == v).any())]
        if not self.label_values:
            raise ValueError(f"{name}: no labelled vertebra on the working grid")
        self.distances = torch.stack([torch.as_tensor(distance_transform_edt(
            (self.labels != v).numpy(), sampling=spacing_mm), dtype=torch.float32) for v in self.label_values])
        self.centroids = torch.stack([self.grid.points_ras()[self.labels == v].mean(0) for v in self.label_values])

    def crop_start(self, shape, rng: np.random.Generator) -> np.ndarray:
        """A random (k, j, i) start of a ``shape`` crop near a random vertebra (may overhang the grid)."""
        centre = self.centroids[rng.integers(len(self.label_values))].double().numpy()
        centre_kji = (np.linalg.inv(self.grid.ijk_to_ras) @ np.append(centre, 1.0))[:3][::-1]
        jitter = rng.uniform(-0.25, 0.25, 3) * np.array(shape)
        return np.round(centre_kji + jitter - np.array(shape) / 2.0).astype(int)

    def sample(self, shape, rng: np.random.Generator, config: DeformationConfig) -> dict[str, torch.Tensor]:
        """A synthetic pair on a ``shape`` (K, J, I) crop: fixed / moving (1, K, J, I) in [0, 1],
        fixed_labels / moving_labels (K, J, I) int64, truth (3, K, J, I) fixed -> moving in
        voxels (channels k, j, i, MONAI's order), velocity (3, K, J, I) voxels."""
        shape = tuple(int(n) for n in shape)
        m = _MARGIN_VOXELS
        start = self.crop_start(shape, rng) - m
        big = tuple(n + 2 * m for n in shape)
        grid = self.grid.crop(start, big)
        image, labels, distances = (_crop(t, start, big) for t in (self.image, self.labels, self.distances))
        # The velocity is smooth: drawn and integrated on every other node (8x cheaper), then
        # upsampled; that upsampled displacement is the truth the fixed image is made with.
        coarse = Grid(tuple((n + 1) // 2 for n in big), grid.ijk_to_ras @ np.diag([2.0, 2.0, 2.0, 1.0]))
        velocity = deformation_velocity(coarse, distances[:, ::2, ::2, ::2], self.centroids, rng, config)
        ddf = integrate(ras_mm_to_voxel(velocity[None], coarse), config.integration_steps)
        ddf = 2.0 * F.interpolate(ddf, size=big, mode="trilinear", align_corners=True)
        fixed = _warp(image[None, None], ddf, "bilinear")[0]
        fixed_labels = _warp(labels[None, None].float(), ddf, "nearest")[0, 0].long()
        inner = (slice(None),) + tuple(slice(m, m + n) for n in shape)
        noise = [config.noise * float(rng.uniform(0.0, 1.0)) for _ in range(2)]
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        out = {
            "fixed": fixed[inner] + noise[0] * torch.randn((1,) + shape, generator=generator),
            "moving": image[None][inner] + noise[1] * torch.randn((1,) + shape, generator=generator),
            "fixed_labels": fixed_labels[inner[1:]],
            "moving_labels": labels[inner[1:]],
            "truth": ddf[0][inner],
        }
        return out


def _crop(tensor: torch.Tensor, start_kji, shape_kji) -> torch.Tensor:
    """``tensor[..., k0:k0+K, j0:j0+J, i0:i0+I]``, zero-padded (replicated for images) where the crop overhangs."""
    pads, slices = [], []
    for axis, (s, n) in enumerate(zip(start_kji, shape_kji)):
        size = tensor.shape[tensor.ndim - 3 + axis]
        lo, hi = max(0, s), min(size, s + n)
        slices.append(slice(lo, max(lo, hi)))
        pads.append((lo - s, s + n - max(lo, hi)))
    out = tensor[(..., *slices)]
    flat = [p for pair in reversed(pads) for p in pair]
    if not any(flat):
        return out
    if out.dtype.is_floating_point and out.ndim == 3:  # an image: repeat its border (air or tissue)
        return F.pad(out[None, None], flat, mode="replicate")[0, 0]
    return F.pad(out, flat, value=0 if not out.dtype.is_floating_point else 1e3)


def _twist_velocity(points: torch.Tensor, omega: torch.Tensor, translation: torch.Tensor,
                    centre: torch.Tensor) -> torch.Tensor:
    """(..., 3) velocity of a rigid twist about ``centre``: omega x (x - c) + t."""
    return torch.linalg.cross(omega.expand_as(points), points - centre, dim=-1) + translation


def deformation_velocity(grid: Grid, distances: torch.Tensor, centroids: torch.Tensor,
                         rng: np.random.Generator, config: DeformationConfig) -> torch.Tensor:
    """The random stationary velocity (K, J, I, 3) RAS mm on ``grid`` (module docstring).

    distances: (V, K, J, I) mm to each vertebra on ``grid``; centroids: (V, 3) RAS mm.
    """
    points = grid.points_ras()
    count = len(centroids)
    omega = torch.as_tensor(np.deg2rad(rng.uniform(-config.rotation_deg, config.rotation_deg, (count, 3))),
                            dtype=torch.float32)
    shift = torch.as_tensor(rng.uniform(-config.translation_mm, config.translation_mm, (count, 3)),
                            dtype=torch.float32)
    # 1 / (eps + (D/f)^2), not 1 / (1 + (D/f)^2): with the 1 a neighbour 5 mm away kept ~15 % of
    # the weight inside a vertebra, which then bent; with eps = 1e-3 it keeps < 0.03 %.
    weights = 1.0 / (_RIGID_EPS + (distances / config.rigid_falloff_mm) ** 2)
    weights = weights / weights.sum(0, keepdim=True).clamp(min=1e-12)
    velocity = torch.zeros(points.shape)
    for k in range(count):
        velocity += weights[k][..., None] * _twist_velocity(points, omega[k], shift[k], centroids[k])
    if config.soft_mm > 0:
        coarse = [max(2, int(np.ceil(n * grid.spacing_mm / config.soft_scale_mm)) + 1) for n in grid.shape]
        lattice = torch.as_tensor(rng.uniform(-config.soft_mm, config.soft_mm, [1, 3] + coarse), dtype=torch.float32)
        soft = F.interpolate(lattice, size=grid.shape, mode="trilinear", align_corners=True)[0].permute(1, 2, 3, 0)
        away = (distances.min(0).values / config.bone_margin_mm).clamp(0.0, 1.0)
        velocity += away[..., None] * soft
    if config.global_rotation_deg > 0 or config.global_translation_mm > 0:
        omega_g = torch.as_tensor(np.deg2rad(rng.uniform(-config.global_rotation_deg, config.global_rotation_deg, 3)),
                                  dtype=torch.float32)
        shift_g = torch.as_tensor(rng.uniform(-config.global_translation_mm, config.global_translation_mm, 3),
                                  dtype=torch.float32)
        velocity += _twist_velocity(points, omega_g, shift_g, points.reshape(-1, 3).mean(0))
    return velocity


def integrate(velocity_voxels: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """(B, 3, K, J, I) stationary velocity (voxels) -> its exponential's displacement, by scaling
    and squaring (MONAI's DVF2DDF)."""
    from monai.networks.blocks import DVF2DDF

    return DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border")(velocity_voxels)


def _warp(image: torch.Tensor, ddf: torch.Tensor, mode: str) -> torch.Tensor:
    from monai.networks.blocks import Warp

    return Warp(mode=mode, padding_mode="border")(image, ddf)


def truth_ras_mm(truth_voxels: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(3, K, J, I) truth in voxels -> (K, J, I, 3) RAS mm on ``grid``."""
    return voxel_to_ras_mm(truth_voxels[None], grid)[0]


def synthetic_pair(ct: Volume, labelmap: Labelmap, rng: np.random.Generator, config: DeformationConfig,
                   spacing_mm: float = 2.0, source: PairSource | None = None):
    """A full-resolution test pair from one CT: (fixed CT, fixed labelmap, truth field).

    The CT is the moving image; the fixed one is it warped through the truth (a
    :class:`..core.displacement.DisplacementField` on a ``spacing_mm`` grid covering the CT, fixed
    RAS -> moving RAS), on the CT's own voxel grid, as a second scan of the same patient.
    ``source``: the CT's :class:`PairSource` when already built (it holds the distance maps).
    """
    import SimpleITK as sitk

    from ..core.displacement import DisplacementField
    from ..io.displacement import warp_image
    from ..io.images import volume_to_image

    source = source or PairSource(ct, labelmap, spacing_mm, "ct")
    grid = source.grid
    # On the grid itself, not every other node as for training crops: on a twice coarser grid a
    # vertebra's surface nodes blend with its neighbours' motion, and the truth inside the bone
    # was ~0.7 mm from any rigid motion (measured on the real CT).
    velocity = deformation_velocity(grid, source.distances, source.centroids, rng, config)
    ddf = integrate(ras_mm_to_voxel(velocity[None], grid), config.integration_steps)
    truth = DisplacementField(voxel_to_ras_mm(ddf, grid)[0].double().numpy(), grid.ijk_to_ras)
    reference = volume_to_image(ct)
    fixed = warp_image(reference, truth, reference, default=float(ct.array.min()))
    fixed_labels = warp_image(volume_to_image(labelmap.volume), truth, reference, labels=True)
    fixed_ct = Volume(sitk.GetArrayFromImage(fixed), ct.ijk_to_ras.copy())
    if config.noise > 0:
        fixed_ct.array = fixed_ct.array + (config.noise * 3000.0 * rng.standard_normal(fixed_ct.array.shape)).astype(
            fixed_ct.array.dtype)
    fixed_map = Labelmap(Volume(sitk.GetArrayFromImage(fixed_labels), ct.ijk_to_ras.copy()), labelmap.scheme)
    return fixed_ct, fixed_map, truth
