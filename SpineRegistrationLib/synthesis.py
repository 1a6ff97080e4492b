"""Synthetic intraoperative X-rays with known per-vertebra poses (the ground truth of every test,
benchmark and training case).

The intraoperative spine is the preoperative CT with each vertebra moved rigidly by its own
pose (CT RAS -> world, about its centroid) and the soft tissue left in place. Attenuation
is linear in mu, so its DRR is exactly the DRR of the tissue background (the CT with its
vertebrae replaced by soft tissue) plus the sum of each vertebra's DRR at its pose: no
volume is resampled, and the truth is exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .drr import Detectors, DRRRenderer
from .geometry import XrayGeometry
from .io.labelmaps import Labelmap, vertebra_mask
from .pose import params_to_matrix
from .volume import Volume
from .xray_sim import XraySimConfig, hu_to_mu_spectral, simulate_xray

#: HU given to the voxels a vertebra leaves behind in the tissue background (muscle).
SOFT_TISSUE_HU = 40.0


@dataclass
class BiplanarCase:
    """Simulated X-rays of a posed spine and the truth that produced them.

    images: one (rows, columns) float32 radiograph per geometry, bone bright, in [0, 1].
    geometries: the views.
    poses: vertebra name -> (4, 4) matrix_ras (CT RAS -> world), the ground truth.
    params: vertebra name -> (6,) (rx, ry, rz deg, tx, ty, tz mm) about its centroid.
    """

    images: list[np.ndarray]
    geometries: list[XrayGeometry]
    poses: dict[str, np.ndarray]
    params: dict[str, np.ndarray] = field(default_factory=dict)


def random_vertebra_params(
    names: list[str], max_deg: float, max_mm: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Independent uniform poses per vertebra: angles in [-max_deg, max_deg], shifts in [-max_mm, max_mm]."""
    return {
        name: np.concatenate([rng.uniform(-max_deg, max_deg, 3), rng.uniform(-max_mm, max_mm, 3)]) for name in names
    }


def render_posed_spine(
    ct_hu: Volume,
    labelmap: Labelmap,
    poses: dict[str, np.ndarray],
    geometries: list[XrayGeometry],
    hu_to_mu=hu_to_mu_spectral,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Optical depth (rows, columns) per view of the CT with the vertebrae in ``poses`` moved.

    Vertebrae not in ``poses`` stay where they are, as part of the background.
    """
    background = ct_hu.array.astype(np.float32, copy=True)
    masks = {name: vertebra_mask(labelmap, name) for name in poses}
    for mask in masks.values():
        background[mask] = SOFT_TISSUE_HU
    mu_ct = ct_hu.with_array(hu_to_mu(ct_hu.array))
    renderers = [(DRRRenderer(ct_hu.with_array(hu_to_mu(background))).to(device), np.eye(4))]
    renderers += [(DRRRenderer(mu_ct, mask=masks[name]).to(device), poses[name]) for name in poses]
    images = []
    for geometry in geometries:
        detectors = Detectors.from_geometries([geometry], device=device)
        with torch.no_grad():
            depth = sum(
                renderer(torch.as_tensor(matrix, dtype=torch.float32, device=device)[None], detectors)
                for renderer, matrix in renderers
            )
        images.append(depth[0, 0].cpu().numpy())
    return images


def simulate_case(
    ct_hu: Volume,
    labelmap: Labelmap,
    params: dict[str, np.ndarray],
    centroids_ras: dict[str, np.ndarray],
    geometries: list[XrayGeometry],
    sim: XraySimConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> BiplanarCase:
    """Radiographs (noise, scatter, gamma, collimation: see :mod:`.xray_sim`) of the spine posed by ``params``."""
    poses = {name: params_to_matrix(p, centroids_ras[name]) for name, p in params.items()}
    depths = render_posed_spine(ct_hu, labelmap, poses, geometries, device=device)
    generator = torch.Generator().manual_seed(seed)
    sim = XraySimConfig() if sim is None else sim
    images = [simulate_xray(torch.from_numpy(depth), sim, generator).numpy() for depth in depths]
    return BiplanarCase(images=images, geometries=geometries, poses=poses, params=dict(params))
