"""Learned registration of one vertebra: the network's pose, optionally refined by intensity.

:class:`PosePredictor` feeds the network (:mod:`.network`) the patches of :mod:`.patches`:
the first two X-rays (AP, LAT) resampled around the vertebra's projected centre and the
vertebra's DRR at the current pose (alone, or with its context when the model was trained so);
it applies the predicted offset, by default as the consensus of 9 looks from about the start
(:class:`PosePredictor`).

:func:`register_vertebra_learned` is the ``learned`` and ``auto`` methods of
``spinereg register``: the network's pose alone (scored, not moved), or its rotation handed to
the intensity registration in place of the CMA-ES rotation search. ``auto`` keeps the initial
translation and lets the translation grid around it, its candidates and their tournament
find the position: a single prediction cannot rule out the neighbouring level (beyond half
a vertebra's height the patches look alike), and measured on the evaluation's +-20 mm cases,
a grid centred on the network's own translation lost 6 of 20 vertebrae to a neighbour.
When the refined result is in doubt, the full intensity registration
(:func:`..registration.register_vertebra`) runs from the initial pose and the better-scoring
result is kept.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..render.drr import Detectors, DRRRenderer
from ..geometry import XrayGeometry
from ..geometry.triangulation import DetectorBox
from ..core.box import OrientedBox
from ..rigid.verdict import NETWORK_ONLY
from ..rigid import Progress, RigidConfig, register_vertebra
from ..io.results import VertebraResult
from ..core.volume import Volume, mask_center_ras
from .checkpoint import load_model
from .network import PoseNet
from .patches import (normalize_xray, patch_geometry, pose_from_offset, resample_to_patch, template_channel,
                      template_renderer, view_frame)

#: :class:`PosePredictor`'s default cube of looks, mm (Testing/benchmarks/bench_pose_looks.py).
LOOK_MM = 6.0


class PosePredictor:
    """A pose network ready to predict (a :class:`.network.PoseNet` or a model file path).

    ``look_mm`` > 0: the first pass looks from the start and from the 8 corners of a cube of
    +-``look_mm`` about it (one batch) and takes the median of the 9 answers' vertebra centres
    and the mean of their rotations: each look crops the X-rays elsewhere, and the answers'
    errors partly cancel. ``passes`` > 1: later passes re-centre on the answer and take the
    predicted translation only (the network, trained with its template at the nominal pose,
    reads the whole rotation again rather than the residual).
    """

    def __init__(self, model: PoseNet | str | os.PathLike, device: str | torch.device = "cpu", passes: int = 1,
                 look_mm: float = LOOK_MM) -> None:
        self.device = torch.device(device)
        self.model = (model if isinstance(model, PoseNet) else load_model(model, self.device)).to(self.device).eval()
        self.spec = self.model.config.patch
        self.passes, self.look_mm = int(passes), float(look_mm)

    def patches(self, template: DRRRenderer, xrays: Sequence[torch.Tensor], geometries: Sequence[XrayGeometry],
                pose: np.ndarray, center_ct: np.ndarray) -> torch.Tensor:
        """(1, 2, 2, n, n) network input for the vertebra at ``pose`` (CT RAS -> world)."""
        center = pose[:3, :3] @ center_ct + pose[:3, 3]
        patches = [patch_geometry(g, center, self.spec) for g in geometries]
        images = torch.stack([resample_to_patch(x, g, p) for x, g, p in zip(xrays, geometries, patches)])
        matrix = torch.as_tensor(pose, dtype=torch.float32, device=self.device)[None]
        with torch.no_grad():
            drr = template(matrix, Detectors.from_geometries(patches, device=self.device))[0]
        return torch.stack([normalize_xray(images.to(self.device)), template_channel(drr, self.spec)], dim=1)[None]

    def _answers(self, template, views, geometries, starts: list[np.ndarray], center_ct, frame) -> list[np.ndarray]:
        """The network's pose from each of ``starts`` (one batch)."""
        batch = torch.cat([self.patches(template, views, geometries, start, center_ct) for start in starts])
        with torch.no_grad():
            rotations, translations = self.model(batch)
        return [pose_from_offset(r.double().cpu().numpy(), t.double().cpu().numpy(), start, center_ct, frame)
                for r, t, start in zip(rotations, translations, starts)]

    def predict(self, mu: Volume, mask: np.ndarray, xrays: Sequence[np.ndarray], geometries: Sequence[XrayGeometry],
                init: np.ndarray | None = None) -> np.ndarray:
        """The vertebra's (4, 4) pose (CT RAS -> world) from an AP and a LAT view, starting at ``init``.

        mu: CT attenuation (1/mm); mask: (K, J, I) bool, the vertebra; xrays: (rows, columns)
        arrays, bone bright, one per geometry, in any order (:func:`ap_lat_pair` picks two).
        """
        center_ct = mask_center_ras(mask, mu)
        template = template_renderer(mu, mask, self.spec).to(self.device)
        pair = ap_lat_pair(geometries)
        views = [torch.as_tensor(np.asarray(xrays[i], np.float32)) for i in pair]
        geometries = [geometries[i] for i in pair]
        frame = view_frame(geometries[0])
        pose = np.eye(4) if init is None else np.asarray(init, np.float64)
        shifts = [np.zeros(3)] + ([self.look_mm * np.array(c, float) for c in itertools.product((-1, 1), repeat=3)]
                                  if self.look_mm > 0 else [])
        starts = [pose.copy() for _ in shifts]
        for start, shift in zip(starts, shifts):
            start[:3, 3] += shift
        pose = consensus(self._answers(template, views, geometries, starts, center_ct, frame), center_ct)
        for _ in range(1, self.passes):
            # Re-centred on the answer, the translation only (see the class docstring; measured: the
            # real CT's patient model went from 2-3 deg after one pass to 11-13 when it turned again).
            moved = self._answers(template, views, geometries, [pose], center_ct, frame)[0]
            pose = _moved_to(pose, moved, center_ct)
        return pose


