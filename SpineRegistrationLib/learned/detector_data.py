"""Training X-rays for the vertebra detector, with their boxes free from the projection.

A training view is a CT (a phantom, or the patient's own CT) moved rigidly by a random pose
offset and seen by a random C-arm (:func:`..synthetic.acquisition.draw_geometries`: AP and LAT
at jittered angles and distances, either side, detector flips, principal point offsets)
whose detector pixels are ``mm_per_px`` (jittered: scale augmentation), rendered by the
project's one simulator (:class:`..render.spine_xray.PosedSpine`, spectral attenuation); its
truth is every vertebra's projected box (:class:`..render.projected_boxes.VertebraOutlines`);
the box of a vertebra the CT's edge cuts (a sliver's box) is neither a target nor background: the
heatmap loss leaves the cells inside it out.

Rendering is the slow part, so a run renders its views once (:func:`render_bank`, optical
depths, saved in the training folder) and every batch then makes radiographs of them with
fresh realism (:func:`..render.xray_sim.simulate_xray`: noise, scatter, heel, blur, gamma,
collimation) drawn from ``(seed, step)``; so a resumed run sees the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.labels import VERTEBRAE
from ..core.pose import params_to_matrix
from ..core.volume import Volume
from ..errors import InputError
from ..geometry.image_boxes import inside_convex
from ..io.labelmaps import Labelmap, centroids_ras
from ..render.projected_boxes import VertebraOutlines
from ..render.spine_xray import PosedSpine, ours_render_factory
from ..render.xray_sim import simulate_xray
from ..synthetic.acquisition import AcquisitionConfig, draw_geometries, draw_pose_offset, draw_sim
from .detector import HEAT, LEVEL, OFFSET, ORIENT, SIZE, STRIDE, DetectorConfig, network_input

#: Spread of the scatter veil at the detector, mm (the simulator's 20 pixels of its 1 mm default).
SCATTER_MM = 20.0


def detector_acquisition(mm_per_px: float = 2.0, size_px: int = 256) -> AcquisitionConfig:
    """The training views' distribution: +-10 deg / +-20 mm of the whole CT, C-arm angles +-15 deg
    about AP and LAT, either side, flipped detectors, principal point +-20 mm, detector pixels of
    ``mm_per_px`` +-15 %, and wide X-ray realism ranges."""
    return AcquisitionConfig(
        rot_deg=10.0, trans_mm=20.0, per_vertebra_deg=0.0, per_vertebra_mm=0.0, sdd_jitter_mm=60.0,
        sid_jitter_mm=40.0, ap_angle_jitter_deg=15.0, lat_angle_jitter_deg=15.0, pixel_spacing_jitter=0.15,
        either_side=True, flip_detector=True, principal_offset_mm=20.0, photons=(3.0e3, 3.0e5), gamma=(0.5, 1.6),
        scatter_fraction=(0.0, 0.5), heel=(0.0, 0.25), blur_sigma_px=(0.3, 1.5), collimation=(0.0, 0.1),
        detector_size=(size_px, size_px), pixel_spacing_mm=mm_per_px)


@dataclass
class DetectorSynthesis:
    """The training views. acquisition: see :func:`detector_acquisition`; isocenter_jitter_mm: the
    C-arm isocentre is a random vertebra's centroid moved this far (uniform per axis); draws_per_ct:
    pose and C-arm draws per CT (two views each) rendered into the bank."""

    acquisition: AcquisitionConfig = field(default_factory=detector_acquisition)
    isocenter_jitter_mm: float = 40.0
    draws_per_ct: int = 200


class DetectorCT:
    """A CT (HU) and its vertebra labelmap, ready to render training views (renderers built once).

    downsample: voxel blocks averaged by the renderer (default: to about the detector pixel at the isocentre).
    """

    def __init__(self, ct_hu: Volume, labelmap: Labelmap, name: str = "ct", mm_per_px: float = 2.0,
                 downsample: int | None = None) -> None:
        if not labelmap.labels:
            raise InputError(f"{name}: the segmentation has no vertebra label the label scheme knows")
        factor = downsample or max(1, int(round(0.6 * mm_per_px / float(ct_hu.spacing_mm.min()))))
        self.name = name
        self.spine = PosedSpine(ct_hu, labelmap, [], render_factory=ours_render_factory(downsample=factor))
        self.outlines = VertebraOutlines(labelmap)
        self.centroids = centroids_ras(labelmap)

    def draw(self, synthesis: DetectorSynthesis, rng: np.random.Generator) -> list[tuple]:
        """One pose and C-arm draw: per view (AP, LAT) its XrayGeometry, (rows, columns) float32 optical
        depth and boxes."""
        names = list(self.centroids)
        center = np.asarray(self.centroids[names[int(rng.integers(len(names)))]], dtype=np.float64)
        pose = params_to_matrix(draw_pose_offset(rng, synthesis.acquisition.rot_deg, synthesis.acquisition.trans_mm),
                                center)
        isocenter = center + rng.uniform(-synthesis.isocenter_jitter_mm, synthesis.isocenter_jitter_mm, 3)
        geometries, _ = draw_geometries(rng, synthesis.acquisition, isocenter)
        return [(g, self.spine.background_depth(pose, g), self.outlines.boxes(g, pose)) for g in geometries]


@dataclass
class Bank:
    """Rendered training views. depths: (N, rows, columns) float16 optical depths; box_view (M,) int:
    the view of each box; box_level (M,) int: index in VERTEBRAE; box_corners (M, 4, 2) float32 px;
    box_cut (M,) bool: the box of a vertebra the CT cuts (:attr:`VertebraOutlines.cut`)."""

    depths: np.ndarray
    box_view: np.ndarray
    box_level: np.ndarray
    box_corners: np.ndarray
    box_cut: np.ndarray

    def save(self, path: Path) -> None:
        from ..io.atomic import staged_output_file

        with staged_output_file(path) as staging:
            with open(staging, "wb") as file:
                np.savez(file, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "Bank":
        with np.load(path) as data:
            arrays = {key: data[key] for key in ("depths", "box_view", "box_level", "box_corners")}
            # banks saved before 2026-12-07 marked no box cut
            arrays["box_cut"] = data["box_cut"] if "box_cut" in data else np.zeros(len(arrays["box_view"]), bool)
        return cls(**arrays)

    def boxes_of(self, view: int) -> tuple[np.ndarray, np.ndarray]:
        """(corners (m, 4, 2), levels (m,)) of one view's whole vertebrae."""
        chosen = (self.box_view == view) & ~self.box_cut
        return self.box_corners[chosen], self.box_level[chosen]

    def cut_boxes_of(self, view: int) -> np.ndarray:
        """(k, 4, 2) corners of one view's cut vertebrae."""
        return self.box_corners[(self.box_view == view) & self.box_cut]


