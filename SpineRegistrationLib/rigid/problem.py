"""What the rigid registration compares: the X-rays at each pyramid level, the vertebra's DRRs,
the projected region of interest, and the objective of one level (:class:`LevelProblem`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.box import OrientedBox
from ..core.pose import pose_matrix, rotvec_to_matrix
from ..core.volume import Volume, bounding_box_ijk, mask_center_ras
from ..errors import InputError
from ..geometry import XrayGeometry
from ..render.drr import Detectors, DRRRenderer, hu_to_mu
from ..render.spine_xray import SOFT_TISSUE_HU, tissue_split
from ..similarity import vertebra_similarity


#: Voxel blocks along the beam are averaged to at least this length (mm) before rendering: a
#: line integral changes little when the volume is averaged along the line first.
BEAM_BLOCK_MM = 2.0


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
    """What a vertebra looks like in an X-ray, at any pose: its DRRs, its projected support, its ROI.

    ``render`` draws what the similarity compares with the X-ray: the CT inside the
    vertebra's box grown by ``context_mm`` (its neighbours, ribs and soft tissue move with
    it, which is right to first order), or the vertebra alone when ``context_mm`` is 0.
    ``support`` draws where the vertebra alone projects: the similarity's weight, so the
    neighbours cannot decide the match. Renderers are made per volume resolution (no finer
    than the detector pixels need) and kept. center_ras / corners_ras: the vertebra's
    centroid and the corners of its box grown by ``margin_mm`` (CT RAS mm).

    ``region`` (a user's ROI box, CT RAS) replaces both boxes: the context is the CT whose
    voxel centres lie in it, above soft tissue (``context_mm`` and ``full_depth`` then do not apply), the
    vertebra is its label inside it, and the X-ray window is the projection of its corners.
    The centroid stays the whole vertebra's (the pose's centre).
    """

    def __init__(self, mu: Volume, mask: np.ndarray, margin_mm: float, device, context_mm: float = 0.0,
                 full_depth: bool = False, region: OrientedBox | None = None) -> None:
        margin_vox = np.ceil(margin_mm / mu.spacing_mm).astype(int)
        self.center_ras = mask_center_ras(mask, mu)
        self.inside = None  # (K, J, I) bool over context_roi: the voxels of ``region``
        if region is not None:
            start, stop, self.inside = region.voxels(mu)
            crop = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
            whole, mask = mask, np.zeros(mask.shape, bool)
            mask[crop] = self.inside & whole[crop]
            if not mask.any():
                raise InputError("the vertebra's box holds none of its voxels")
            self.context_roi, full_depth = (start, stop), False
        else:
            self.context_roi = (bounding_box_ijk(mask, np.ceil(context_mm / mu.spacing_mm).astype(int))
                                if context_mm > 0 else None)
        self.roi = bounding_box_ijk(mask, margin_vox)
        self.mu, self.mask, self.device, self.full_depth = mu, mask, device, full_depth
        self._renderers: dict[tuple[str, int, int], DRRRenderer] = {}
        start, stop = self.roi
        box = np.array([[a, b, c] for a in (start[0], stop[0] - 1) for b in (start[1], stop[1] - 1)
                        for c in (start[2], stop[2] - 1)], float)
        self.corners_ras = region.corners() if region is not None else mu.ijk_to_ras_points(box)
        self.evaluations = 0

    def center_world(self, matrix: np.ndarray) -> np.ndarray:
        """(3,) world RAS mm of the vertebra's centroid at pose ``matrix`` (4, 4 matrix_ras)."""
        return matrix[:3, :3] @ self.center_ras + matrix[:3, 3]

    def _draw(self, what: str, poses: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        matrix = poses[0].detach().cpu().double().numpy()
        center_world = self.center_world(matrix)
        pixel_at_object_mm = min(geometry.pixel_spacing) / geometry.magnification(center_world)
        beam_ras = np.linalg.solve(matrix[:3, :3], center_world - geometry.source)
        axis = int(np.argmax(np.abs(np.linalg.solve(self.mu.ijk_to_ras[:3, :3], beam_ras))))  # voxel axis nearest the beam
        # Voxel blocks no finer than the pixels need across the beam, and BEAM_BLOCK_MM along it.
        spacing = np.asarray(self.mu.spacing_mm, float)
        block_mm = np.full(3, pixel_at_object_mm)
        block_mm[axis] = max(pixel_at_object_mm, BEAM_BLOCK_MM)
        factors = tuple(int(f) for f in np.maximum(1, np.round(block_mm / spacing)))
        full_depth = what in ("context", "background") and self.full_depth
        key = (what, factors, axis if full_depth else -1)
        if key not in self._renderers:
            if what in ("context", "background"):
                start, stop = (np.array(bound) for bound in self.context_roi)
                if full_depth:  # the whole CT along the beam
                    start[axis], stop[axis] = 0, self.mu.shape_ijk[axis]
            else:
                start, stop = self.roi
            volume, mask = self._volume(what, start, stop)
            renderer = DRRRenderer(volume, mask=None if what in ("context", "background") else mask,
                                   roi_ijk=((0, 0, 0), volume.shape_ijk), downsample=factors)
            self._renderers[key] = renderer.to(self.device)
        detectors = Detectors.from_geometries([geometry], device=poses.device)
        return self._renderers[key](poses, detectors)[:, 0]

    def _volume(self, what: str, start_ijk, stop_ijk) -> tuple[Volume, np.ndarray]:
        """The CT inside the voxel box [start, stop) as ``what`` renders it, and the vertebra's mask there.

        As it is ("context", "vertebra"), the vertebra replaced by soft tissue ("background"),
        or the vertebra's attenuation above soft tissue ("excess"). Only the box is split,
        never the whole CT.
        """
        box = self.mu.cropped(start_ijk, stop_ijk)
        mask = self.mu.with_array(self.mask).cropped(start_ijk, stop_ijk).array
        soft = float(hu_to_mu(np.float32(SOFT_TISSUE_HU)))
        if what not in ("context", "vertebra"):
            background, excess = tissue_split(box.array, [mask], soft)
            box = box.with_array(background if what == "background" else excess)
        if what in ("context", "background") and self.inside is not None:
            # Inside the user's box only, and above soft tissue, so that the box's faces draw no edge.
            box = box.with_array(np.clip(box.array - soft, 0.0, None) * self.inside)
        return box, mask

    def background(self, pose: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        """(1, 4, 4) -> (rows, columns): the context without the vertebra (soft tissue in its place), fixed."""
        with torch.no_grad():
            return self._draw("background", pose, geometry)[0]

    def render_background(self, poses: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        """(B, 4, 4) -> (B, rows, columns): the context without the vertebra at ``poses``, differentiable."""
        self.evaluations += poses.shape[0]
        return self._draw("background", poses, geometry)

    def render_excess(self, poses: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        """(B, 4, 4) -> (B, rows, columns): the vertebra's attenuation above soft tissue at ``poses``
        (what it adds to the background; the simulator's decomposition)."""
        return self._draw("excess", poses, geometry)

    def render_over(self, poses: torch.Tensor, geometry: XrayGeometry, background: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) -> (B, rows, columns): the vertebra alone at ``poses`` over a fixed ``background``
        (the simulator's decomposition: background plus the vertebra's attenuation above tissue)."""
        self.evaluations += poses.shape[0]
        return self.render_excess(poses, geometry) + background

    def render(self, poses: torch.Tensor, geometry: XrayGeometry) -> torch.Tensor:
        """(B, 4, 4) -> (B, rows, columns) DRRs in one view: what the X-ray is compared with."""
        self.evaluations += poses.shape[0]
        return self._draw("context" if self.context_roi is not None else "vertebra", poses, geometry)

    def support(self, pose: torch.Tensor, geometry: XrayGeometry, dilate_px: int) -> torch.Tensor:
        """(1, 4, 4) -> (rows, columns) 0/1 weight: where the vertebra alone projects, dilated by ``dilate_px``."""
        with torch.no_grad():
            return drr_support(self._draw("vertebra", pose, geometry)[0], dilate_px)


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

    def __init__(self, vertebra: VertebraDRR, views: list[View], start: np.ndarray, margin_px: list[int], device,
                 dilate_mm: float = 3.0, fixed_context: bool = False):
        self.vertebra = vertebra
        self.crops = [crop_view(view, projected_window(vertebra, start, view, m)) for view, m in zip(views, margin_px)]
        pose = torch.as_tensor(start, dtype=torch.float32, device=device)[None]
        self.weights = [vertebra.support(pose, crop.geometry, max(1, int(round(dilate_mm / crop.geometry.pixel_spacing[0]))))
                        for crop in self.crops]
        # fixed_context: the context stays at ``start`` and the vertebra alone moves over it.
        self.backgrounds = ([vertebra.background(pose, crop.geometry) for crop in self.crops]
                            if fixed_context and vertebra.context_roi is not None else None)
        self.images = [crop.image.to(device) for crop in self.crops]

    def similarity(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) -> (B,) mean similarity over the views."""
        return self.view_similarities(poses).mean(0)

    def view_similarities(self, poses: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) -> (views, B): the similarity in each view."""
        scores = []
        for index, (crop, image, weight) in enumerate(zip(self.crops, self.images, self.weights)):
            if self.backgrounds is None:
                drr = self.vertebra.render(poses, crop.geometry)
            else:
                drr = self.vertebra.render_over(poses, crop.geometry, self.backgrounds[index])
            scores.append(vertebra_similarity(drr, image, weight))
        return torch.stack(scores)
