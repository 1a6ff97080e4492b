"""Learned registration of one vertebra: the network's pose, optionally refined by intensity.

:class:`PosePredictor` feeds the network (:mod:`.network`) the patches of :mod:`.patches`:
the first two X-rays (AP, LAT) resampled around the vertebra's projected centre and the
vertebra's DRR at the current pose (alone, or with its context when the model was trained so); it applies the predicted offset and, with
``passes`` > 1, looks again from there: later passes re-centre the patches and re-render the
template, and take the predicted translation only (the network, trained with its template at
the nominal pose, reads the whole rotation again rather than the residual).

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


class PosePredictor:
    """A pose network ready to predict (a :class:`.network.PoseNet` or a model file path)."""

    def __init__(self, model: PoseNet | str | os.PathLike, device: str | torch.device = "cpu", passes: int = 2) -> None:
        self.device = torch.device(device)
        self.model = (model if isinstance(model, PoseNet) else load_model(model, self.device)).to(self.device).eval()
        self.spec = self.model.config.patch
        self.passes = int(passes)

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
        for index in range(self.passes):
            with torch.no_grad():
                rotation, translation = self.model(self.patches(template, views, geometries, pose, center_ct))
            # Later passes re-centre on the vertebra and take the translation only: a network
            # trained with its template at the nominal pose reads the whole rotation again, not the
            # residual (measured: the real CT's patient model went from 2-3 deg after one pass to 11-13).
            turn = rotation[0].double().cpu().numpy() if index == 0 else np.eye(3)
            pose = pose_from_offset(turn, translation[0].double().cpu().numpy(), pose, center_ct, frame)
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
) -> VertebraResult:
    """The ``learned`` (``refine=False``) or ``auto`` (``refine=True``) registration of one vertebra.

    Same inputs (``region`` and ``boxes`` go to the intensity stages) and result as
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
                               progress=progress, region=region, boxes=boxes)
    stages = [{"stage": "network", "time_s": round(network_s, 3)}] + result.stages
    if not refine and result.verdict != "pass":
        result = replace(result, verdict_reason=f"{NETWORK_ONLY}: {result.verdict_reason}")
    if refine and result.verdict != "pass":
        if progress is not None:
            progress(f"{name}: network result in doubt, full search", 0.5)
        full = register_vertebra(name, mu, mask, xrays, geometries, init=init, config=config, device=device,
                                 progress=progress, region=region, boxes=boxes)
        stages += [{"stage": "fallback:intensity", "similarity": round(full.similarity, 4)}] + full.stages
        if full.similarity > result.similarity:
            result = replace(full, evaluations=full.evaluations + result.evaluations)
    return replace(result, stages=stages, time_s=time.perf_counter() - started)
