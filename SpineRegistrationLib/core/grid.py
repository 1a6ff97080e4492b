"""Working grids of the CT-to-CT registration and resampling onto them, in torch.

A :class:`Grid` is an RAS-aligned lattice (i along R, j along A, k along S, isotropic
spacing) on which the registration computes: the affine stage's pyramid levels and the
network's input. Volumes (any grid, any direction) are sampled onto it at RAS points
through ``torch.nn.functional.grid_sample``; before sampling onto a coarser grid they are
box-averaged (anti-aliasing), so a 0.7 mm CT and a 2 mm phantom look alike at 2 mm.

Network displacements are in voxels of the working grid, channels in array order (k, j, i)
(MONAI's ``Warp`` convention); :func:`voxel_to_ras_mm` / :func:`ras_mm_to_voxel` convert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume

#: CT intensities are mapped to [0, 1] over this HU window before any similarity.
HU_WINDOW = (-1000.0, 2000.0)


@dataclass
class Grid:
    """shape: (K, J, I) nodes; ijk_to_ras: (4, 4), RAS mm = ijk_to_ras @ [i, j, k, 1]."""

    shape: tuple[int, int, int]
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.shape = tuple(int(n) for n in self.shape)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)

    @property
    def spacing_mm(self) -> float:
        return float(np.linalg.norm(self.ijk_to_ras[:3, 0]))

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))

    @classmethod
    def covering(cls, lo_ras, hi_ras, spacing_mm: float, multiple: int = 16) -> "Grid":
        """The RAS-aligned grid of ``spacing_mm`` centred on the box [lo, hi] (RAS mm) that
        covers it, each size rounded up to a multiple of ``multiple`` (the network's need)."""
        lo, hi = np.asarray(lo_ras, float), np.asarray(hi_ras, float)
        counts_ijk = [max(multiple, multiple * math.ceil((extent / spacing_mm + 1) / multiple))
                      for extent in hi - lo]
        centre = (lo + hi) / 2.0
        ijk_to_ras = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        ijk_to_ras[:3, 3] = centre - spacing_mm * (np.array(counts_ijk) - 1) / 2.0
        return cls(tuple(counts_ijk[::-1]), ijk_to_ras)

    def crop(self, start_kji, shape_kji) -> "Grid":
        """The sub-grid starting at node ``start_kji`` with ``shape_kji`` nodes."""
        ijk_to_ras = self.ijk_to_ras.copy()
        ijk_to_ras[:3, 3] = self.ijk_to_ras[:3, :3] @ np.asarray(start_kji, float)[::-1] + self.ijk_to_ras[:3, 3]
        return Grid(tuple(shape_kji), ijk_to_ras)

    def points_ras(self, dtype=torch.float32) -> torch.Tensor:
        """(K, J, I, 3) RAS mm of the nodes."""
        axes = [torch.arange(n, dtype=torch.float64) for n in self.shape]
        k, j, i = torch.meshgrid(*axes, indexing="ij")
        ijk = torch.stack([i, j, k], -1)
        matrix = torch.as_tensor(self.ijk_to_ras)
        return (ijk @ matrix[:3, :3].T + matrix[:3, 3]).to(dtype)

    def volume(self, array: np.ndarray) -> Volume:
        return Volume(array, self.ijk_to_ras.copy())


def hu_to_unit(hu: torch.Tensor) -> torch.Tensor:
    """HU -> [0, 1] over :data:`HU_WINDOW` (clipped)."""
    lo, hi = HU_WINDOW
    return ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)


