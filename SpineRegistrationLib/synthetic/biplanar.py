"""Synthetic intraoperative X-rays with known per-vertebra poses (the truth of the sample data,
the demo and many tests): some vertebrae moved rigidly, each by its own pose (CT RAS -> world,
about its centroid), the soft tissue left in place, rendered by
:class:`..render.spine_xray.PosedSpine` and made realistic by :mod:`..render.xray_sim`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.pose import params_to_matrix
from ..core.volume import Volume
from ..geometry import XrayGeometry
from ..io.labelmaps import Labelmap
from ..render.spine_xray import PosedSpine
from ..render.xray_sim import XraySimConfig, simulate_xray
from .acquisition import draw_pose_offset


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
    return {name: draw_pose_offset(rng, max_deg, max_mm) for name in names}


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
    """Radiographs (noise, scatter, gamma, collimation: see :mod:`..render.xray_sim`) of the spine posed by
    ``params`` (vertebra name -> pose parameters about its centroid; the others stay in place),
    from the project's one simulator (:class:`..render.spine_xray.PosedSpine`)."""
    poses = {name: params_to_matrix(p, centroids_ras[name]) for name, p in params.items()}
    spine = PosedSpine(ct_hu, labelmap, list(poses), device=device)
    depths = [spine.optical_depth(geometry, poses) for geometry in geometries]
    generator = torch.Generator().manual_seed(seed)
    sim = XraySimConfig() if sim is None else sim
    images = [simulate_xray(torch.from_numpy(depth), sim, generator).numpy() for depth in depths]
    return BiplanarCase(images=images, geometries=geometries, poses=poses, params=dict(params))
