"""Joint refinement of the vertebra poses against the X-rays, all vertebrae at once (as PolyPose does).

The per-vertebra registration explains each X-ray region with one vertebra and a context
that moves with it. Here every registered vertebra moves on its own at the same time, and
the X-ray is explained as the simulator makes it (:mod:`..render.spine_xray`): a fixed
background (the CT with the vertebrae replaced by soft tissue, carried to the operating
room by the starting poly-rigid field, rendered once per level) plus each vertebra's
attenuation above tissue at its own pose. The similarity of each vertebra is taken where it
projects (its dilated support), the objective is their mean over vertebrae and views, and
Adam moves the se(3) offsets of all vertebrae together (differentiable DRRs). A vertebra
too faint to steer (its similarity below ``min_similarity``) stays put; one whose own
similarity ends lower than it started, or that would leave a trust region around
its start (a vertebra at the CT's edge, barely in view, drifts 6-14 deg / 9-11 mm on the real CT,
where the right corrections of a +-2 deg / +-2 mm start turn up to 5 deg / 3 mm), keeps its starting pose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from ..core.labelmap import Labelmap
from ..core.metrics import rotation_error_deg, translation_error_mm
from ..core.volume import Volume, bounding_box_ijk, box_corners, mask_center_ras
from ..geometry import XrayGeometry
from ..io.images import volume_to_image
from ..render.drr import Detectors, DRRRenderer, hu_to_mu
from ..render.spine_xray import SOFT_TISSUE_HU, tissue_split
from ..rigid.problem import BEAM_BLOCK_MM, View, crop_view, delta_pose, drr_support, prepare_xray, pyramid
from ..similarity import vertebra_similarity
from ..core.displacement import DisplacementField
from ..io.displacement import warp_image


@dataclass(frozen=True)
class JointRefineConfig:
    """pixel_mm: detector pixel size of each level (coarse to fine); iterations: Adam steps per
    level; lr_deg / lr_mm: Adam step sizes of the rotation (deg) and the translation (mm);
    dilate_mm: growth of each vertebra's projected support (mm at the detector); margin_mm:
    the X-ray window around all projected vertebrae (mm at the detector); trust_deg / trust_mm:
    a vertebra that the refinement would move further than this from its start (rotation, or
    its centre) keeps its start: the refinement corrects a registration, it does not search."""

    pixel_mm: tuple[float, ...] = (2.0, 1.0)
    iterations: tuple[int, ...] = (30, 20)
    lr_deg: float = 0.3
    lr_mm: float = 0.3
    dilate_mm: float = 4.0
    margin_mm: float = 20.0
    trust_deg: float = 8.0
    trust_mm: float = 5.0
    min_similarity: float = 0.4


@dataclass
class JointRefinement:
    """poses: vertebra -> refined (4, 4) matrix_ras. before / after: vertebra -> similarity at the
    start and at the end (mean over views, finest level). kept: vertebrae left at their start."""

    poses: dict[str, np.ndarray]
    before: dict[str, float]
    after: dict[str, float]
    kept: list[str]


def refine_jointly(ct_hu: Volume, labelmap: Labelmap, poses: dict[str, np.ndarray], field: DisplacementField,
                   xrays: Sequence[np.ndarray], geometries: Sequence[XrayGeometry],
                   config: JointRefineConfig | None = None, device: str = "cpu",
                   progress: Callable[[float], None] | None = None, held: Collection[str] = ()) -> JointRefinement:
    """Refine the ``poses`` (vertebra -> matrix_ras) of the registered vertebrae jointly.

    held: vertebrae of ``poses`` that stay at their pose (rendered, so that their neighbours are
    explained beside them, but not moved).

    field: the poly-rigid field of the starting poses (world -> CT), which carries the
    background; xrays: (rows, columns) arrays, bone bright, one per geometry.
    progress: called with the fraction done (0..1).
    """
    config = config or JointRefineConfig()
    names = list(poses)
    mu = ct_hu.with_array(hu_to_mu(ct_hu.array))
    masks = {name: labelmap.volume.array == labelmap.labels[name] for name in names}
    tissue = float(hu_to_mu(np.float32(SOFT_TISSUE_HU)))
    background, excess = tissue_split(mu.array, list(masks.values()), tissue)
    image = volume_to_image(mu.with_array(background))
    carried = sitk.GetArrayFromImage(warp_image(image, field, image, default=0.0))  # at the operating room
    del background, image
    carried = mu.with_array(carried)
    excess = mu.with_array(excess)
    centres = {name: mask_center_ras(masks[name], mu) for name in names}
    images = [prepare_xray(x) for x in xrays]

    start = {name: torch.as_tensor(poses[name], dtype=torch.float32, device=device)[None] for name in names}
    total_steps = max(1, sum(config.iterations))
    done = 0
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    for level, (pixel, steps) in enumerate(zip(config.pixel_mm, config.iterations)):
        views = [_window(pyramid(img, g, [pixel])[0], excess, masks, start, config.margin_mm) for img, g in zip(images, geometries)]
        detectors = [Detectors.from_geometries([v.geometry], device=device) for v in views]
        targets = [v.image.to(device) for v in views]
        with torch.no_grad():
            identity = torch.eye(4, device=device)[None]
            backgrounds = [DRRRenderer(carried, downsample=_blocks(mu, v.geometry, np.eye(4), _mean_centre(centres, poses)))
                           .to(device)(identity, d)[0, 0] for v, d in zip(views, detectors)]
        renderers = {
            name: [DRRRenderer(excess, mask=masks[name], roi_ijk=bounding_box_ijk(masks[name], 2),
                               downsample=_blocks(mu, v.geometry, poses[name], centres[name])).to(device)
                   for v in views]
            for name in names
        }
        with torch.no_grad():
            weights = {name: [drr_support(renderers[name][i](start[name], d)[0, 0],
                                          max(1, round(config.dilate_mm / v.geometry.pixel_spacing[0])))
                              for i, (v, d) in enumerate(zip(views, detectors))] for name in names}
        # Each vertebra's similarity is taken on the box of its weight only (zero elsewhere).
        boxes = {name: [_support_box(w) for w in weights[name]] for name in names}
        rotation = torch.zeros(len(names), 3, device=device, requires_grad=True)
        translation = torch.zeros(len(names), 3, device=device, requires_grad=True)
        optimiser = torch.optim.Adam([{"params": [rotation], "lr": math.radians(config.lr_deg)},
                                      {"params": [translation], "lr": config.lr_mm}])
        centre_world = torch.stack([start[n][0, :3, :3] @ torch.as_tensor(centres[n], dtype=torch.float32, device=device)
                                    + start[n][0, :3, 3] for n in names])
        start_stack = torch.cat([start[n] for n in names])

        def similarities(matrices: torch.Tensor) -> torch.Tensor:
            """(vertebrae,) similarity of each vertebra, mean over views."""
            per_view = []
            for i, (detector, target) in enumerate(zip(detectors, targets)):
                drr = backgrounds[i] + sum(renderers[n][i](matrices[k:k + 1], detector)[0, 0] for k, n in enumerate(names))
                per_view.append(torch.stack([vertebra_similarity(drr[boxes[n][i]], target[boxes[n][i]],
                                                                 weights[n][i][boxes[n][i]]) for n in names]))
            return torch.stack(per_view).mean(0)

        with torch.no_grad():
            initial = similarities(start_stack)
        free = ((initial >= config.min_similarity)
                & torch.as_tensor([n not in held for n in names], device=initial.device)).to(rotation.dtype)[:, None]
        for _ in range(steps):
            optimiser.zero_grad()
            scores = similarities(delta_pose(rotation, translation, centre_world, start_stack))
            (-scores.mean()).backward()
            rotation.grad *= free
            translation.grad *= free
            optimiser.step()
            done += 1
            if progress is not None:
                progress(done / total_steps)
        with torch.no_grad():
            moved = delta_pose(rotation, translation, centre_world, start_stack)
            final = similarities(moved)
        better = (final >= initial) & torch.as_tensor(
            [_within(moved[k].double().cpu().numpy(), start[n][0].double().cpu().numpy(), centres[n], config)
             for k, n in enumerate(names)], device=final.device)
        start = {n: (moved[k:k + 1] if better[k] else start[n]).detach() for k, n in enumerate(names)}
        if level == len(config.pixel_mm) - 1:
            before = {n: float(initial[k]) for k, n in enumerate(names)}
            after = {n: float(max(final[k], initial[k])) for k, n in enumerate(names)}
    refined = {n: start[n][0].double().cpu().numpy() for n in names}
    kept = [n for n in names if np.allclose(refined[n], poses[n], atol=1e-6)]
    return JointRefinement(refined, before, after, kept)


def _support_box(weight: torch.Tensor) -> tuple[slice, slice]:
    """(rows, columns) slices of the box around a weight's nonzero pixels (the whole image when empty)."""
    rows, cols = torch.nonzero(weight > 0, as_tuple=True)
    if rows.numel() == 0:
        return slice(None), slice(None)
    return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)


