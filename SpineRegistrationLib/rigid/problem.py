"""What the rigid registration compares: the X-rays at each pyramid level, the vertebra's DRRs,
the projected region of interest, and the objective of one level (:class:`LevelProblem`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.pose import pose_matrix, rotvec_to_matrix
from ..core.volume import Volume, bounding_box_ijk, mask_center_ras
from ..errors import InputError
from ..geometry import XrayGeometry
from ..render.drr import Detectors, DRRRenderer
from ..similarity import vertebra_similarity


@dataclass
class View:
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


def pyramid(image: torch.Tensor, geometry: XrayGeometry, pixel_mm: Sequence[float]) -> list[View]:
    """Area-averaged copies of the X-ray with the detector pixel size of each level."""
    views = []
    for target in pixel_mm:
        factor = max(1.0, target / min(geometry.pixel_spacing))
        level = geometry.scaled(factor) if factor > 1.0 else geometry
        pooled = F.adaptive_avg_pool2d(image[None, None], (level.rows, level.columns))[0, 0]
        views.append(View(pooled, level))
    return views


class VertebraDRR:
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


def projected_window(vertebra: VertebraDRR, matrix: np.ndarray, view: View, margin_px: int) -> tuple[int, int, int, int]:
    """Pixel window (c0, r0, columns, rows) around the projected ROI box, grown by ``margin_px``."""
    world = vertebra.corners_ras @ matrix[:3, :3].T + matrix[:3, 3]
    pixels = view.geometry.project(world)
    c0, r0 = np.floor(pixels.min(0)).astype(int) - margin_px
    c1, r1 = np.ceil(pixels.max(0)).astype(int) + margin_px + 1
    return int(c0), int(r0), int(c1 - c0), int(r1 - r0)


def crop_view(view: View, window: tuple[int, int, int, int]) -> View:
    """The X-ray inside ``window`` (zero outside the detector) and the matching sub-geometry."""
    c0, r0, cols, rows = window
    out = view.image.new_zeros(rows, cols)
    src_r0, src_c0 = max(r0, 0), max(c0, 0)
    src_r1, src_c1 = min(r0 + rows, view.geometry.rows), min(c0 + cols, view.geometry.columns)
    if src_r1 > src_r0 and src_c1 > src_c0:
        out[src_r0 - r0 : src_r1 - r0, src_c0 - c0 : src_c1 - c0] = view.image[src_r0:src_r1, src_c0:src_c1]
    return View(out, view.geometry.cropped(c0, r0, cols, rows))


def drr_support(drr: torch.Tensor, dilate_px: int) -> torch.Tensor:
    """Where the DRR has content, dilated by ``dilate_px``: the region the similarity looks at."""
    mask = (drr > 1e-3 * drr.max()).to(drr.dtype)
    if dilate_px > 0:
        mask = F.max_pool2d(mask[None, None], 2 * dilate_px + 1, stride=1, padding=dilate_px)[0, 0]
    return mask


def delta_pose(rotvec: torch.Tensor, translation: torch.Tensor, center_world: torch.Tensor, start: torch.Tensor):
    """(B, 4, 4): rotate by ``rotvec`` (rad) about ``center_world``, move it by ``translation`` (mm), after ``start``."""
    return pose_matrix(rotvec_to_matrix(rotvec), translation, center_world) @ start


class LevelProblem:
    """The objective at one pyramid level: cropped X-rays, fixed ROI weights, batched poses."""

    def __init__(self, vertebra: VertebraDRR, views: list[View], start: np.ndarray, margin_px: list[int], device):
        self.vertebra = vertebra
        self.crops = [crop_view(view, projected_window(vertebra, start, view, m)) for view, m in zip(views, margin_px)]
        pose = torch.as_tensor(start, dtype=torch.float32, device=device)[None]
        with torch.no_grad():
            self.weights = []
            for crop in self.crops:
                dilate = max(1, int(round(3.0 / crop.geometry.pixel_spacing[0])))
                self.weights.append(drr_support(vertebra.render(pose, crop.geometry)[0], dilate))
        self.images = [crop.image.to(device) for crop in self.crops]

    def similarity(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) -> (B,) mean similarity over the views."""
        scores = [
            vertebra_similarity(self.vertebra.render(poses, crop.geometry), image, weight)
            for crop, image, weight in zip(self.crops, self.images, self.weights)
        ]
        return torch.stack(scores).mean(0)