def consensus(poses: Sequence[np.ndarray], center_ct: np.ndarray) -> np.ndarray:
    """One pose (CT RAS -> world) from several answers: the median of where they put the vertebra's
    centre (``center_ct``, CT RAS mm), which an answer on a neighbour cannot drag, and the chordal
    mean of their rotations (the mean matrix projected onto the rotations)."""
    centres = np.median([p[:3, :3] @ center_ct + p[:3, 3] for p in poses], axis=0)
    u, _, vt = np.linalg.svd(np.mean([p[:3, :3] for p in poses], axis=0))
    rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation, centres - rotation @ center_ct
    return pose


def _moved_to(pose: np.ndarray, init: np.ndarray | None, center: np.ndarray) -> np.ndarray:
    """``pose`` translated so that the vertebra's centre (CT RAS mm) is where ``init`` puts it (rotation kept)."""
    init = np.eye(4) if init is None else np.asarray(init, np.float64)
    shift = np.eye(4)
    shift[:3, 3] = (init[:3, :3] @ center + init[:3, 3]) - (pose[:3, :3] @ center + pose[:3, 3])
    return shift @ pose


def ap_lat_pair(geometries: Sequence[XrayGeometry]) -> tuple[int, int]:
    """Indices of the views the network takes as AP and LAT: the beam most along the
    anterior-posterior axis (RAS y), then, of the others, the one most along left-right (x)."""
    ap = max(range(len(geometries)), key=lambda i: abs(geometries[i].detector_normal[1]))
    lat = max((i for i in range(len(geometries)) if i != ap), key=lambda i: abs(geometries[i].detector_normal[0]))
    return ap, lat


def register_vertebra_learned(
    name: str,
    mu: Volume,
    mask: np.ndarray,
    xrays: Sequence[np.ndarray],
    geometries: Sequence[XrayGeometry],
    predictor: PosePredictor,
    init: np.ndarray | None = None,
    config: RigidConfig | None = None,
    refine: bool = True,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    region: OrientedBox | None = None,
    boxes: Sequence[DetectorBox] = (),
    neighbour_offsets: Sequence[np.ndarray] = (),
) -> VertebraResult:
    """The ``learned`` (``refine=False``) or ``auto`` (``refine=True``) registration of one vertebra.

    Same inputs (``region``, ``boxes`` and ``neighbour_offsets`` go to the intensity stages) and result as
    :func:`..registration.register_vertebra`; its ``stages`` start with the network's, and say
    when the full intensity search had to take over.
    """
    started = time.perf_counter()
    config = RigidConfig() if config is None else config
    if progress is not None:
        progress(f"{name}: network", 0.0)
    start = predictor.predict(mu, mask, xrays, geometries, init)
    network_s = time.perf_counter() - started
    if refine:
        local = replace(config, global_search="grid")
        start = _moved_to(start, init, mask_center_ras(mask, mu))
    else:  # score the network's pose at every level without moving it
        local = replace(config, global_search="none", iterations=(0,) * len(config.iterations))
    result = register_vertebra(name, mu, mask, xrays, geometries, init=start, config=local, device=device,
                               progress=progress, region=region, boxes=boxes, neighbour_offsets=neighbour_offsets)
    stages = [{"stage": "network", "time_s": round(network_s, 3)}] + result.stages
    if not refine and result.verdict != "pass":
        result = replace(result, verdict_reason=f"{NETWORK_ONLY}: {result.verdict_reason}")
    if refine and result.verdict != "pass":
        if progress is not None:
            progress(f"{name}: network result in doubt, full search", 0.5)
        full = register_vertebra(name, mu, mask, xrays, geometries, init=init, config=config, device=device,
                                 progress=progress, region=region, boxes=boxes, neighbour_offsets=neighbour_offsets)
        stages += [{"stage": "fallback:intensity", "similarity": round(full.similarity, 4)}] + full.stages
        if full.similarity > result.similarity:
            result = replace(full, evaluations=full.evaluations + result.evaluations)
    return replace(result, stages=stages, time_s=time.perf_counter() - started)