def _pooled(array: torch.Tensor, ijk_to_ras: np.ndarray, spacing_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """Box-average a (C, K, J, I) tensor down to about ``spacing_mm`` per axis (anti-aliasing);
    the pooled grid's matrix puts each node at the centre of the voxels it averages."""
    voxel = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)  # (I, J, K)
    factors_ijk = [max(1, int(round(spacing_mm / v))) for v in voxel]
    if factors_ijk == [1, 1, 1]:
        return array, ijk_to_ras
    kernel = tuple(factors_ijk[::-1])
    pooled = F.avg_pool3d(array[None].float(), kernel, stride=kernel, ceil_mode=True)[0]
    matrix = ijk_to_ras.copy()
    matrix[:3, :3] = ijk_to_ras[:3, :3] * np.array(factors_ijk, float)
    matrix[:3, 3] = ijk_to_ras[:3, :3] @ ((np.array(factors_ijk, float) - 1.0) / 2.0) + ijk_to_ras[:3, 3]
    return pooled, matrix


def normalising_matrix(ijk_to_ras: np.ndarray, shape_kji) -> np.ndarray:
    """(4, 4) RAS mm -> grid_sample's (x, y, z) in [-1, 1] (align_corners=True) of a (K, J, I) array."""
    size = np.array([max(n - 1, 1) for n in shape_kji[::-1]], float)
    scale = np.diag(np.append(2.0 / size, 1.0))
    scale[:3, 3] = -1.0
    return scale @ np.linalg.inv(ijk_to_ras)


def normalised_coordinates(points_ras: torch.Tensor, ijk_to_ras: np.ndarray, shape_kji) -> torch.Tensor:
    """(..., 3) RAS mm -> grid_sample's (x, y, z) in [-1, 1] (align_corners=True) of a (K, J, I) array."""
    matrix = torch.as_tensor(normalising_matrix(ijk_to_ras, shape_kji), dtype=points_ras.dtype,
                             device=points_ras.device)
    return points_ras @ matrix[:3, :3].T + matrix[:3, 3]


def sample(array: torch.Tensor, ijk_to_ras: np.ndarray, points_ras: torch.Tensor, labels: bool = False,
           padding: str = "border") -> torch.Tensor:
    """Values of a (C, K, J, I) tensor at (..., 3) RAS points -> (C, ...); trilinear or nearest."""
    coords = normalised_coordinates(points_ras, ijk_to_ras, array.shape[1:])
    flat = coords.reshape(1, -1, 1, 1, 3).to(torch.float32)
    values = F.grid_sample(array[None].float(), flat, mode="nearest" if labels else "bilinear",
                           padding_mode="zeros" if labels else padding, align_corners=True)
    return values[0, :, :, 0, 0].reshape(array.shape[0], *points_ras.shape[:-1])


def volume_on_grid(volume: Volume, grid: Grid, labels: bool = False, points_ras: torch.Tensor | None = None,
                   pool: bool = True) -> torch.Tensor:
    """``volume`` sampled at the grid's nodes (or at ``points_ras``, (K, J, I, 3), e.g. moved
    by a transform) -> (K, J, I) float32 tensor; box-averaged first unless labels. Labels
    take the nearest voxel and 0 outside; intensities repeat the border."""
    array = torch.as_tensor(np.ascontiguousarray(volume.array))[None]
    matrix = volume.ijk_to_ras
    if not labels and pool:
        array, matrix = _pooled(array.float(), matrix, grid.spacing_mm)
    points = grid.points_ras() if points_ras is None else points_ras
    return sample(array, matrix, points, labels=labels)[0]


def voxel_to_ras_mm(ddf: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(B, 3, K, J, I) displacement in voxels, channels (k, j, i) -> (B, K, J, I, 3) RAS mm."""
    linear = torch.as_tensor(grid.ijk_to_ras[:3, :3], dtype=ddf.dtype, device=ddf.device)
    return ddf.flip(1).permute(0, 2, 3, 4, 1) @ linear.T


def ras_mm_to_voxel(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The inverse of :func:`voxel_to_ras_mm`: (B, K, J, I, 3) RAS mm -> (B, 3, K, J, I) voxels (k, j, i)."""
    inverse = torch.as_tensor(np.linalg.inv(grid.ijk_to_ras[:3, :3]), dtype=displacement.dtype,
                              device=displacement.device)
    return (displacement @ inverse.T).permute(0, 4, 1, 2, 3).flip(1)
