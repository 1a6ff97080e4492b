"""Procedural CT phantom of the thoracolumbar spine, with a VerSe labelmap and centroids.

Everything is RAS mm (DESIGN.md). Each vertebra is built in its own *construction frame*:
origin at the centre of the vertebral body, x to the patient's right, y anterior, z
superior. Its bone is a smooth union of signed-distance primitives (mm, negative inside):
a waisted elliptic body with a flat posterior wall and cupped endplates, pedicles,
laminae, a spinous process, transverse processes, superior and inferior articular
processes, and (thoracic levels) ribs, which are bone but label 0. The bone is a cortical
shell of ``cortical_mm`` around cancellous bone. Discs, the CSF-filled canal and an
elliptic soft-tissue body (muscle inside a fat layer, air outside) complete the CT.

The vertebrae sit on a curve (sagittal lordosis/kyphosis, optional coronal scoliosis)
with their z axis tangent to it, spaced by body and disc heights; then each gets its own
rigid pose about its centroid (DESIGN.md convention, :func:`pose.params_to_matrix`).

Shapes are evaluated only inside the bounding box of each primitive, with numpy, so the
default phantom (T10-L5, 1 mm) takes a few seconds. Same seed, same arrays.

Anatomical dimensions: Panjabi et al., Spine 1991 (thoracic) and 1992 (lumbar); Zhou
et al., Eur Spine J 2000 -- linearly interpolated between the anchor levels of
:data:`_ANCHORS` and jittered by ``dims_jitter`` per vertebra and dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ..core.labels import SCHEMES
from ..core.pose import euler_zyx_to_rotation, params_to_matrix
from ..core.volume import Volume, box_corners

_VERSE = SCHEMES["verse"].label_of

#: Tissue values (HU) outside the bone.
AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 40.0
CSF_HU = 15.0
DISC_HU = 90.0

#: Vertebrae the phantom can build, cranial -> caudal.
PHANTOM_VERTEBRAE: tuple[str, ...] = tuple(f"T{n}" for n in range(1, 13)) + tuple(f"L{n}" for n in range(1, 6))

#: Share of ``lordosis_deg`` taken by the segments L1-L2 ... L4-L5 (more caudally).
_LORDOSIS_SHARES = {"L1": 0.2, "L2": 0.23, "L3": 0.27, "L4": 0.3}
#: Number of segments (T10-T11, T11-T12, T12-L1) that share ``kyphosis_deg``; every
#: thoracic segment gets the same angle, ``kyphosis_deg / 3``.
_KYPHOSIS_SEGMENTS = 3

_ANCHOR_LEVELS = ("T1", "T6", "T10", "T12", "L1", "L3", "L5")
#: Per-level dimensions at the anchor levels (mm unless ``_deg``; ``rib_fraction`` is the
#: share of the full rib drawn). Full widths/heights, not half.
_ANCHORS: dict[str, tuple[float, ...]] = {
    "body_width": (28.0, 31.0, 38.0, 43.0, 43.0, 47.0, 50.0),
    "body_depth": (17.0, 25.0, 30.0, 32.0, 31.0, 34.0, 35.0),
    "body_height": (15.0, 18.5, 21.5, 24.0, 25.0, 26.5, 26.0),
    "disc_height": (4.0, 5.0, 6.5, 8.5, 9.0, 10.5, 11.0),
    "pedicle_width": (8.0, 5.0, 7.0, 8.0, 8.0, 10.0, 15.0),
    "pedicle_height": (10.0, 11.0, 15.0, 16.0, 15.5, 14.5, 14.0),
    "pedicle_convergence_deg": (30.0, 5.0, 5.0, 5.0, 10.0, 15.0, 25.0),
    "canal_width": (20.0, 15.0, 17.0, 20.0, 22.0, 23.0, 25.0),
    "canal_depth": (15.0, 16.0, 17.0, 17.0, 18.0, 17.0, 17.0),
    "lamina_thickness": (5.0, 5.0, 5.5, 6.0, 6.0, 6.5, 7.0),
    "tp_span": (72.0, 70.0, 66.0, 50.0, 70.0, 85.0, 88.0),
    "tp_thickness": (9.0, 9.0, 9.0, 7.0, 5.5, 5.5, 7.0),
    "tp_height": (9.0, 9.0, 10.0, 9.0, 10.0, 11.0, 13.0),
    "tp_back_deg": (35.0, 40.0, 35.0, 15.0, 10.0, 5.0, 10.0),
    "sp_length": (45.0, 45.0, 38.0, 32.0, 30.0, 29.0, 26.0),
    "sp_incline_deg": (30.0, 60.0, 45.0, 25.0, 15.0, 10.0, 10.0),
    "sp_height": (10.0, 10.0, 12.0, 18.0, 20.0, 22.0, 20.0),
    "sp_thickness": (7.0, 6.0, 6.0, 7.0, 8.0, 8.0, 9.0),
    "rib_fraction": (1.0, 1.0, 1.0, 0.35, 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class VertebraDims:
    """Dimensions of one vertebra (mm unless ``_deg``), see :data:`_ANCHORS`."""

    body_width: float
    body_depth: float
    body_height: float
    disc_height: float  # disc below this vertebra
    pedicle_width: float
    pedicle_height: float
    pedicle_convergence_deg: float  # axial angle, anterior ends closer to the midline
    canal_width: float
    canal_depth: float
    lamina_thickness: float
    tp_span: float  # transverse process tip to tip
    tp_thickness: float
    tp_height: float
    tp_back_deg: float  # transverse processes point this far posteriorly from lateral
    sp_length: float
    sp_incline_deg: float  # spinous process points this far below horizontal
    sp_height: float
    sp_thickness: float
    rib_fraction: float


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the phantom. Lengths in mm, angles in degrees, intensities in HU.

    seed: drives the anatomy jitter, the random poses and the CT noise.
    vertebrae: consecutive names, cranial -> caudal, from :data:`PHANTOM_VERTEBRAE`.
    spacing_mm: isotropic voxel size.
    lordosis_deg: sagittal angle between L1 and L5 (spread over the lumbar segments present).
    kyphosis_deg: sagittal angle between T10 and L1 (each thoracic segment gets a third).
    scoliosis_deg: coronal angle between the end vertebrae, a C curve convex to the
      patient's right (RAS +x) when positive.
    anatomy_scale: multiplies every length of the vertebrae (0.7-1.3).
    dims_jitter: per-vertebra, per-dimension relative jitter (uniform +-).
    vertebra_poses: name -> (rx, ry, rz deg, tx, ty, tz mm), the extra pose of that
      vertebra about its centroid on top of the curve (DESIGN.md pose convention).
    random_pose_deg / random_pose_mm: half-range of uniform random extra rotations /
      translations per vertebra and axis, added to ``vertebra_poses``.
    body_half_axes_mm: (lateral, anterior-posterior) half-axes of the elliptic body outline.
    body_center_anterior_mm: RAS y of the body outline's centre (the spine centre is at 0).
    fat_mm: subcutaneous fat thickness.
    field_of_view_mm: (lateral, anterior-posterior) extent of the volume, centred on the
      spine (the body outline is cropped by it); cranio-caudally the volume covers the
      vertebrae plus ``margin_mm`` on each side.
    cortical_mm, cortical_hu, cancellous_hu: shell thickness and bone intensities
      (cancellous varies by +-25 HU per vertebra).
    noise_hu: standard deviation of the additive Gaussian CT noise.
    surroundings: add what overlaps the spine on a radiograph (:func:`_add_surroundings`):
      lungs, heart and aorta, diaphragm domes, liver, stomach and bowel gas, sternum,
      scapulae, clavicles and the table (unlabelled, where the field of view reaches them).
    trabecular_contrast: relative HU modulation of cancellous bone by a trabecular pattern
      (0: uniform cancellous bone).
    """

    seed: int = 0
    vertebrae: tuple[str, ...] = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
    spacing_mm: float = 1.0
    lordosis_deg: float = 35.0
    kyphosis_deg: float = 10.0
    scoliosis_deg: float = 0.0
    anatomy_scale: float = 1.0
    dims_jitter: float = 0.05
    vertebra_poses: dict[str, tuple[float, ...]] = field(default_factory=dict)
    random_pose_deg: float = 0.0
    random_pose_mm: float = 0.0
    body_half_axes_mm: tuple[float, float] = (150.0, 110.0)
    body_center_anterior_mm: float = 25.0
    fat_mm: float = 15.0
    field_of_view_mm: tuple[float, float] = (256.0, 200.0)
    margin_mm: float = 20.0
    cortical_mm: float = 1.5
    cortical_hu: float = 1200.0
    cancellous_hu: float = 250.0
    noise_hu: float = 10.0
    surroundings: bool = True
    trabecular_contrast: float = 0.35

    def __post_init__(self) -> None:
        names = tuple(self.vertebrae)
        object.__setattr__(self, "vertebrae", names)
        if not names or any(name not in PHANTOM_VERTEBRAE for name in names):
            raise ValueError(
                f"vertebrae must be names from {PHANTOM_VERTEBRAE[0]}..{PHANTOM_VERTEBRAE[-1]}, got {names}"
            )
        first = PHANTOM_VERTEBRAE.index(names[0])
        if names != PHANTOM_VERTEBRAE[first : first + len(names)]:
            raise ValueError(f"vertebrae must be consecutive, cranial -> caudal, got {names}")
        for name, params in self.vertebra_poses.items():
            if name not in names or np.shape(params) != (6,):
                raise ValueError(
                    f"vertebra_poses[{name!r}] = {params!r}: expected a vertebra of {names} "
                    "-> 6 values (rx, ry, rz deg, tx, ty, tz mm)"
                )
        if not 0.1 <= self.spacing_mm <= 5.0:
            raise ValueError(f"spacing_mm must be in [0.1, 5], got {self.spacing_mm}")
        if not 0.7 <= self.anatomy_scale <= 1.3:
            raise ValueError(f"anatomy_scale must be in [0.7, 1.3], got {self.anatomy_scale}")
        for name in ("dims_jitter", "random_pose_deg", "random_pose_mm", "noise_hu", "fat_mm", "margin_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if min(self.body_half_axes_mm) <= self.fat_mm or min(self.field_of_view_mm) <= 0:
            raise ValueError(
                f"need body_half_axes_mm > fat_mm and field_of_view_mm > 0, got "
                f"{self.body_half_axes_mm}, {self.fat_mm}, {self.field_of_view_mm}"
            )


@dataclass
class Phantom:
    """A generated phantom.

    ct: HU, float32, on an LPS-ordered grid (I to the left, J posterior, K superior).
    labels: uint8 VerSe labels (T1..T12 = 8..19, L1..L5 = 20..24) on the same grid; ribs are 0.
    centroids_ras: name -> (3,) RAS mm, mean of that label's voxel centres.
    vertebra_frames: name -> (4, 4) construction frame (body centre; x right, y anterior,
      z superior) -> RAS, after the vertebra's pose.
    config: what it was generated from.
    """

    ct: Volume
    labels: Volume
    centroids_ras: dict[str, np.ndarray]
    vertebra_frames: dict[str, np.ndarray]
    config: PhantomConfig


def generate_phantom(config: PhantomConfig | None = None) -> Phantom:
    """Build the phantom CT, labelmap, centroids and frames described by ``config``."""
    config = config or PhantomConfig()
    anatomy_rng, pose_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    dims = [vertebra_dims(name, config.anatomy_scale, config.dims_jitter, anatomy_rng) for name in config.vertebrae]
    cancellous_hu = config.cancellous_hu + anatomy_rng.uniform(-25.0, 25.0, len(dims))
    bones = [_vertebra_primitives(d) for d in dims]
    frames = _vertebra_frames(bones, dims, config, pose_rng)
    lattice = _volume_lattice(frames, bones, config)
    ct = _soft_tissue_ct(lattice, frames, dims, config)
    if config.surroundings:
        _add_surroundings(ct, lattice, frames, config, anatomy_rng)
    texture = _trabecular_texture(lattice.shape_kji, noise_rng) if config.trabecular_contrast > 0 else None
    labels = _add_bones(ct, lattice, frames, bones, dims, cancellous_hu, config, texture)
    if config.noise_hu > 0:
        ct += np.float32(config.noise_hu) * noise_rng.standard_normal(ct.shape, dtype=np.float32)
    ijk_to_ras = lattice.ijk_to_ras
    return Phantom(
        ct=Volume(ct, ijk_to_ras),
        labels=Volume(labels, ijk_to_ras.copy()),
        centroids_ras=_label_centroids(labels, {name: _VERSE[name] for name in config.vertebrae}, ijk_to_ras),
        vertebra_frames=dict(zip(config.vertebrae, frames)),
        config=config,
    )


def vertebra_dims(
    name: str, scale: float = 1.0, jitter: float = 0.0, rng: np.random.Generator | None = None
) -> VertebraDims:
    """Dimensions of vertebra ``name``: anchors interpolated by level; lengths (not angles)
    times ``scale * (1 + U(-jitter, jitter))``, one draw per length from ``rng``."""
    level = PHANTOM_VERTEBRAE.index(name)
    anchor_levels = [PHANTOM_VERTEBRAE.index(a) for a in _ANCHOR_LEVELS]
    values = {}
    for f in fields(VertebraDims):
        value = float(np.interp(level, anchor_levels, _ANCHORS[f.name]))
        if not (f.name.endswith("_deg") or f.name == "rib_fraction"):
            value *= scale * (1.0 + (rng.uniform(-jitter, jitter) if rng is not None else 0.0))
        values[f.name] = value
    return VertebraDims(**values)


def _soft_tissue_ct(
    lattice: _Lattice, frames: list[np.ndarray], dims: list[VertebraDims], config: PhantomConfig
) -> np.ndarray:
    """(K, J, I) float32 HU without bone: body outline, CSF in the canal, discs."""
    ct = np.empty(lattice.shape_kji, np.float32)
    ct[:] = _body_section_hu(lattice, config)
    for frame, d in zip(frames, dims):
        _paint_soft(ct, lattice, frame, [_canal(d)], CSF_HU)
    for k in range(len(frames) - 1):
        disc_frame, disc = _disc(frames[k], frames[k + 1], dims[k], dims[k + 1])
        _paint_soft(ct, lattice, disc_frame, [disc], DISC_HU)
    return ct


def _add_bones(
    ct: np.ndarray,
    lattice: _Lattice,
    frames: list[np.ndarray],
    bones: list[list],
    dims: list[VertebraDims],
    cancellous_hu: np.ndarray,
    config: PhantomConfig,
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """Blend vertebrae and ribs into ``ct`` (in place); returns the (K, J, I) uint8 labelmap.

    texture: (K, J, I) zero-mean trabecular pattern (about -1..1) that modulates cancellous bone.
    """
    bone_sdf = np.full(lattice.shape_kji, _FAR_MM, np.float32)
    labels = np.zeros(lattice.shape_kji, np.uint8)
    label_values = [_VERSE[name] for name in config.vertebrae]
    for label, frame, bone, d in zip(label_values, frames, bones, dims):
        _paint_bone(bone_sdf, labels, lattice, frame, bone, label)
        for side in (1.0, -1.0):
            _paint_bone(bone_sdf, labels, lattice, frame, _rib_primitives(d, side), 0)
    cancellous_hu_by_label = np.full(256, config.cancellous_hu, np.float32)
    cancellous_hu_by_label[label_values] = cancellous_hu
    _add_bone_hu(ct, bone_sdf, labels, cancellous_hu_by_label, config, texture)
    return labels


# --------------------------------------------------------------------------- primitives
#: Distance standing for "far from any bone" (mm).
_FAR_MM = 1.0e4
#: Blend radius of the smooth union between the parts of a vertebra (mm).
_BLEND_MM = 2.0


def _smooth_min(a: np.ndarray, b: np.ndarray, k_mm: float) -> np.ndarray:
    """Polynomial smooth minimum: equals min(a, b) where |a - b| >= k_mm, a fillet below."""
    h = np.maximum(k_mm - np.abs(a - b), 0.0) / k_mm
    return np.minimum(a, b) - h * h * (k_mm / 4.0)


def _ellipsoid_sdf(coords: tuple[np.ndarray, ...], radii: tuple, min_radius_mm: float) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid/ellipse centred at 0.

    ``d = k0 (k0 - 1) / k1`` with k0 = |p / r|, k1 = |p / r^2| (exact near the surface);
    the small epsilons make the centre give ``-min_radius_mm`` instead of 0/0.
    """
    k0 = np.sqrt(sum((c / r) ** 2 for c, r in zip(coords, radii)))
    k1 = np.sqrt(sum((c / (r * r)) ** 2 for c, r in zip(coords, radii)))
    return (k0 - 1.0) * (k0 + 1e-4) / (k1 + 1e-4 / min_radius_mm)


def _section_sdf(x: np.ndarray, y: np.ndarray, width: np.ndarray, depth: np.ndarray, round_mm: float) -> np.ndarray:
    """Body/disc cross-section (mm): an ellipse spanning y in [-depth/2, depth/2] at the
    front and cut flat at the back, y = -depth/2, the posterior wall (~60% of the width)."""
    ellipse = _ellipsoid_sdf((x, y + 0.05 * depth), (width / 2, 0.55 * depth), float(np.min(width)) / 4)
    return -_smooth_min(-ellipse, y + depth / 2, round_mm)


class _Body:
    """Vertebral body centred at 0: waisted (``waist`` of the radius at mid-height), cupped
    endplates (``cup_mm`` deep at the centre), edges rounded by ``round_mm``."""

    def __init__(
        self, width: float, depth: float, height: float, waist: float = 0.06, cup_mm: float = 1.0, round_mm: float = 2.0
    ):
        self.width, self.depth, self.height = width, depth, height
        self.waist, self.cup_mm, self.round_mm = waist, cup_mm, round_mm

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.array([self.width, self.depth, self.height]) / 2
        return -half, half

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        shrink = 1.0 - self.waist * (1.0 - np.minimum((2.0 * z / self.height) ** 2, 1.0))
        section = _section_sdf(x, y, self.width * shrink, self.depth * shrink, self.round_mm)
        radial2 = np.minimum((2.0 * x / self.width) ** 2 + (2.0 * y / self.depth) ** 2, 1.0)
        endplates = np.abs(z) - (self.height / 2 - self.cup_mm * (1.0 - radial2))
        return -_smooth_min(-section, -endplates, self.round_mm)


class _Rod:
    """Tapered rod with an elliptic cross-section and ellipsoidal end caps (mm).

    The axis runs from ``start`` to ``end``; the cross-section half-axes (ru, rv) go
    linearly from ``radii_start`` to ``radii_end``, v being the axis-orthogonal direction
    nearest ``v_hint`` and u = axis x v. The caps reach ``cap_mm`` beyond the ends.
    """

    def __init__(self, start, end, radii_start, radii_end, v_hint=(0.0, 0.0, 1.0), cap_mm: float | None = None):
        self.start, self.end = np.asarray(start, float), np.asarray(end, float)
        self.radii_start, self.radii_end = np.asarray(radii_start, float), np.asarray(radii_end, float)
        axis = self.end - self.start
        self.length = float(np.linalg.norm(axis))
        self.axis = axis / self.length
        v = np.asarray(v_hint, float) - np.dot(v_hint, self.axis) * self.axis
        self.v = v / np.linalg.norm(v)
        self.u = np.cross(self.axis, self.v)
        self.cap_mm = cap_mm if cap_mm is not None else float(np.min([self.radii_start, self.radii_end]))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = max(self.radii_start.max(), self.radii_end.max(), self.cap_mm)
        return np.minimum(self.start, self.end) - reach, np.maximum(self.start, self.end) + reach

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        px, py, pz = x - self.start[0], y - self.start[1], z - self.start[2]
        t = px * self.axis[0] + py * self.axis[1] + pz * self.axis[2]
        t_inside = np.clip(t, 0.0, self.length)
        frac = t_inside / self.length
        ru = self.radii_start[0] + (self.radii_end[0] - self.radii_start[0]) * frac
        rv = self.radii_start[1] + (self.radii_end[1] - self.radii_start[1]) * frac
        u = px * self.u[0] + py * self.u[1] + pz * self.u[2]
        v = px * self.v[0] + py * self.v[1] + pz * self.v[2]
        min_radius = float(min(self.radii_start.min(), self.radii_end.min(), self.cap_mm))
        return _ellipsoid_sdf((u, v, t - t_inside), (ru, rv, self.cap_mm), min_radius)


class _Disc:
    """Intervertebral disc in its own frame: the body cross-section (``width``, ``depth``)
    between half-spaces ``n . p + c <= 0`` (the neighbours' endplates), given as (4,) rows."""

    def __init__(self, width: float, depth: float, planes: np.ndarray):
        self.width, self.depth, self.planes = width, depth, planes

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        corners = np.array([(sx * self.width / 2, sy * self.depth / 2) for sx in (-1, 1) for sy in (-1, 1)])
        # z where each plane crosses each corner's vertical line; the disc lies between.
        z = -(self.planes[:, None, :2] @ corners.T[None])[:, 0] - self.planes[:, None, 3]
        z = z / self.planes[:, 2, None]
        half = np.array([self.width / 2, self.depth / 2])
        return np.append(-half, z.min()), np.append(half, z.max())

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        sdf = _section_sdf(x, y, self.width, self.depth, 2.0)
        for nx, ny, nz, c in self.planes:
            sdf = np.maximum(sdf, nx * x + ny * y + nz * z + c)
        return sdf


# --------------------------------------------------------------------------- anatomy
def _vertebra_primitives(d: VertebraDims) -> list:
    """The parts of one vertebra in its construction frame (see the module docstring)."""
    half_h = d.body_height / 2
    y_wall = -d.body_depth / 2  # posterior wall of the body
    y_arch = y_wall - 0.55 * d.canal_depth  # posterior end of the pedicles
    y_roof = y_wall - d.canal_depth - d.lamina_thickness / 2  # lamina axis at the midline
    x_ped = (d.canal_width + d.pedicle_width) / 2  # pedicle axis at its posterior end
    z_ped = half_h - d.pedicle_height / 2 - 1.5  # pedicles leave the upper part of the body
    z_lam = z_ped - 0.3 * d.pedicle_height
    ped_len = (y_wall + 6.0) - y_arch
    x_ped_front = x_ped - ped_len * np.tan(np.radians(d.pedicle_convergence_deg))
    ped_radii = (d.pedicle_width / 2, d.pedicle_height / 2)
    tp_reach = d.tp_span / 2 - x_ped
    tp_back = np.radians(d.tp_back_deg)
    sp_incline = np.radians(d.sp_incline_deg)
    lamina_radii = (d.lamina_thickness / 2, 0.4 * d.body_height)
    sp_start = np.array([0.0, y_roof, z_lam - 3.0])
    sp_end = sp_start + d.sp_length * np.array([0.0, -np.cos(sp_incline), -np.sin(sp_incline)])
    parts: list = [_Body(d.body_width, d.body_depth, d.body_height)]
    for s in (1.0, -1.0):
        tp_start = np.array([s * x_ped, y_arch - 2.0, z_ped - 1.0])
        tp_tip = tp_start + tp_reach * np.array([s * np.cos(tp_back), -np.sin(tp_back), 0.3 * np.sin(tp_back)])
        parts += [
            # pedicle: from 6 mm inside the body back to the arch, converging anteriorly
            _Rod((s * x_ped_front, y_wall + 6.0, z_ped), (s * x_ped, y_arch, z_ped), ped_radii, ped_radii),
            # lamina: from the pedicle back and medially to the midline, dropping 3 mm
            _Rod((s * x_ped, y_arch - 1.0, z_lam), (0.0, y_roof, z_lam - 3.0), lamina_radii, lamina_radii),
            # transverse process, flattened (thickness along y, height along z) and tapering
            _Rod(tp_start, tp_tip, (d.tp_thickness / 2, d.tp_height / 2), (0.45 * d.tp_thickness, 0.45 * d.tp_height)),
            _Rod(  # superior articular process, lateral
                (s * (x_ped + 1.0), y_arch - 1.0, z_ped + 2.0),
                (s * (x_ped + 2.0), y_arch - 3.0, half_h + 0.6 * d.disc_height),
                (3.2, 5.5), (3.0, 5.0), v_hint=(0.0, 1.0, 0.0), cap_mm=3.0,
            ),
            _Rod(  # inferior articular process, medial
                (s * (x_ped - 7.0), y_arch - 5.0, z_lam - 0.2 * d.body_height),
                (s * (x_ped - 7.5), y_arch - 7.0, -half_h - 0.6 * d.disc_height),
                (3.0, 5.0), (2.8, 4.5), v_hint=(0.0, 1.0, 0.0), cap_mm=3.0,
            ),
        ]
    sp_radii_start = (0.4 * d.sp_thickness, 0.35 * d.body_height)  # base as tall as the laminae
    parts.append(_Rod(sp_start, sp_end, sp_radii_start, (d.sp_thickness / 2, d.sp_height / 2), cap_mm=4.0))
    return parts


def _canal(d: VertebraDims) -> _Rod:
    """CSF column through the canal of one vertebra, reaching into the discs around it."""
    y_mid = -d.body_depth / 2 - d.canal_depth / 2
    reach = d.body_height / 2 + d.disc_height
    radii = (d.canal_width / 2 - 1.5, d.canal_depth / 2 - 1.5)
    return _Rod((0.0, y_mid, reach), (0.0, y_mid, -reach), radii, radii, v_hint=(0.0, 1.0, 0.0), cap_mm=1.0)


#: Rib centreline for a 38 x 30 mm (T10) body, right side (x > 0), construction frame mm:
#: head at the body, neck to the transverse process, angle, then around the flank.
_RIB_PATH_MM = np.array(
    [
        (17.0, -10.0, 6.0),
        (30.0, -30.0, 4.0),
        (52.0, -40.0, -4.0),
        (82.0, -28.0, -20.0),
        (104.0, 2.0, -38.0),
        (110.0, 40.0, -55.0),
        (102.0, 72.0, -66.0),
    ]
)


def _rib_primitives(d: VertebraDims, side: float) -> list:
    """Rods along the first ``rib_fraction`` of the rib path, on the right (side=+1) or left (-1).

    The rib is flat: half-thickness 2.8 -> 2.2 mm, half-height 6 -> 4.5 mm along its length.
    """
    if d.rib_fraction <= 0:
        return []
    path = _RIB_PATH_MM * np.array([side * d.body_width / 38.0, d.body_depth / 30.0, d.body_height / 21.5])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    keep = d.rib_fraction * arc[-1]
    n_full = int(np.searchsorted(arc, keep))
    points = np.vstack([path[:n_full], [np.interp(keep, arc, path[:, a]) for a in range(3)]])
    along = np.append(arc[:n_full], keep) / arc[-1]
    radii = np.stack([2.8 - 0.6 * along, 6.0 - 1.5 * along], axis=1)
    return [_Rod(points[i], points[i + 1], radii[i], radii[i + 1], cap_mm=3.0) for i in range(len(points) - 1)]


def _disc(
    frame_up: np.ndarray, frame_low: np.ndarray, d_up: VertebraDims, d_low: VertebraDims
) -> tuple[np.ndarray, _Disc]:
    """The disc between two (posed) vertebrae: its frame -> RAS and its shape.

    Frame: mean rotation of the two, origin midway between the body centres. The disc
    fills the space between the endplates, reaching ``overlap`` mm into the bodies (whose
    bone wins there), so tilted or shifted vertebrae still leave no gap.
    """
    overlap_mm = 1.5
    u, _, vt = np.linalg.svd(frame_up[:3, :3] + frame_low[:3, :3])
    frame = np.eye(4)
    frame[:3, :3] = u @ vt
    frame[:3, 3] = (frame_up[:3, 3] + frame_low[:3, 3]) / 2
    z_up = (np.linalg.inv(frame_up) @ frame)[2]  # z_up(p) = z_up[:3] . p + z_up[3]
    z_low = (np.linalg.inv(frame_low) @ frame)[2]
    planes = np.array([
        z_up + [0.0, 0.0, 0.0, d_up.body_height / 2 - overlap_mm],  # below the upper body
        -z_low + [0.0, 0.0, 0.0, d_low.body_height / 2 - overlap_mm],  # above the lower body
    ])
    width = (d_up.body_width + d_low.body_width) / 2 + 1.0
    depth = (d_up.body_depth + d_low.body_depth) / 2 + 1.0
    return frame, _Disc(width, depth, planes)


# --------------------------------------------------------------------------- spine curve
def _segment_lordosis_deg(upper: str, config: PhantomConfig) -> float:
    """Sagittal angle (deg) from vertebra ``upper`` to the next: lordotic (+) in the lumbar
    spine, kyphotic (-) in the thoracic spine (T12-L1 included)."""
    if upper in _LORDOSIS_SHARES:
        return config.lordosis_deg * _LORDOSIS_SHARES[upper]
    return -config.kyphosis_deg / _KYPHOSIS_SEGMENTS


def _tangent(coronal_deg: np.ndarray, sagittal_deg: np.ndarray) -> np.ndarray:
    """(N, 3) superior direction of a frame tilted by Ry(coronal) Rx(-sagittal), i.e. its z axis:
    sagittal > 0 leans it anteriorly (+y), coronal > 0 to the right (+x)."""
    a, b = np.radians(coronal_deg), np.radians(sagittal_deg)
    return np.stack([np.sin(a) * np.cos(b), np.sin(b), np.cos(a) * np.cos(b)], axis=-1)


def _curve_frames(
    names: tuple[str, ...], dims: list[VertebraDims], centroids_local: list[np.ndarray], config: PhantomConfig
) -> list[np.ndarray]:
    """Construction frames (4x4 -> RAS) of the vertebrae on the spine curve, before their poses.

    Body centres are spaced by half body heights plus the disc along the curve, whose
    angles vary linearly between them; the curve is then turned so that the line through
    the end vertebrae is vertical and shifted so that the mean vertebra centroid is at 0.
    """
    n = len(names)
    gaps = np.array([dims[k].body_height / 2 + dims[k].disc_height + dims[k + 1].body_height / 2 for k in range(n - 1)])
    arc = np.concatenate([[0.0], np.cumsum(gaps)])
    sagittal = np.concatenate([[0.0], np.cumsum([_segment_lordosis_deg(name, config) for name in names[:-1]])])
    coronal = config.scoliosis_deg * (arc / arc[-1] - 0.5) if n > 1 else np.zeros(1)
    steps = np.linspace(0.0, 1.0, 17)
    centres = [np.zeros(3)]
    for k, gap in enumerate(gaps):  # walk down the curve: trapezoid rule on the tangent
        tangents = _tangent(np.interp(steps, [0, 1], coronal[k : k + 2]), np.interp(steps, [0, 1], sagittal[k : k + 2]))
        centres.append(centres[-1] - np.trapezoid(tangents, dx=gap / (len(steps) - 1), axis=0))
    align = _rotation_between(centres[-1] - centres[0], np.array([0.0, 0.0, -1.0])) if n > 1 else np.eye(3)
    frames = []
    for centre, a, b in zip(centres, coronal, sagittal):
        frame = np.eye(4)
        frame[:3, :3] = align @ euler_zyx_to_rotation(np.array([-b, a, 0.0]))  # Ry(a) Rx(-b)
        frame[:3, 3] = align @ centre
        frames.append(frame)
    spine_centre = np.mean([frame[:3, :3] @ c + frame[:3, 3] for frame, c in zip(frames, centroids_local)], axis=0)
    for frame in frames:
        frame[:3, 3] -= spine_centre
    return frames


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest 3x3 rotation taking the direction of ``a`` to that of ``b`` (not opposite)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v = np.cross(a, b)
    skew = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + np.dot(a, b))


def _vertebra_frames(
    bones: list[list], dims: list[VertebraDims], config: PhantomConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Construction frames (4x4 -> RAS): on the curve, then moved by each vertebra's pose
    about its centroid (that of its shape, sampled in the construction frame)."""
    centroids = [_local_centroid(bone) for bone in bones]
    frames = _curve_frames(config.vertebrae, dims, centroids, config)
    return [
        params_to_matrix(_pose_params(name, config, rng), frame[:3, :3] @ centroid + frame[:3, 3]) @ frame
        for name, frame, centroid in zip(config.vertebrae, frames, centroids)
    ]


def _pose_params(name: str, config: PhantomConfig, rng: np.random.Generator) -> np.ndarray:
    """(rx, ry, rz deg, tx, ty, tz mm) of one vertebra: its configured pose plus the random one."""
    random = rng.uniform(-1.0, 1.0, 6) * np.repeat([config.random_pose_deg, config.random_pose_mm], 3)
    return np.asarray(config.vertebra_poses.get(name, np.zeros(6)), float) + random


# --------------------------------------------------------------------------- voxelisation
@dataclass(frozen=True)
class _Lattice:
    """Axis-aligned voxel grid: voxel (i, j, k) sits at ``origin + step * (i, j, k)`` (mm,
    ``step`` signed) in the lattice's frame (RAS for the volume)."""

    origin: np.ndarray
    step: np.ndarray
    shape_ijk: tuple[int, int, int]

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return self.shape_ijk[::-1]

    @property
    def ijk_to_ras(self) -> np.ndarray:
        matrix = np.diag(np.append(self.step, 1.0))
        matrix[:3, 3] = self.origin
        return matrix

    def box(self, lo: np.ndarray, hi: np.ndarray, frame: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Array slices (k, j, i) of the voxels around the local box [lo, hi] placed by
        ``frame`` (local -> lattice frame); None if it misses the grid."""
        index = (box_corners(lo, hi) @ frame[:3, :3].T + frame[:3, 3] - self.origin) / self.step
        first = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
        stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, self.shape_ijk)
        if np.any(stop <= first):
            return None
        return slice(first[2], stop[2]), slice(first[1], stop[1]), slice(first[0], stop[0])

    def local_coords(self, box: tuple[slice, slice, slice], frame: np.ndarray) -> tuple[np.ndarray, ...]:
        """(x, y, z) local coordinates (mm, float32, each shaped like the box) of the voxels in ``box``."""
        axes = [
            (self.origin[a] + self.step[a] * np.arange(s.start, s.stop)).astype(np.float32)
            for a, s in enumerate(box[::-1])
        ]
        x, y, z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
        to_local = np.linalg.inv(frame).astype(np.float32)
        return tuple(r[0] * x + r[1] * y + (r[2] * z + r[3]) for r in to_local[:3])


def _union_sdf(primitives: list, lattice: _Lattice, frame: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Smooth union of ``primitives`` (placed by ``frame``) on the voxels near them.

    Each primitive is evaluated only in its own bounding box, grown by a margin beyond
    which it cannot change the union where it matters (below half a voxel). Returns the
    box (k, j, i slices) and the signed distances in it (mm, float32), or None.
    """
    margin = 2 * _BLEND_MM + float(np.max(np.abs(lattice.step)))
    placed = [(p, lattice.box(lo - margin, hi + margin, frame)) for p in primitives for lo, hi in [p.bounds()]]
    placed = [(p, box) for p, box in placed if box is not None]
    if not placed:
        return None
    union = tuple(slice(min(b[a].start for _, b in placed), max(b[a].stop for _, b in placed)) for a in range(3))
    sdf = np.full(tuple(s.stop - s.start for s in union), _FAR_MM, np.float32)
    for primitive, box in placed:
        inner = tuple(slice(s.start - u.start, s.stop - u.start) for s, u in zip(box, union))
        sdf[inner] = _smooth_min(sdf[inner], primitive.sdf(*lattice.local_coords(box, frame)), _BLEND_MM)
    return union, sdf


def _local_centroid(primitives: list, step_mm: float = 2.0) -> np.ndarray:
    """(3,) centroid (mm, construction frame) of the union of ``primitives``, sampled every ``step_mm``."""
    lo = np.min([p.bounds()[0] for p in primitives], axis=0)
    hi = np.max([p.bounds()[1] for p in primitives], axis=0)
    lattice = _Lattice(lo, np.full(3, step_mm), tuple(int(n) for n in np.ceil((hi - lo) / step_mm) + 1))
    box, sdf = _union_sdf(primitives, lattice, np.eye(4))
    k, j, i = np.nonzero(sdf < 0)
    first = np.array([box[2].start, box[1].start, box[0].start])
    return lattice.origin + step_mm * (np.stack([i, j, k], axis=1).mean(axis=0) + first)


def _volume_lattice(frames: list[np.ndarray], bones: list[list], config: PhantomConfig) -> _Lattice:
    """The CT grid: LPS-ordered, ``field_of_view_mm`` centred on RAS x = y = 0, vertebrae plus
    ``margin_mm`` cranio-caudally; voxel centres on multiples of the spacing."""
    s = config.spacing_mm
    z_all = []
    for frame, bone in zip(frames, bones):
        for p in bone:
            z_all.append(box_corners(*p.bounds()) @ frame[2, :3] + frame[2, 3])
    z_lo, z_hi = np.min(z_all) - config.margin_mm, np.max(z_all) + config.margin_mm
    n_i, n_j = (int(np.ceil(fov / s)) for fov in config.field_of_view_mm)
    k_first = int(np.floor(z_lo / s))
    n_k = int(np.ceil(z_hi / s)) - k_first + 1
    origin = s * np.array([round((n_i - 1) / 2), round((n_j - 1) / 2), k_first], float)
    return _Lattice(origin, np.array([-s, -s, s]), (n_i, n_j, n_k))


def _body_section_hu(lattice: _Lattice, config: PhantomConfig) -> np.ndarray:
    """(J, I) HU of one axial slice: muscle inside a fat layer inside an ellipse, air outside."""
    x = lattice.origin[0] + lattice.step[0] * np.arange(lattice.shape_ijk[0])
    y = lattice.origin[1] + lattice.step[1] * np.arange(lattice.shape_ijk[1]) - config.body_center_anterior_mm
    half_x, half_y = config.body_half_axes_mm

    def inside(shrink_mm: float) -> np.ndarray:
        return (x[None, :] / (half_x - shrink_mm)) ** 2 + (y[:, None] / (half_y - shrink_mm)) ** 2 <= 1.0

    return np.where(inside(config.fat_mm), MUSCLE_HU, np.where(inside(0.0), FAT_HU, AIR_HU)).astype(np.float32)


def _paint_soft(ct: np.ndarray, lattice: _Lattice, frame: np.ndarray, primitives: list, hu: float) -> None:
    """Set ``ct`` to ``hu`` inside the union of ``primitives`` (placed by ``frame``)."""
    result = _union_sdf(primitives, lattice, frame)
    if result is not None:
        box, sdf = result
        ct[box][sdf < 0] = hu


def _paint_bone(
    bone_sdf: np.ndarray, labels: np.ndarray, lattice: _Lattice, frame: np.ndarray, primitives: list, label: int
) -> None:
    """Merge one bone into the running bone distance (min) and label the voxels where it is
    the nearest bone and inside (so touching bones split their contact by distance)."""
    result = _union_sdf(primitives, lattice, frame)
    if result is None:
        return
    box, sdf = result
    current = bone_sdf[box]
    nearest = sdf < current
    current[nearest] = sdf[nearest]
    labels[box][nearest & (sdf < 0)] = label


def _add_bone_hu(
    ct: np.ndarray, bone_sdf: np.ndarray, labels: np.ndarray, cancellous_hu_by_label: np.ndarray, config: PhantomConfig,
    texture: np.ndarray | None = None,
) -> None:
    """Blend bone into ``ct``: a voxel takes the mean of the profile tissue | cortex
    (``cortical_mm`` deep) | cancellous bone over its width across the surface (partial
    volume, so coarse grids keep the bone's mass)."""
    s = config.spacing_mm
    where = np.nonzero(bone_sdf < s / 2)
    depth = bone_sdf[where]
    bone = np.clip(0.5 - depth / s, 0.0, 1.0)  # share of the voxel inside the bone
    core = np.clip(0.5 - (depth + config.cortical_mm) / s, 0.0, 1.0)  # share inside the cortex
    cancellous = cancellous_hu_by_label[labels[where]]
    if texture is not None:
        cancellous = cancellous * (1.0 + config.trabecular_contrast * texture[where])
    hu = (1.0 - bone) * ct[where] + (bone - core) * config.cortical_hu + core * cancellous
    ct[where] = hu


# --------------------------------------------------------------------------- surroundings
LUNG_HU = -820.0
GAS_HU = -900.0
BLOOD_HU = 45.0
LIVER_HU = 60.0
FLAT_BONE_HU = 700.0
TABLE_HU = 300.0
TABLE_FOAM_HU = -950.0
#: Typical cranio-caudal distance between vertebral centres (mm), to place organs relative to
#: levels the phantom does not contain.
_LEVEL_STEP_MM = 26.0


def _level_z(frames: list[np.ndarray], config: PhantomConfig):
    """z (RAS mm) of any level name, from the phantom's vertebrae (extrapolated past them)."""
    index = np.array([PHANTOM_VERTEBRAE.index(name) for name in config.vertebrae], float)
    z = np.array([frame[2, 3] for frame in frames])
    slope = float(np.polyfit(index, z, 1)[0]) if len(z) > 1 else -_LEVEL_STEP_MM

    def at(name: str) -> float:
        level = PHANTOM_VERTEBRAE.index(name)
        if index[0] <= level <= index[-1]:
            return float(np.interp(level, index, z))
        end = 0 if level < index[0] else -1
        return float(z[end] + slope * (level - index[end]))

    return at


def _add_surroundings(ct: np.ndarray, lattice: _Lattice, frames: list[np.ndarray], config: PhantomConfig,
                      rng: np.random.Generator) -> None:
    """Paint, in place and before the bones, what overlaps the spine on a radiograph.

    Placed in RAS mm relative to the vertebral levels (x right, y anterior; the spine at
    x = y = 0): the lungs fill the rib cage above the diaphragm domes (the right one higher,
    over the liver) outside the mediastinum; the heart sits on the left dome, the aorta runs
    left of the spine; stomach gas under the left dome, bowel gas bubbles in the abdomen;
    the sternum in front, the scapulae behind the upper ribs, the clavicles at T1; the table
    under the back. Ellipses and boxes, not anatomy: they give the X-ray the overlapping
    edges and the air/soft-tissue contrast a patient's has.
    """
    z_of = _level_z(frames, config)
    y, x = np.meshgrid(lattice.origin[1] + lattice.step[1] * np.arange(lattice.shape_ijk[1]),
                       lattice.origin[0] + lattice.step[0] * np.arange(lattice.shape_ijk[0]), indexing="ij")
    zs = lattice.origin[2] + lattice.step[2] * np.arange(lattice.shape_ijk[2])
    half_x, half_y = config.body_half_axes_mm
    yc = config.body_center_anterior_mm
    wall = config.fat_mm + 12.0
    cavity = (x / (half_x - wall)) ** 2 + ((y - yc) / (half_y - wall)) ** 2 <= 1.0
    mediastinum = (np.abs(x + 10.0) < 38.0) & (y > -25.0)
    spine = x**2 + (y + 5.0) ** 2 < 42.0**2
    dome = z_of("T10") + 10.0
    dome_right = dome + 15.0 - 0.004 * ((x - 60.0) ** 2 + (y - yc) ** 2)
    dome_left = dome - 0.004 * ((x + 60.0) ** 2 + (y - yc) ** 2)
    diaphragm = np.where(x > 0, dome_right, dome_left)
    apex = z_of("T1") + 25.0
    front = yc + half_y - config.fat_mm
    back = yc - half_y
    bubbles = [(rng.uniform(-90, 90), rng.uniform(0, 80), z_of("L2") + rng.uniform(-60, 60), rng.uniform(10, 25))
               for _ in range(8)]
    for k, z in enumerate(zs):
        section = ct[k]
        inside_body = section > AIR_HU + 1
        thorax = inside_body & cavity & (z > diaphragm) & (z < apex)
        section[thorax & ~mediastinum & ~spine] = LUNG_HU
        # Heart on the left dome, aorta left of the spine (blood: visible against the lungs).
        heart = ((x + 25.0) / 60.0) ** 2 + ((y - 60.0) / 45.0) ** 2 + ((z - dome - 45.0) / 50.0) ** 2 <= 1.0
        aorta = ((x + 22.0) ** 2 + (y - 20.0) ** 2 <= 13.0**2) & (z < apex - 20.0)
        section[inside_body & (heart | aorta) & (z > diaphragm - 5.0)] = BLOOD_HU
        # Under the domes: the liver on the right, the stomach's gas on the left.
        liver = ((x - 55.0) / 95.0) ** 2 + ((y - yc) / 85.0) ** 2 + ((z - dome + 55.0) / 75.0) ** 2 <= 1.0
        section[inside_body & cavity & liver & (z <= dome_right) & ~spine] = LIVER_HU
        stomach = ((x + 65.0) / 40.0) ** 2 + ((y - 45.0) / 30.0) ** 2 + ((z - dome + 25.0) / 22.0) ** 2 <= 1.0
        section[inside_body & stomach & (z <= dome_left)] = GAS_HU
        for bx, by, bz, radius in bubbles:
            if abs(z - bz) < radius:
                r2 = radius**2 - (z - bz) ** 2
                section[inside_body & ~spine & ((x - bx) ** 2 + (y - by) ** 2 <= r2)] = GAS_HU
        # Flat bones: sternum (T3-T9), scapulae (T2-T7), clavicles (at T1).
        if z_of("T9") <= z <= z_of("T3"):
            section[(np.abs(x) < 14.0) & (y > front - 26.0) & (y < front - 13.0)] = FLAT_BONE_HU
        if z_of("T7") <= z <= z_of("T2"):
            section[(np.abs(x) > 55.0) & (np.abs(x) < 125.0) & (np.abs(y - (back + 22.0 + 0.12 * (np.abs(x) - 55.0))) < 4.0)
                    & inside_body] = FLAT_BONE_HU
        if abs(z - z_of("T1") - 5.0) < 8.0:
            section[(np.abs(x) > 12.0) & (np.abs(x) < 140.0) & (np.abs(y - front + 20.0) < 8.0)] = FLAT_BONE_HU
        # The table under the patient's back: two carbon skins around a foam core.
        section[(y < back - 3.0) & (y >= back - 6.0)] = TABLE_HU
        section[(y < back - 6.0) & (y >= back - 15.0)] = TABLE_FOAM_HU
        section[(y < back - 15.0) & (y >= back - 18.0)] = TABLE_HU


def _trabecular_texture(shape_kji: tuple[int, int, int], rng: np.random.Generator, passes: int = 2) -> np.ndarray:
    """(K, J, I) float32 zero-mean pattern of ~2-voxel blobs, scaled to about [-1, 1].

    White noise smoothed by box filters of 3 voxels along each axis (twice: close to a
    Gaussian); written with cumulative sums rather than scipy.ndimage, which the core
    dependencies do not include.
    """
    noise = rng.standard_normal(shape_kji, dtype=np.float32)
    for _ in range(passes):
        for axis in range(3):
            padded = np.concatenate([noise.take([0], axis), noise, noise.take([-1], axis)], axis)
            total = np.cumsum(padded, axis=axis, dtype=np.float32)
            n = noise.shape[axis]
            upper = total.take(np.arange(2, n + 2), axis)
            lower = np.concatenate([np.zeros_like(total.take([0], axis)), total.take(np.arange(0, n - 1), axis)], axis)
            noise = (upper - lower) / 3.0
    return (noise / (3.0 * noise.std() + 1e-12)).astype(np.float32)


def _label_centroids(labels: np.ndarray, label_of: dict[str, int], ijk_to_ras: np.ndarray) -> dict[str, np.ndarray]:
    """name -> (3,) RAS mm mean of the voxel centres of its label."""
    k, j, i = np.nonzero(labels)
    values = labels[k, j, i]
    counts = np.bincount(values, minlength=256)
    sums = np.stack([np.bincount(values, weights=c, minlength=256) for c in (i, j, k)], axis=1)
    centroids = {}
    for name, label in label_of.items():
        if counts[label] == 0:
            raise ValueError(
                f"vertebra {name} lies outside the field of view; enlarge field_of_view_mm or reduce its pose"
            )
        centroids[name] = sums[label] / counts[label] @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    return centroids


def varied_phantom_config(seed: int, count: int = 8) -> PhantomConfig:
    """A phantom of random anatomy for training: ``count`` consecutive vertebrae (T1..L5),
    size, curvature, bone density, body shape and vertebra poses drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0x5917E])
    first = int(rng.integers(0, len(PHANTOM_VERTEBRAE) - count + 1))
    return PhantomConfig(
        seed=seed,
        vertebrae=PHANTOM_VERTEBRAE[first : first + count],
        anatomy_scale=float(rng.uniform(0.85, 1.15)),
        dims_jitter=0.08,
        lordosis_deg=float(rng.uniform(15.0, 55.0)),
        kyphosis_deg=float(rng.uniform(0.0, 30.0)),
        scoliosis_deg=float(rng.uniform(-15.0, 15.0)),
        random_pose_deg=3.0,
        random_pose_mm=1.5,
        body_half_axes_mm=(float(rng.uniform(120.0, 180.0)), float(rng.uniform(90.0, 130.0))),
        fat_mm=float(rng.uniform(5.0, 30.0)),
        cortical_hu=float(rng.uniform(900.0, 1400.0)),
        cancellous_hu=float(rng.uniform(150.0, 350.0)),
    )
