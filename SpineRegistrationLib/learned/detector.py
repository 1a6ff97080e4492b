"""The vertebra detector: one X-ray in, an oriented box and a level name per vertebra out.

A small CenterNet (Zhou et al. 2019, "Objects as points"): a fully convolutional encoder-decoder
on the X-ray resampled to ``mm_per_px`` at the detector (:func:`prepare_xray`), predicting at
stride 4 a centre heatmap, the sub-pixel offset of each centre, the box's width (across the
spine) and height (along it) as log pixels, its orientation as (sin 2a, cos 2a) of the spine
axis angle a (a box is the same turned by 180 degrees), and per-pixel level logits over
:data:`..core.labels.VERTEBRAE`. Plain torch layers, as the pose network (:mod:`.network`).

Levels: :mod:`.levels` names the detections consecutively along the spine, helped, when the CT
is given, by where its vertebrae project.

Model file: ``{"format": "spinereg-vertebra-detector", "version": 1, "config": DetectorConfig
dict, "state_dict", "info"}`` (read through :func:`.checkpoint.read_payload`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.labels import VERTEBRAE
from ..errors import InputError
from ..geometry import XrayGeometry
from ..geometry.image_boxes import box_iou, rectangle_corners
from ..io.xray_boxes import XrayBox, on_image
from .checkpoint import read_payload, save_atomic
from .levels import CHAIN, ViewDetections, ct_level_scores, name_levels
from .network import _Residual
from .patches import normalize_xray

DETECTOR_FORMAT = "spinereg-vertebra-detector"
DETECTOR_CHECKPOINT_FORMAT = "spinereg-vertebra-detector-checkpoint"
#: The name the shipped detector has in Resources/Models.
SHIPPED_DETECTOR = "vertebra_detector_phantoms.pt"
#: Output stride of the heads, input pixels.
STRIDE = 4
#: Channels of the head outputs: heatmap, offset (2), log size (2), orientation (2), then levels.
HEAT, OFFSET, SIZE, ORIENT, LEVEL = 0, slice(1, 3), slice(3, 5), slice(5, 7), slice(7, None)


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and input of :class:`VertebraDetector` (saved with the weights).

    mm_per_px: input pixel at the detector, mm. high_pass_px: the X-ray minus its Gaussian blur
    of this sigma (input pixels) is what the network sees (:func:`.patches.normalize_xray`).
    channels: encoder widths, each stage halving the resolution (the first at stride 2).
    decoder: width of the stride-4 features the heads read.
    """

    mm_per_px: float = 2.0
    high_pass_px: float = 8.0
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    decoder: int = 32

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, values: dict) -> "DetectorConfig":
        values = dict(values)
        values["channels"] = tuple(int(c) for c in values.get("channels", cls.channels))
        return cls(**values)

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this (one halving per stage)."""
        return 2 ** len(self.channels)


class VertebraDetector(nn.Module):
    """(B, 1, H, W) prepared X-rays (H, W multiples of ``config.multiple``) -> (B, 7 + levels, H/4, W/4):
    heatmap logit, centre offset (px at stride 4), log width and height (stride-4 px), sin 2a, cos 2a,
    level logits (:data:`VERTEBRAE`)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config = DetectorConfig() if config is None else config
        stages, c_in = [], 1
        for c_out in config.channels:
            stages.append(_Residual(c_in, c_out))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        # Top-down path (feature pyramid): each stage from stride 4 down adds its lateral projection.
        self.lateral = nn.ModuleList(nn.Conv2d(c, config.decoder, 1) for c in config.channels[1:])
        self.smooth = nn.Sequential(nn.Conv2d(config.decoder, config.decoder, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(config.decoder), nn.ReLU(inplace=True))
        outputs = 7 + len(VERTEBRAE)
        self.head = nn.Sequential(nn.Conv2d(config.decoder, config.decoder, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(config.decoder, outputs, 1))
        with torch.no_grad():  # CenterNet's prior: few centres
            self.head[-1].bias.zero_()
            self.head[-1].bias[HEAT] = -2.19

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, x = [], images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.lateral[-1](features[-1])
        for n in range(len(self.lateral) - 2, -1, -1):
            top = F.interpolate(top, size=features[n + 1].shape[-2:], mode="nearest") + self.lateral[n](features[n + 1])
        return self.head(self.smooth(top))


# --------------------------------------------------------------------------- input
@dataclass
class PreparedXray:
    """An X-ray as the network takes it. image: (1, 1, H, W) float32; scale: (2,) original pixels per
    input pixel (columns, rows); the original pixel (c, r) is input pixel ((c + 0.5) / s - 0.5)."""

    image: torch.Tensor
    scale: np.ndarray

    def to_original(self, points_px: np.ndarray) -> np.ndarray:
        """(..., 2) input pixels (column, row) -> the original X-ray's pixels."""
        return (np.asarray(points_px) + 0.5) * self.scale - 0.5


def network_input(images: torch.Tensor, config: DetectorConfig) -> torch.Tensor:
    """(..., H, W) bone-bright X-rays at the input resolution -> what the network sees (high-pass, standardised)."""
    return normalize_xray(images, config.high_pass_px)


def prepare_xray(array: np.ndarray, geometry: XrayGeometry, config: DetectorConfig) -> PreparedXray:
    """A (rows, columns) bone-bright X-ray -> ``mm_per_px`` at the detector (area-averaged when shrinking),
    padded at the bottom and right to a multiple of ``config.multiple`` by edge values."""
    rows, columns = array.shape
    du, dv = geometry.pixel_spacing
    size = (max(1, round(rows * dv / config.mm_per_px)), max(1, round(columns * du / config.mm_per_px)))
    image = torch.as_tensor(np.asarray(array, np.float32))[None, None]
    image = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    pad_rows, pad_columns = (-size[0]) % config.multiple, (-size[1]) % config.multiple
    image = F.pad(image, (0, pad_columns, 0, pad_rows), mode="replicate")
    return PreparedXray(network_input(image, config), np.array([columns / size[1], rows / size[0]]))


# --------------------------------------------------------------------------- decoding
@dataclass
class Detection:
    """A decoded box on the input grid: centre (2,), width, height px; axis (2,) unit along the spine;
    score in [0, 1]; level_log_probs (len(VERTEBRAE),)."""

    center: np.ndarray
    width: float
    height: float
    axis: np.ndarray
    score: float
    level_log_probs: np.ndarray

    def corners(self) -> np.ndarray:
        return rectangle_corners(self.center, self.width, self.height, self.axis)


def detection_arrays(detections: Sequence[Detection]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 2) and level log-probabilities (N, len(VERTEBRAE)) of detections, for :mod:`.levels`."""
    return (np.array([d.center for d in detections]).reshape(-1, 2),
            np.array([d.level_log_probs for d in detections]).reshape(-1, len(VERTEBRAE)))


def decode(output: torch.Tensor, threshold: float = 0.3, max_boxes: int = len(CHAIN), iou_nms: float = 0.7
           ) -> list[Detection]:
    """(7 + levels, h, w) network output of one image -> at most ``max_boxes`` detections (input pixels),
    best first: the peaks (3x3 local maxima) above ``threshold`` of the heatmap times each level's
    probability (one heatmap per level, as CenterNet's per-class heatmaps; the score), then
    oriented-box NMS at ``iou_nms`` (high: neighbouring vertebrae's boxes overlap by up to IoU 0.6,
    so it removes duplicates only).

    Why per level: the heatmap alone is a ridge along the spine whose peaks fall between vertebrae
    as often as on them, while the level head tells neighbours apart. On the DiffDRR X-rays of the
    real CT (Testing/benchmarks/bench_detect.py, whole vertebrae) the recall at IoU 0.5 of a
    patient-specific model went from 0.83 (the heatmap's own peaks) to 0.97, its mAP 0.83 to 0.98."""
    heat = torch.sigmoid(output[HEAT])
    levels = torch.log_softmax(output[LEVEL], dim=0)
    named_heat = heat[None] * levels.exp()  # (levels, h, w)
    peaks = (named_heat == F.max_pool2d(named_heat[None], 3, 1, 1)[0]) & (named_heat >= threshold)
    _, rows, columns = torch.nonzero(peaks, as_tuple=True)
    scores = named_heat[peaks]
    order = torch.argsort(scores, descending=True)[: 4 * max_boxes]
    found: list[Detection] = []
    for n in order.tolist():
        r, c = int(rows[n]), int(columns[n])
        offset = output[OFFSET, r, c].detach().numpy()
        width, height = np.exp(output[SIZE, r, c].detach().numpy().clip(-5, 8)) * STRIDE
        sin2, cos2 = output[ORIENT, r, c].detach().numpy()
        angle = 0.5 * math.atan2(sin2, cos2)
        detection = Detection(center=(np.array([c, r]) + offset + 0.5) * STRIDE - 0.5, width=float(width),
                              height=float(height), axis=np.array([math.cos(angle), math.sin(angle)]),
                              score=float(scores[n]), level_log_probs=levels[:, r, c].detach().numpy())
        if all(box_iou(detection.corners(), kept.corners()) < iou_nms for kept in found):
            found.append(detection)
        if len(found) == max_boxes:
            break
    return found


def _cranial_first(corners: np.ndarray, center: np.ndarray, cranial: np.ndarray | None) -> np.ndarray:
    """Corners reordered so that 1 -> 2 points toward ``cranial`` (a point cranial of the box), if given."""
    if cranial is not None and np.dot(corners[2] - corners[1], cranial - center) < 0:
        return corners[[2, 3, 0, 1]]
    return corners


# --------------------------------------------------------------------------- inference
class DetectorPredictor:
    """A detector model file, loaded once, to box the vertebrae of many X-rays."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        self.model = load_detector(path, device)
        self.device = torch.device(device)

    def detect(self, array: np.ndarray, geometry: XrayGeometry, threshold: float = 0.3,
               centers_ras: Mapping[str, np.ndarray] | None = None) -> list[XrayBox]:
        """(rows, columns) bone-bright X-ray and its geometry -> one named box per detected vertebra
        (original pixels, source ``detector``, score: its peak of heatmap x level probability),
        cranial -> caudal. centers_ras: the CT's vertebra centroids at its initial pose, world RAS mm,
        to help name the levels."""
        return self.detect_views([array], [geometry], threshold, centers_ras)[0]

    def detect_views(self, arrays: Sequence[np.ndarray], geometries: Sequence[XrayGeometry], threshold: float = 0.3,
                     centers_ras: Mapping[str, np.ndarray] | None = None) -> list[list[XrayBox]]:
        """:meth:`detect` of several views of one patient; with ``centers_ras`` their levels are named
        together (:func:`.levels.ct_level_scores`: one shift of the CT explains every view)."""
        found = []
        for array, geometry in zip(arrays, geometries):
            prepared = prepare_xray(array, geometry, self.model.config)
            with torch.no_grad():
                output = self.model(prepared.image.to(self.device))[0].cpu()
            # A centre beyond the X-ray is the network reading its input's padding: the box files
            # (io.xray_boxes) refuse such boxes, so the detector never writes one.
            detections = [d for d in decode(output, threshold)
                          if on_image(prepared.to_original(d.center), np.asarray(array).shape[1::-1])]
            centers, log_probs = detection_arrays(detections)
            found.append((prepared, detections, ViewDetections(prepared.to_original(centers), log_probs, geometry)))
        views = [view for _, _, view in found]
        positions = ct_level_scores(views, centers_ras) if centers_ras else [None] * len(views)
        return [_named_boxes(prepared, detections, name_levels(view.centers_px, view.level_log_probs, position))
                for (prepared, detections, view), position in zip(found, positions)]


def _named_boxes(prepared: PreparedXray, detections: list[Detection], names: list[str | None]) -> list[XrayBox]:
    """Named detections -> boxes on the original X-ray, cranial -> caudal, corners 1 -> 2 toward the
    next cranial detection; unnamed ones are left out."""
    named = [(name, detection) for name, detection in zip(names, detections) if name is not None]
    names, detections = [name for name, _ in named], [detection for _, detection in named]
    by_name = dict(zip(names, detections))
    boxes = []
    for name, detection in sorted(zip(names, detections), key=lambda pair: CHAIN.index(pair[0])):
        index = CHAIN.index(name)
        neighbour = by_name.get(CHAIN[index - 1]) if index > 0 else None
        corners = _cranial_first(detection.corners(), detection.center,
                                 None if neighbour is None else neighbour.center)
        boxes.append(XrayBox(name, prepared.to_original(corners), round(detection.score, 4), False, "detector"))
    return boxes


# --------------------------------------------------------------------------- model files
def detector_payload(model: VertebraDetector, info: dict | None = None) -> dict:
    """What a detector model file holds (weights on the CPU)."""
    return {"format": DETECTOR_FORMAT, "version": 1, "config": model.config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": dict(info or {})}


def save_detector(model: VertebraDetector, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write a detector model file, atomically."""
    return save_atomic(detector_payload(model, info), path)


def detector_from_payload(payload: dict, path: str | os.PathLike) -> VertebraDetector:
    """The network a payload describes, with its weights; InputError when they disagree."""
    try:
        model = VertebraDetector(DetectorConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        first = " ".join(str(error).split())[:200]
        raise InputError(f"{path}: not a usable vertebra detector ({type(error).__name__}: {first})") from None
    return model


def shipped_detector() -> Path | None:
    """Resources/Models/vertebra_detector_phantoms.pt (or its installed copy), or None."""
    from .models import shipped_file

    return shipped_file(SHIPPED_DETECTOR)


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> VertebraDetector:
    """A detector model file (or training checkpoint) -> VertebraDetector in eval mode on ``device``."""
    payload = read_payload(path, (DETECTOR_FORMAT, DETECTOR_CHECKPOINT_FORMAT))
    return detector_from_payload(payload, path).to(device).eval()
