"""The learned rigid CT-to-CT stage: a small 3D network that finds the rigid transform between
two CTs in one forward pass, and its model file.

The fixed and the moving CT are sampled on one RAS-aligned cube of ``size`` nodes at
``spacing_mm`` (32 x 8 mm = 256 mm by default) centred on c, the fixed region's centre
(intensities :func:`..core.grid.hu_to_unit`). The network is KeyMorph's (Yu et al. 2022): one
MONAI ``BasicUNet`` reads each CT on its own and returns ``keypoints`` heat maps; their soft
arg-maxima are matching keypoints p_i (fixed) and q_i (moving), offsets from c in RAS mm, and
the rigid transform is their least-squares fit (Kabsch, differentiable through the SVD):

    x = c + t + R (y - c),   (R, t) = argmin sum_i |R p_i + t - q_i|^2   (moving RAS <- fixed RAS)

The fit, not a regression head, gives the pose: a shift of either CT moves its keypoints with it,
and no rotation is out of reach. :func:`predict_rigid` applies it ``passes`` times: each pass
resamples the moving CT through the matrix so far and composes the residual (A <- A S). Trained by
``spinereg train-deform --network rigid`` (:mod:`.training`) on synthetic pairs whose fixed CT is
the moving one turned by up to +-10 deg / +-20 mm, with articulated and soft-tissue motion on top.

Model file (``Resources/Models/rigid3d_phantoms.pt``): ``{"format": "spinereg-rigid3d-net",
"version": 1, "config": RigidNetConfig dict, "state_dict": ..., "info": {...}}``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.grid import Grid, hu_to_unit, volume_on_grid
from ..core.volume import Volume

MODEL_FORMAT = "spinereg-rigid3d-net"
CHECKPOINT_FORMAT = "spinereg-rigid3d-net-checkpoint"
#: The shipped model's file name in Resources/Models.
SHIPPED_NAME = "rigid3d_phantoms.pt"


@dataclass
class RigidNetConfig:
    """spacing_mm / size: the cube the network reads (nodes per side at that spacing).
    keypoints: heat maps per CT; features: MONAI BasicUNet's six feature counts."""

    spacing_mm: float = 8.0
    size: int = 32
    keypoints: int = 32
    features: tuple[int, ...] = (16, 16, 32, 64, 64, 16)

    def to_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "RigidNetConfig":
        return cls(spacing_mm=float(values["spacing_mm"]), size=int(values["size"]),
                   keypoints=int(values["keypoints"]), features=tuple(values["features"]))


class RigidKeypointNet(torch.nn.Module):
    """forward(moving, fixed) (B, 1, N, N, N) in [0, 1] -> (B, 4, 4) matrices of x - c = R (y - c) + t,
    offsets from the cube's centre c in RAS mm (module docstring)."""

    def __init__(self, config: RigidNetConfig) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.config = config
        self.unet = BasicUNet(spatial_dims=3, in_channels=1, out_channels=config.keypoints, features=config.features)
        n = config.size
        axis = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0) * config.spacing_mm
        k, j, i = torch.meshgrid(axis, axis, axis, indexing="ij")
        # RAS offsets of the cube's nodes (the cube is RAS-aligned: i runs along R, j along A, k along S).
        self.register_buffer("offsets", torch.stack([i, j, k], -1).reshape(-1, 3), persistent=False)

    def keypoints(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, N, N, N) -> (B, K, 3) soft arg-maxima of the heat maps, RAS mm from the centre."""
        heat = self.unet(image).flatten(2).softmax(-1)
        return heat @ self.offsets

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        both = self.keypoints(torch.cat([fixed, moving], 0))
        return kabsch(*both.split(fixed.shape[0]))


def kabsch(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) points p and q -> (B, 4, 4) rigid M minimising sum |M p - q|^2 (no reflection)."""
    p_mean, q_mean = p.mean(1, keepdim=True), q.mean(1, keepdim=True)
    covariance = (q - q_mean).transpose(1, 2) @ (p - p_mean)
    u, _, vt = torch.linalg.svd(covariance)
    sign = torch.ones_like(covariance[:, 0])
    sign[:, 2] = torch.det(u @ vt).sign()
    rotation = u @ torch.diag_embed(sign) @ vt
    out = torch.zeros(p.shape[0], 4, 4, dtype=p.dtype, device=p.device)
    out[:, :3, :3] = rotation
    out[:, :3, 3] = (q_mean - p_mean @ rotation.transpose(1, 2))[:, 0]
    out[:, 3, 3] = 1.0
    return out


def about_centre(matrix: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(4, 4) map of offsets from ``centre`` (RAS mm) -> the same map of RAS points."""
    shift, back = torch.eye(4, dtype=matrix.dtype), torch.eye(4, dtype=matrix.dtype)
    shift[:3, 3], back[:3, 3] = -centre, centre
    return back @ matrix @ shift


def cube_grid(centre_ras, config: RigidNetConfig) -> Grid:
    """The RAS-aligned cube the network reads, centred on ``centre_ras`` (mm)."""
    half = (config.size - 1) / 2.0 * config.spacing_mm
    ijk_to_ras = np.diag([config.spacing_mm] * 3 + [1.0])
    ijk_to_ras[:3, 3] = np.asarray(centre_ras, float) - half
    return Grid((config.size,) * 3, ijk_to_ras)


def predict_rigid(network: torch.nn.Module, fixed: Volume, moving: Volume, centre_ras, passes: int = 2,
                  device="cpu") -> np.ndarray:
    """The (4, 4) rigid matrix (moving RAS <- fixed RAS) the network reads from the two CTs (HU)
    around ``centre_ras``, after ``passes`` passes (module docstring)."""
    grid = cube_grid(centre_ras, network.config)
    points = grid.points_ras()
    centre = torch.as_tensor(np.asarray(centre_ras, float), dtype=torch.float32)
    matrix = torch.eye(4)
    with torch.no_grad():
        fixed_image = hu_to_unit(volume_on_grid(fixed, grid))[None, None].to(device)
        for _ in range(passes):
            moved = points @ matrix[:3, :3].T + matrix[:3, 3]
            moving_image = hu_to_unit(volume_on_grid(moving, grid, points_ras=moved))[None, None].to(device)
            matrix = matrix @ about_centre(network(moving_image, fixed_image)[0].cpu(), centre)
    return matrix.double().numpy()


def model_payload(network: torch.nn.Module, config: RigidNetConfig, info: dict | None = None) -> dict:
    from ..learned.checkpoint import weights_payload

    return weights_payload(MODEL_FORMAT, network, config, info)


def network_from_payload(payload: dict, path) -> tuple[torch.nn.Module, RigidNetConfig]:
    from ..learned.checkpoint import network_from

    return network_from(payload, path, RigidNetConfig, RigidKeypointNet, "rigid CT-to-CT model")


def load_rigid_network(path: str | os.PathLike, device="cpu") -> torch.nn.Module:
    """A model file or training checkpoint -> the network in eval mode; InputError when bad."""
    from ..learned.checkpoint import read_payload

    payload = read_payload(path, (MODEL_FORMAT, CHECKPOINT_FORMAT))
    network, _ = network_from_payload(payload, path)
    return network.to(device).eval()


def shipped_rigid_path() -> Path | None:
    """Resources/Models/rigid3d_phantoms.pt (or its installed copy), or None."""
    from ..learned.models import shipped_file

    return shipped_file(SHIPPED_NAME)
