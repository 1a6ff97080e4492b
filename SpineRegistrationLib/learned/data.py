"""Training samples for the pose network, synthesised on the fly from CTs with vertebra labels.

A sample is one vertebra of one CT seen by a jittered AP/LAT C-arm (:func:`..synthetic.acquisition.draw_geometries`):
the whole spine is offset about the vertebra's centroid (so its neighbours move with it, as
on the table), the vertebra gets a little motion of its own, and both views are rendered on
the network's patch detectors (:func:`.patches.patch_geometry`, centred on the nominal
centre) by the project's one simulator (:class:`..render.spine_xray.PosedSpine`) as realistic
X-rays (:mod:`..render.xray_sim`: spectral attenuation, noise, scatter, heel, blur, gamma,
collimation, and sometimes inverted polarity). The template channel is the vertebra's own DRR
at the nominal pose, alone or with the CT around it (:func:`.patches.template_renderer`;
registration attenuation, :func:`..render.drr.hu_to_mu`).
Samples whose vertebra is cut by the patch border are drawn again.

Everything random derives from ``(seed, rank, step)``, so a batch is the same whenever it
is drawn: training resumes on exactly the samples it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from ..core.metrics import vertebra_points
from ..core.pose import params_to_matrix
from ..core.volume import Volume
from ..errors import InputError
from ..io.labelmaps import Labelmap, centroids_ras
from ..render.drr import Detectors, DRRRenderer, hu_to_mu
from ..render.spine_xray import PosedSpine, ours_render_factory
from ..render.xray_sim import simulate_xray
from ..synthetic.acquisition import AcquisitionConfig, draw_geometries, draw_pose_offset, draw_sim
from .patches import (PatchSpec, normalize_xray, offset_in_frame, patch_geometry, template_channel, template_renderer,
                      view_frame, volume_downsample)


def training_acquisition() -> AcquisitionConfig:
    """The default pose and acquisition ranges of training.

    Rotations (+-12 deg) and the acquisition are wider than the evaluation's; translations
    are +-15 mm per axis, about half the spacing of two vertebrae: beyond it a vertebra sits
    nearer its neighbour's nominal place than its own, and which level is which cannot be
    told from the patches (the network would learn the average of two answers). Larger
    offsets are the refinement's: it searches translations around the network's pose and
    lets the candidate levels compete (:func:`.inference.register_vertebra_learned`).

    Views come from either side (AP or PA, the lateral from the left or the right), with
    flipped detectors and offset principal points, as in the real-CT benchmark and the
    operating room: the patches undo the flips (:func:`.patches.patch_axes`) but not the
    perspective, which the network then learns from both sides.
    """
    return AcquisitionConfig(
        rot_deg=12.0, trans_mm=15.0, per_vertebra_deg=2.0, per_vertebra_mm=2.0,
        sdd_jitter_mm=60.0, sid_jitter_mm=40.0, ap_angle_jitter_deg=5.0, lat_angle_jitter_deg=8.0,
        pixel_spacing_jitter=0.3, either_side=True, flip_detector=True, principal_offset_mm=20.0,
        photons=(5.0e3, 3.0e5), gamma=(0.5, 1.6), scatter_fraction=(0.0, 0.5),
        heel=(0.0, 0.25), blur_sigma_px=(0.3, 1.5), collimation=(0.0, 0.05),
    )


@dataclass
class SynthesisConfig:
    """The training-sample distribution.

    acquisition: pose offsets, C-arm jitter and X-ray knobs (its detector size and spacing are
        not used: samples are rendered on the network's patches).
    isocenter_jitter_mm: the C-arm isocentre is this far (uniform per axis) from the vertebra.
    invert_probability: chance that a view's X-ray is stored bone-dark (polarity augmentation).
    points: vertebra points per sample for the point-distance loss.
    max_cut_fraction: a sample is drawn again when more than this fraction of the vertebra's
        DRR lies on the patch's outer 2 pixels (cut off by the border).
    """

    acquisition: AcquisitionConfig = field(default_factory=training_acquisition)
    isocenter_jitter_mm: float = 30.0
    invert_probability: float = 0.1
    points: int = 256
    max_cut_fraction: float = 0.02


class TrainingCT:
    """One CT (HU) and its labelled vertebrae, with the renderers samples are drawn from.

    vertebrae: names to train on (default: all of the labelmap). Renderers are built the
    first time a vertebra is drawn.
    """

    def __init__(self, ct_hu: Volume, labelmap: Labelmap, spec: PatchSpec, name: str = "ct",
                 vertebrae: Sequence[str] | None = None, points: int = 256) -> None:
        present = list(labelmap.labels)
        self.names = list(vertebrae) if vertebrae else present
        missing = [n for n in self.names if n not in present]
        if missing:
            raise InputError(f"{name}: vertebra {', '.join(missing)} is not in the segmentation; present: "
                             f"{', '.join(present) or 'none'}")
        if not self.names:
            raise InputError(f"{name}: the segmentation has no vertebra label the label scheme knows")
        self.name, self.ct, self.labelmap, self.spec, self.points = name, ct_hu, labelmap, spec, points
        self.centroids = centroids_ras(labelmap)
        self.factor = volume_downsample(ct_hu, spec)
        self._renderers: dict[str, tuple] = {}

    def renderers(self, vertebra: str) -> tuple[PosedSpine, DRRRenderer, np.ndarray]:
        """(the CT with this vertebra moving, the vertebra's template renderer, (P, 3) points CT RAS)."""
        if vertebra not in self._renderers:
            scene = PosedSpine(self.ct, self.labelmap, [vertebra], render_factory=ours_render_factory(downsample=self.factor))
            mask = scene.masks[vertebra]
            self._renderers[vertebra] = (
                scene,
                template_renderer(self.ct.with_array(hu_to_mu(self.ct.array)), mask, self.spec),
                _fixed_count(vertebra_points(mask, self.ct, max_points=self.points), self.points),
            )
        return self._renderers[vertebra]


def _fixed_count(points: np.ndarray, count: int) -> np.ndarray:
    """(count, 3): ``points`` repeated in turn up to ``count`` when a small (cut) vertebra has
    fewer voxels, so that every sample of a batch has as many points."""
    return points[np.arange(count) % len(points)]


def _rim_fraction(images: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(V, n, n) -> (V,) fraction of each image's sum lying in its outer ``width`` pixels."""
    inner = images[:, width:-width, width:-width].sum((-2, -1))
    total = images.sum((-2, -1))
    return torch.where(total > 0, 1.0 - inner / total.clamp(min=1e-12), torch.ones_like(total))


def draw_sample(source: TrainingCT, config: SynthesisConfig, rng: np.random.Generator,
                vertebra: str | None = None) -> dict[str, torch.Tensor] | None:
    """One sample (see the module docstring), or None when the vertebra is cut off or empty.

    Returns ``patches`` (2, 2, n, n) float32 (view, [X-ray, template]), the true offset
    ``rotation`` (3, 3) and ``translation`` (3,) mm in the AP frame, and ``points`` (P, 3) mm,
    the vertebra's points about its centre in that frame.
    """
    acq = config.acquisition
    name = vertebra or source.names[int(rng.integers(len(source.names)))]
    scene, template, points = source.renderers(name)
    center = np.asarray(source.centroids[name], dtype=np.float64)
    offset = draw_pose_offset(rng, acq.rot_deg, acq.trans_mm)
    motion = draw_pose_offset(rng, acq.per_vertebra_deg, acq.per_vertebra_mm)
    spine = params_to_matrix(offset, center)
    pose = spine @ params_to_matrix(motion, center)
    isocenter = center + rng.uniform(-config.isocenter_jitter_mm, config.isocenter_jitter_mm, 3)
    geometries, _ = draw_geometries(rng, acq, isocenter)
    patches = [patch_geometry(g, center, source.spec) for g in geometries]
    sims = [draw_sim(rng, acq) for _ in geometries]
    noise_seed = int(rng.integers(2**31))
    invert = rng.random(len(geometries)) < config.invert_probability

    def views(render_view) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.asarray(render_view(patch))) for patch in patches])

    vertebra_depth = views(lambda patch: scene.vertebra_depth(name, pose, patch))
    if bool((_rim_fraction(vertebra_depth) > config.max_cut_fraction).any()):
        return None
    depth = views(lambda patch: scene.background_depth(spine, patch)) + vertebra_depth
    generator = torch.Generator().manual_seed(noise_seed)
    xrays = torch.stack([simulate_xray(d, sim, generator) for d, sim in zip(depth, sims)])
    xrays = torch.where(torch.as_tensor(invert)[:, None, None], 1.0 - xrays, xrays)
    with torch.no_grad():
        templates = template(torch.eye(4)[None], Detectors.from_geometries(patches))[0]
    frame = view_frame(geometries[0])
    rotation, translation = offset_in_frame(pose, np.eye(4), center, frame)
    return {
        "patches": torch.stack([normalize_xray(xrays), template_channel(templates, source.spec)], dim=1),
        "rotation": torch.as_tensor(rotation, dtype=torch.float32),
        "translation": torch.as_tensor(translation, dtype=torch.float32),
        "points": torch.as_tensor((points - center) @ frame.T, dtype=torch.float32),
    }