def _within(moved: np.ndarray, start: np.ndarray, centre_ras: np.ndarray, config: JointRefineConfig) -> bool:
    """Whether ``moved`` stays within the trust region of ``start`` (rotation and centre shift)."""
    return (rotation_error_deg(moved, start) <= config.trust_deg
            and translation_error_mm(moved, start, centre_ras) <= config.trust_mm)


def _mean_centre(centres: dict[str, np.ndarray], poses: dict[str, np.ndarray]) -> np.ndarray:
    """The registered vertebrae's mean centre in world RAS mm."""
    return np.mean([poses[n][:3, :3] @ c + poses[n][:3, 3] for n, c in centres.items()], axis=0)


def _blocks(mu: Volume, geometry: XrayGeometry, pose: np.ndarray, centre_ras: np.ndarray) -> tuple[int, int, int]:
    """Voxel blocks to average for rendering ``geometry``: no finer than its pixels across the
    beam, :data:`..rigid.problem.BEAM_BLOCK_MM` along it (the registration's rule)."""
    centre_world = pose[:3, :3] @ centre_ras + pose[:3, 3]
    pixel_at_object = min(geometry.pixel_spacing) / geometry.magnification(centre_world)
    beam = np.linalg.solve(pose[:3, :3], centre_world - geometry.source)
    axis = int(np.argmax(np.abs(np.linalg.solve(mu.ijk_to_ras[:3, :3], beam))))
    block = np.full(3, pixel_at_object)
    block[axis] = max(pixel_at_object, BEAM_BLOCK_MM)
    return tuple(int(f) for f in np.maximum(1, np.round(block / mu.spacing_mm)))


def _window(view: View, volume: Volume, masks: dict[str, np.ndarray], poses: dict[str, torch.Tensor],
            margin_mm: float) -> View:
    """``view`` cropped to the projection of every vertebra's box at its pose, grown by ``margin_mm``."""
    corners = []
    for name, mask in masks.items():
        start, stop = bounding_box_ijk(mask)
        box = box_corners(start, stop)
        matrix = poses[name][0].double().cpu().numpy()
        corners.append(volume.ijk_to_ras_points(box) @ matrix[:3, :3].T + matrix[:3, 3])
    pixels = view.geometry.project(np.concatenate(corners))
    margin = int(round(margin_mm / view.geometry.pixel_spacing[0]))
    c0, r0 = np.floor(pixels.min(0)).astype(int) - margin
    c1, r1 = np.ceil(pixels.max(0)).astype(int) + margin + 1
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, view.geometry.columns), min(r1, view.geometry.rows)
    return crop_view(view, (int(c0), int(r0), int(c1 - c0), int(r1 - r0)))
