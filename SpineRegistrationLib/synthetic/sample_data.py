"""The sample data set as files: phantom CT, labelmap, centroids, AP/LAT X-rays, geometry, truth.

Written by ``spinereg phantom`` and ``spinereg demo`` and loadable by anyone (Slicer,
other tools): NIfTI for volumes, VerSe centroid JSON, 16-bit PNG X-rays with their
``spinereg-xray-geometry`` sidecars, and ``truth.json`` (format ``spinereg-truth``,
version 1) with the per-vertebra pose that produced the X-rays.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..geometry import XrayGeometry, preset_geometry
from ..io.geometry_json import save_geometry
from ..io.results import params_to_json
from ..io import Labelmap, write_centroids, write_labelmap, write_volume, write_xray
from .phantom import Phantom, PhantomConfig, generate_phantom
from .biplanar import BiplanarCase, random_vertebra_params, simulate_case
from ..render.xray_sim import XraySimConfig

#: File names inside a sample-data folder.
CT_FILE, SEG_FILE, CENTROIDS_FILE, TRUTH_FILE = "ct.nii.gz", "seg.nii.gz", "centroids.json", "truth.json"
VIEWS = ("AP", "LAT")


@dataclass
class SampleConfig:
    """What ``spinereg phantom`` makes.

    phantom: the CT's knobs (see :class:`.phantom.PhantomConfig`).
    pose_deg / pose_mm: half-range of the uniform random intraoperative pose of each
        vertebra (per axis) relative to the CT, about its centroid.
    detector_size: (columns, rows); pixel_spacing_mm: at the detector. The defaults
        see T10-L5 whole at the default C-arm distances (1020 / 620 mm).
    sim: how the X-rays are degraded (noise, scatter, gamma, collimation).
    """

    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    pose_deg: float = 3.0
    pose_mm: float = 3.0
    detector_size: tuple[int, int] = (512, 512)
    pixel_spacing_mm: float = 1.0
    sim: XraySimConfig = field(default_factory=XraySimConfig)


def sample_geometries(config: SampleConfig, isocenter_ras: np.ndarray) -> list[XrayGeometry]:
    """The AP and LAT views of the sample, centred on ``isocenter_ras``."""
    return [
        preset_geometry(
            view,
            isocenter_ras=isocenter_ras,
            size=config.detector_size,
            pixel_spacing=(config.pixel_spacing_mm, config.pixel_spacing_mm),
        )
        for view in VIEWS
    ]


def make_sample(config: SampleConfig = SampleConfig()) -> tuple[Phantom, Labelmap, BiplanarCase]:
    """Generate the phantom and its simulated AP/LAT X-rays with random per-vertebra poses."""
    phantom = generate_phantom(config.phantom)
    labelmap = Labelmap(phantom.labels, "verse")
    names = list(labelmap.labels)
    rng = np.random.default_rng(config.phantom.seed + 1)
    params = random_vertebra_params(names, config.pose_deg, config.pose_mm, rng)
    isocenter = np.mean([phantom.centroids_ras[name] for name in names], axis=0)
    geometries = sample_geometries(config, isocenter)
    case = simulate_case(
        phantom.ct, labelmap, params, phantom.centroids_ras, geometries, config.sim, seed=config.phantom.seed
    )
    return phantom, labelmap, case


def write_sample(directory: str | Path, phantom: Phantom, labelmap: Labelmap, case: BiplanarCase) -> dict[str, Path]:
    """Write the sample into an existing folder; returns name -> path of what was written."""
    directory = Path(directory)
    paths = {
        "ct": directory / CT_FILE,
        "seg": directory / SEG_FILE,
        "centroids": directory / CENTROIDS_FILE,
        "truth": directory / TRUTH_FILE,
    }
    # HU rounded to int16: a tenth of the float file's size, no loss that matters (noise is 10 HU).
    write_volume(phantom.ct.with_array(np.round(phantom.ct.array).astype(np.int16)), paths["ct"])
    write_labelmap(labelmap, paths["seg"])
    write_centroids(phantom.centroids_ras, paths["centroids"], phantom.ct)
    for view, image, geometry in zip(VIEWS, case.images, case.geometries):
        paths[view] = directory / f"{view}.png"
        paths[f"{view}_geometry"] = directory / f"{view}.json"
        write_xray(image, paths[view])
        save_geometry(geometry, paths[f"{view}_geometry"])
    truth = {
        "format": "spinereg-truth",
        "version": 1,
        "software": f"SpineRegistration {__version__}",
        "frame": "RAS",
        "phantom": {key: value for key, value in asdict(phantom.config).items() if key != "vertebra_poses"},
        "vertebrae": {
            name: {
                "matrix_ras": case.poses[name].tolist(),
                "params": params_to_json(case.params[name]),
                "center_ras": np.asarray(phantom.centroids_ras[name]).tolist(),
            }
            for name in case.poses
        },
    }
    paths["truth"].write_text(json.dumps(truth, indent=2))
    return paths
