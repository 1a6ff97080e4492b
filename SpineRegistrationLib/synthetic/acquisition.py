"""How a simulated intraoperative acquisition is drawn: the pose offsets of the spine, the jittered
AP/LAT C-arm views and the X-ray realism knobs. Shared by the evaluation's cases and the
training samples, so that both draw from one described distribution.

Angles in degrees, lengths in mm, ranges (low, high).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..geometry import DEFAULT_SDD_MM, DEFAULT_SID_MM, c_arm_frame, geometry_from_center
from ..render.xray_sim import XraySimConfig

#: Views of every acquisition: name -> nominal C-arm primary angle (degrees).
VIEWS = {"AP": 0.0, "LAT": 90.0}


@dataclass
class AcquisitionConfig:
    """The distribution of a simulated acquisition.

    rot_deg / trans_mm: half-range of the uniform pose offset of the whole spine, per axis,
        about the target's centroid (how far the start is from the answer).
    per_vertebra_deg / per_vertebra_mm: half-range of each vertebra's own extra motion.
    sdd_jitter_mm / sid_jitter_mm: uniform jitter of the source-detector and
        source-isocentre distances around the C-arm defaults (1020 / 620 mm).
    ap_angle_jitter_deg / lat_angle_jitter_deg: jitter of the primary angle around 0 / 90.
    pixel_spacing_jitter: relative jitter of the detector pixel spacing.
    either_side: draw each view from either side at random (AP or PA; the lateral from the
        patient's right or left): the primary angle turns by 180 degrees half the time.
    flip_detector: flip the detector's columns and its rows, each half the time (a
        mirrored or upside-down image, as unconfigured C-arms deliver).
    principal_offset_mm: half-range of the principal point's offset from the detector
        centre, per detector axis, mm at the detector.
    photons, gamma, scatter_fraction, heel, blur_sigma_px, collimation: uniform ranges of
        the :class:`..render.xray_sim.XraySimConfig` knobs, drawn per view.
    detector_size: (columns, rows); pixel_spacing_mm: nominal, at the detector (the
        defaults are those of the sample data's AP/LAT X-rays).
    """

    rot_deg: float = 10.0
    trans_mm: float = 20.0
    per_vertebra_deg: float = 2.0
    per_vertebra_mm: float = 2.0
    sdd_jitter_mm: float = 20.0
    sid_jitter_mm: float = 20.0
    ap_angle_jitter_deg: float = 3.0
    lat_angle_jitter_deg: float = 5.0
    pixel_spacing_jitter: float = 0.05
    either_side: bool = False
    flip_detector: bool = False
    principal_offset_mm: float = 0.0
    photons: tuple[float, float] = (1.0e4, 5.0e4)
    gamma: tuple[float, float] = (0.6, 1.2)
    scatter_fraction: tuple[float, float] = (0.1, 0.4)
    heel: tuple[float, float] = (0.0, 0.2)
    blur_sigma_px: tuple[float, float] = (0.5, 1.2)
    collimation: tuple[float, float] = (0.0, 0.08)
    detector_size: tuple[int, int] = (512, 512)
    pixel_spacing_mm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("rot_deg", "trans_mm", "per_vertebra_deg", "per_vertebra_mm", "sdd_jitter_mm",
                     "sid_jitter_mm", "ap_angle_jitter_deg", "lat_angle_jitter_deg", "pixel_spacing_jitter",
                     "principal_offset_mm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.rot_deg > 90:
            raise InputError(f"rot_deg must be <= 90 degrees, got {self.rot_deg}")
        if self.pixel_spacing_jitter >= 1:
            raise InputError(f"pixel_spacing_jitter is relative and must be < 1, got {self.pixel_spacing_jitter}")
        for name in ("photons", "gamma", "scatter_fraction", "heel", "blur_sigma_px", "collimation"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise InputError(f"{name} must be a range (low, high) with 0 <= low <= high, got {getattr(self, name)!r}")
        if self.photons[0] <= 0 or self.gamma[0] <= 0:
            raise InputError(f"photons and gamma must be > 0, got {self.photons} and {self.gamma}")
        if self.collimation[1] >= 0.5:
            raise InputError(f"collimation must stay below 0.5 of the image per border, got {self.collimation}")
        size = tuple(int(n) for n in self.detector_size)
        if len(size) != 2 or min(size) < 8:
            raise InputError(f"detector_size must be (columns, rows), each >= 8 pixels, got {self.detector_size!r}")
        self.detector_size = size
        if not (math.isfinite(self.pixel_spacing_mm) and self.pixel_spacing_mm > 0):
            raise InputError(f"pixel_spacing_mm must be > 0, got {self.pixel_spacing_mm!r}")


def draw_pose_offset(rng: np.random.Generator, rot_deg: float, trans_mm: float) -> np.ndarray:
    """(6,) pose parameters: angles uniform in [-rot_deg, rot_deg], shifts in [-trans_mm, trans_mm]."""
    return np.concatenate([rng.uniform(-rot_deg, rot_deg, 3), rng.uniform(-trans_mm, trans_mm, 3)])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_geometries(rng: np.random.Generator, config: AcquisitionConfig, isocenter_ras: np.ndarray) -> tuple[list, list]:
    """The jittered AP and LAT views around ``isocenter_ras`` and what was drawn.

    The side, flips and principal point are drawn only when the config asks for them, so
    a config without them draws the same views as before they existed.
    """
    geometries, drawn = [], []
    for view, primary_deg in VIEWS.items():
        angle_jitter = config.ap_angle_jitter_deg if view == "AP" else config.lat_angle_jitter_deg
        knobs = {
            "view": view,
            "primary_deg": primary_deg + float(rng.uniform(-angle_jitter, angle_jitter)),
            "sdd_mm": DEFAULT_SDD_MM + float(rng.uniform(-config.sdd_jitter_mm, config.sdd_jitter_mm)),
            "sid_mm": DEFAULT_SID_MM + float(rng.uniform(-config.sid_jitter_mm, config.sid_jitter_mm)),
            "pixel_spacing_mm": config.pixel_spacing_mm
            * (1.0 + float(rng.uniform(-config.pixel_spacing_jitter, config.pixel_spacing_jitter))),
        }
        if config.either_side and rng.random() < 0.5:
            knobs["primary_deg"] += 180.0
        flips = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if config.flip_detector else (False, False)
        offset = (rng.uniform(-config.principal_offset_mm, config.principal_offset_mm, 2)
                  if config.principal_offset_mm > 0 else np.zeros(2))
        source, center, u, v = c_arm_frame(knobs["primary_deg"], 0.0, knobs["sdd_mm"], knobs["sid_mm"], isocenter_ras)
        # The beam axis meets the detector at the principal point, offset from its centre.
        center = center - offset[0] * u - offset[1] * v
        u, v = (-u if flips[0] else u), (-v if flips[1] else v)
        if config.either_side or config.flip_detector or config.principal_offset_mm > 0:
            knobs.update(flip_columns=flips[0], flip_rows=flips[1], principal_offset_mm=[float(x) for x in offset])
        geometries.append(geometry_from_center(source, center, u, v, config.detector_size,
                                               (knobs["pixel_spacing_mm"],) * 2))
        drawn.append(knobs)
    return geometries, drawn


def draw_sim(rng: np.random.Generator, config: AcquisitionConfig) -> XraySimConfig:
    """The X-ray realism knobs of one view, each uniform in its range."""
    return XraySimConfig(
        photons=_uniform(rng, config.photons),
        gamma=_uniform(rng, config.gamma),
        scatter_fraction=_uniform(rng, config.scatter_fraction),
        heel=_uniform(rng, config.heel),
        blur_sigma_px=_uniform(rng, config.blur_sigma_px),
        collimation=_uniform(rng, config.collimation),
    )