def render_bank(sources: Sequence[DetectorCT], synthesis: DetectorSynthesis, seed: int, progress: bool = True) -> Bank:
    """``draws_per_ct`` draws of every source (draw d of source s from ``(seed, s, d)``), rendered."""
    from tqdm.auto import tqdm

    depths, view_of, levels, corners, cut = [], [], [], [], []
    bar = tqdm(total=len(sources) * synthesis.draws_per_ct, desc="render views", unit="draw", disable=not progress)
    for s, source in enumerate(sources):
        for d in range(synthesis.draws_per_ct):
            for _, depth, boxes in source.draw(synthesis, np.random.default_rng([seed, s, d])):
                for box in boxes:
                    view_of.append(len(depths))
                    levels.append(VERTEBRAE.index(box.vertebra))
                    corners.append(box.corners_px)
                    cut.append(box.vertebra in source.outlines.cut)
                depths.append(np.asarray(depth, np.float16))
            bar.update(1)
    bar.close()
    return Bank(np.stack(depths), np.asarray(view_of, np.int64), np.asarray(levels, np.int64),
                np.asarray(corners, np.float32).reshape(-1, 4, 2), np.asarray(cut, bool))


def box_targets(corners: np.ndarray, levels: np.ndarray, shape: tuple[int, int],
                ignored: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Targets on the (h, w) output grid of one view's boxes (input px): ``heat`` (h, w) Gaussian peaks,
    ``regression`` (6, h, w) offset, log size, sin/cos 2a at each centre cell, ``centers`` (h, w) bool
    where it counts, ``level`` (h, w) long (VERTEBRAE index in the 3x3 cells about each centre, -1 elsewhere),
    ``background`` (h, w) float: 0 in the cells inside an ``ignored`` box ((k, 4, 2) px) and no peak, else 1."""
    h, w = shape
    heat = np.zeros(shape, np.float32)
    regression = np.zeros((6, h, w), np.float32)
    centers = np.zeros(shape, bool)
    level = np.full(shape, -1, np.int64)
    rows, columns = np.mgrid[0:h, 0:w]
    cells_px = np.stack([columns, rows], axis=-1) * STRIDE + (STRIDE - 1) / 2  # each cell's centre, input px
    background = np.ones(shape, np.float32)
    for box in [] if ignored is None else ignored:
        background[inside_convex(box, cells_px)] = 0.0
    for box, lev in zip(corners, levels):
        center = box.mean(0)
        width, height = np.linalg.norm(box[1] - box[0]), np.linalg.norm(box[2] - box[1])
        if min(width, height) < 1.0:
            continue
        axis = (box[2] - box[1]) / height
        cell_xy = (center + 0.5) / STRIDE - 0.5
        c, r = int(round(cell_xy[0])), int(round(cell_xy[1]))
        if not (0 <= c < w and 0 <= r < h):
            continue
        sigma = max(0.8, min(width, height) / STRIDE / 6.0)
        heat = np.maximum(heat, np.exp(-((columns - cell_xy[0]) ** 2 + (rows - cell_xy[1]) ** 2) / (2 * sigma**2)))
        heat[r, c] = 1.0
        angle = np.arctan2(axis[1], axis[0])
        regression[:, r, c] = [cell_xy[0] - c, cell_xy[1] - r, np.log(width / STRIDE), np.log(height / STRIDE),
                               np.sin(2 * angle), np.cos(2 * angle)]
        centers[r, c] = True
        level[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = lev
    background[heat >= 1.0] = 1.0
    return {"heat": torch.from_numpy(heat), "regression": torch.from_numpy(regression),
            "centers": torch.from_numpy(centers), "level": torch.from_numpy(level),
            "background": torch.from_numpy(background)}


def make_batch(bank: Bank, views: Sequence[int], synthesis: DetectorSynthesis, config: DetectorConfig,
               rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Network inputs (B, 1, H, W) and targets of bank ``views``, each a radiograph of fresh realism."""
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    images, targets = [], []
    for view in views:
        depth = torch.from_numpy(bank.depths[view].astype(np.float32))
        sim = dataclasses.replace(draw_sim(rng, synthesis.acquisition), scatter_sigma_px=SCATTER_MM / config.mm_per_px)
        images.append(simulate_xray(depth, sim, generator))
        corners, levels = bank.boxes_of(view)
        targets.append(box_targets(corners, levels, (depth.shape[0] // STRIDE, depth.shape[1] // STRIDE),
                                   bank.cut_boxes_of(view)))
    batch = {key: torch.stack([t[key] for t in targets]) for key in targets[0]}
    batch["images"] = network_input(torch.stack(images)[:, None], config)
    return batch


def detection_loss(output: torch.Tensor, batch: dict[str, torch.Tensor], level_weight: float = 0.5
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's focal loss on the heatmap (alpha 2, beta 4; background cells weighted by the target
    ``background``) + L1 on offset, log size and orientation at the centres + ``level_weight`` x
    cross-entropy of the levels about the centres; (total, terms)."""
    heat = torch.sigmoid(output[:, HEAT]).clamp(1e-4, 1 - 1e-4)
    truth = batch["heat"]
    positive = truth.eq(1.0).float()
    count = positive.sum().clamp(min=1.0)
    negative = batch["background"] * (1 - positive) * (1 - truth) ** 4
    focal = -(positive * (1 - heat) ** 2 * torch.log(heat) + negative * heat**2 * torch.log(1 - heat)).sum() / count
    centers = batch["centers"][:, None].float()
    regression = torch.cat([output[:, OFFSET], output[:, SIZE], output[:, ORIENT]], dim=1)
    error = (regression - batch["regression"]).abs() * centers
    offset, size, orient = (error[:, k].sum() / count for k in (slice(0, 2), slice(2, 4), slice(4, 6)))
    level = torch.nn.functional.cross_entropy(output[:, LEVEL], batch["level"], ignore_index=-1)
    level = torch.nan_to_num(level)  # no box in the batch
    total = focal + offset + size + orient + level_weight * level
    return total, {"heat": float(focal.detach()), "offset": float(offset.detach()), "size": float(size.detach()),
                   "orient": float(orient.detach()), "level": float(level.detach())}