class SampleStream(torch.utils.data.IterableDataset):
    """Batches for steps ``start`` .. ``stop - 1``, each drawn from ``(seed, rank, step)``.

    With DataLoader workers, worker w makes the steps congruent to w: the loader's
    round-robin returns them in step order.
    """

    def __init__(self, sources: Sequence[TrainingCT], config: SynthesisConfig, batch_size: int, seed: int,
                 start: int, stop: int, rank: int = 0) -> None:
        super().__init__()
        if not sources:
            raise InputError("no training CT given")
        self.sources, self.config, self.batch_size = list(sources), config, int(batch_size)
        self.seed, self.start, self.stop, self.rank = int(seed), int(start), int(stop), int(rank)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, step])
        samples = []
        for _ in range(100 * self.batch_size):
            source = self.sources[int(rng.integers(len(self.sources)))]
            sample = draw_sample(source, self.config, rng)
            if sample is not None:
                samples.append(sample)
                if len(samples) == self.batch_size:
                    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
        raise InputError("almost every training sample had its vertebra cut off by the patch: the patch "
                         "(size_px x mm_per_px) is too small for these vertebrae and pose ranges")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for step in range(self.start + worker, self.stop, workers):
            yield self.batch(step)


def phantom_sources(count: int, seed: int, spec: PatchSpec, points: int = 256) -> list[TrainingCT]:
    """``count`` procedural phantoms of varied anatomy (:func:`..phantom.varied_phantom_config`,
    seeds ``seed`` ... ``seed + count - 1``) as training CTs."""
    from ..synthetic.phantom import generate_phantom, varied_phantom_config

    sources = []
    for index in range(count):
        phantom = generate_phantom(varied_phantom_config(seed + index))
        sources.append(TrainingCT(phantom.ct, Labelmap(phantom.labels, "verse"), spec,
                                  name=f"phantom-{seed + index}", points=points))
    return sources
