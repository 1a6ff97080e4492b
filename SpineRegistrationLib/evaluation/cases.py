"""The evaluation's cases: simulated biplanar cases with exact truth, any registration method
run on them, to score registration methods on.

A case is one vertebra to register. Its X-rays show the whole spine moved the way it
moves between the preoperative CT and the operating table:

- a pose offset ``G`` of the whole patient relative to the C-arm (uniform rotations in
  ``±rot_deg`` and translations in ``±trans_mm`` per axis, about the target vertebra's
  centroid: DESIGN.md pose convention), applied to the soft tissue and every vertebra;
- on top of it, an independent small motion ``L_v`` of every vertebra about its own
  centroid (``±per_vertebra_deg`` / ``±per_vertebra_mm``): the spine is articulated, so
  the neighbours do not move exactly with the target.

Vertebra v is at ``G @ L_v`` (CT RAS -> world) and the truth of the case is
``G @ L_target``; the registration starts from the identity (the CT as scanned). The
views are AP and LAT C-arm shots centred on the target's CT position, with jittered
distances, angles and pixel spacing (the registration is told the jittered geometry: it
is known, as from a calibrated C-arm), and X-ray realism knobs (photon noise, display
gamma, scatter, anode heel, detector blur, collimation: :mod:`.xray_sim`) drawn per view.
The X-rays come from the project's one simulator (:class:`..render.spine_xray.PosedSpine`:
the tissue background's DRR plus each vertebra's attenuation above tissue at its pose),
with the spectral attenuation model (:func:`..render.xray_sim.hu_to_mu_spectral`) while the
methods register with the plain one (:func:`..render.drr.hu_to_mu`): the X-rays are never
the registration's own DRRs. The renderer can be swapped (``make_cases(renderer=...,
render_factory=...)``) so that the benchmark renders the X-rays with DiffDRR instead of ours.
The acquisition is drawn from :class:`..synthetic.acquisition.AcquisitionConfig`, the
distribution the training samples are drawn from too.

Everything is deterministic from ``EvalConfig.seed``: case i draws from
``numpy.random.default_rng([seed, i])``, so the first cases of a run with more cases are
the same cases.

Methods are :mod:`.methods`, scoring :mod:`.scoring`, the report :mod:`.report`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.labels import canonical_name
from ..core.pose import matrix_to_params, params_to_matrix
from ..core.volume import Volume
from ..errors import InputError
from ..geometry import XrayGeometry
from ..io.labelmaps import Labelmap, centroids_ras
from ..io.results import params_to_json
from ..core.labelmap import check_same_grid, neighbour_offsets
from ..render.drr import hu_to_mu
from ..render.spine_xray import PosedSpine, RenderFactory
from ..render.xray_sim import simulate_xray
from ..synthetic.acquisition import AcquisitionConfig, draw_geometries, draw_pose_offset, draw_sim

# --------------------------------------------------------------------------- configuration
@dataclass
class EvalConfig(AcquisitionConfig):
    """What :func:`make_cases` simulates: the acquisition distribution (:class:`AcquisitionConfig`) and

    cases: number of cases; case i registers ``vertebrae[i % len(vertebrae)]``.
    vertebrae: names to register; None = every vertebra with both neighbours in the labelmap
        (all of them when there are fewer than three).
    seed: everything random derives from it.
    """

    cases: int = 20
    vertebrae: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cases, (int, np.integer)) or isinstance(self.cases, bool) or self.cases < 1:
            raise InputError(f"cases must be a whole number >= 1, got {self.cases!r}")
        if self.vertebrae is not None:
            self.vertebrae = tuple(self.vertebrae)
            if not self.vertebrae:
                raise InputError("vertebrae must name at least one vertebra (or be None for the default)")
        super().__post_init__()


@dataclass(eq=False)
class EvalCase:
    """One simulated registration problem (arrays are shared between cases, never copied).

    index: position in the case set; vertebra: the name to register.
    images: one (rows, columns) float32 X-ray per view, bone bright, in [0, 1].
    geometries: the views (the jittered ones the X-rays were made with).
    matrix_true: (4, 4) the vertebra's true matrix_ras (CT RAS -> world).
    matrix_init: (4, 4) where registration starts (identity).
    center_ras: (3,) the vertebra's centroid, CT RAS mm.
    ct: the CT in HU; mu: its attenuation (1/mm, :func:`.drr.hu_to_mu`), what registration uses.
    mask: (K, J, I) bool, the vertebra in the CT.
    renderer: which renderer made the X-rays ("ours", "diffdrr", ...).
    info: how the case was drawn (pose offsets, ``vertebra_poses``: name -> (4, 4) true matrix_ras
    of every vertebra, geometry and X-ray knobs), JSON-ready.
    neighbour_offsets: CT RAS mm from the vertebra's centroid to its labelled neighbours'
    (:func:`..core.labelmap.neighbour_offsets`, read by the verdict).
    """

    index: int
    vertebra: str
    images: list[np.ndarray] = field(repr=False)
    geometries: list[XrayGeometry] = field(repr=False)
    matrix_true: np.ndarray = field(repr=False)
    matrix_init: np.ndarray = field(repr=False)
    center_ras: np.ndarray = field(repr=False)
    ct: Volume = field(repr=False)
    mu: Volume = field(repr=False)
    mask: np.ndarray = field(repr=False)
    renderer: str = "ours"
    info: dict = field(default_factory=dict, repr=False)
    neighbour_offsets: tuple[np.ndarray, ...] = field(default=(), repr=False)


# --------------------------------------------------------------------------- case synthesis
def default_vertebrae(labelmap: Labelmap) -> tuple[str, ...]:
    """The vertebrae with both neighbours present (cranial -> caudal); all of them if fewer than three."""
    names = list(labelmap.labels)
    return tuple(names[1:-1] if len(names) >= 3 else names)


def iter_cases(
    ct_hu: Volume,
    labelmap: Labelmap,
    centroids: dict[str, np.ndarray] | None = None,
    config: EvalConfig | None = None,
    renderer: str = "ours",
    render_factory: RenderFactory | None = None,
    device: str | torch.device = "cpu",
    indices: Iterable[int] | None = None,
) -> Iterator[EvalCase]:
    """The cases of :func:`make_cases` one at a time (for progress bars).

    The inputs are checked (and the renderers built) when this is called; each case is
    rendered when the iterator reaches it. indices: only these cases of the set (each is
    drawn from its own seed, so case i is the same whichever others are rendered).
    """
    check_same_grid(labelmap, ct_hu)
    config = EvalConfig() if config is None else config
    names = list(labelmap.labels)
    if not names:
        raise InputError("the labelmap has no vertebra the label scheme knows")
    targets = tuple(canonical_name(str(name)) or str(name) for name in config.vertebrae or ())
    targets = targets or default_vertebrae(labelmap)
    for name in targets:
        if name not in names:
            raise InputError(f"vertebra {name!r} is not in the labelmap; present: {', '.join(names)}")
    centroids = dict(centroids) if centroids is not None else centroids_ras(labelmap)
    missing = [name for name in names if name not in centroids]
    if missing:
        raise InputError(f"no centroid for {', '.join(missing)}")
    if render_factory is None and renderer != "ours":
        raise InputError(
            f"renderer {renderer!r} needs its render_factory (DiffDRR is not a library dependency: "
            "Testing/benchmarks/peers/diffdrr_registration.py provides one)"
        )
    spine = PosedSpine(ct_hu, labelmap, names, render_factory=render_factory, device=device)
    mu_registration = ct_hu.with_array(hu_to_mu(ct_hu.array))
    chosen = range(config.cases) if indices is None else [int(i) for i in indices]
    return _generate_cases(ct_hu, mu_registration, names, targets, centroids, spine, config, renderer, chosen)


def _generate_cases(ct_hu, mu_registration, names, targets, centroids, spine: PosedSpine,
                    config: EvalConfig, renderer: str, indices: Iterable[int]) -> Iterator[EvalCase]:
    for index in indices:
        rng = np.random.default_rng([config.seed, index])
        target = targets[index % len(targets)]
        center = np.asarray(centroids[target], dtype=np.float64)
        offset = draw_pose_offset(rng, config.rot_deg, config.trans_mm)
        patient = params_to_matrix(offset, center)
        motion = {name: draw_pose_offset(rng, config.per_vertebra_deg, config.per_vertebra_mm) for name in names}
        poses = {name: patient @ params_to_matrix(motion[name], centroids[name]) for name in names}
        geometries, geometry_knobs = draw_geometries(rng, config, center)
        sims = [draw_sim(rng, config) for _ in geometries]
        noise_seed = int(rng.integers(2**31))
        started = time.perf_counter()
        images = []
        for view, (geometry, sim) in enumerate(zip(geometries, sims)):
            depth = spine.optical_depth(geometry, poses, background_pose=patient)
            generator = torch.Generator().manual_seed(noise_seed + view)
            images.append(simulate_xray(torch.from_numpy(np.asarray(depth, np.float32)), sim, generator).numpy())
        yield EvalCase(
            index=index,
            vertebra=target,
            images=images,
            geometries=geometries,
            matrix_true=poses[target],
            matrix_init=np.eye(4),
            center_ras=center,
            ct=ct_hu,
            mu=mu_registration,
            mask=spine.masks[target],
            renderer=renderer,
            neighbour_offsets=neighbour_offsets({name: centroids[name] for name in names}, target),
            info={
                "spine_offset": params_to_json(offset, 4),
                "vertebra_motion": params_to_json(motion[target], 4),
                "true_params": params_to_json(matrix_to_params(poses[target], center), 4),
                "vertebra_poses": {name: np.round(pose, 6).tolist() for name, pose in poses.items()},
                "views": [{**knobs, "sim": asdict(sim)} for knobs, sim in zip(geometry_knobs, sims)],
                "render_s": round(time.perf_counter() - started, 3),
            },
        )


def make_cases(
    ct_hu: Volume,
    labelmap: Labelmap,
    centroids: dict[str, np.ndarray] | None = None,
    config: EvalConfig | None = None,
    renderer: str = "ours",
    render_factory: RenderFactory | None = None,
    device: str | torch.device = "cpu",
) -> list[EvalCase]:
    """The case set described by ``config`` for a CT (HU) and its vertebra labelmap.

    centroids: name -> (3,) CT RAS mm (default: the labelmap's centres of mass).
    renderer / render_factory: the name recorded in each case and how optical depths are
        rendered (default: our :class:`..render.drr.DRRRenderer`; any other name needs a
        :data:`RenderFactory`, e.g. the DiffDRR one of the benchmarks).
    Raises InputError for a vertebra not in the labelmap or a mismatched grid.
    """
    return list(iter_cases(ct_hu, labelmap, centroids, config, renderer, render_factory, device))
