"""The spine-wide deformation from per-vertebra rigid poses: poly-rigid log-Euclidean blending.

Each vertebra k has a pose M_k (CT RAS -> world, as ``spinereg register`` writes it). The
field maps a world point y back to the CT (:mod:`.field`'s direction) by blending the
inverse poses in se(3), as PolyPose (Gopalakrishnan et al. 2025) and Arsigny's poly-rigid
transforms do::

    x = exp( sum_k w_k(y) log(M_k^-1) ) y          (about a fixed origin o, see below)

- Weights come from distance fields to the *moved* vertebrae, each taken as the grid nodes
  at the corners of the cells that hold its CT voxel centres moved by M_k (the nodes
  trilinear interpolation reads for them): inside vertebra k's rigid zone (those nodes, grown
  by ``rigid_margin_mm`` but by at most ``gap_share`` of the distance to the nearest other
  vertebra) w is one-hot, so the field is exactly M_k^-1 there and at every voxel of k whose
  cell no other vertebra's voxel shares (a node both claim goes to the one with the nearer
  voxel); outside every zone w_k is proportional to 1 / (D_k - margin)^power (Shepard's inverse
  distance weights), which tend to one-hot at a zone's surface, so the field is continuous and
  smooth between vertebrae, and turns from one pose to the next across the whole remaining gap.
- Vertebrae of the segmentation without a pose follow their registered neighbours: their
  twist is interpolated along the spine (linearly in the level index) between the nearest
  registered vertebra above and below, or copied from the one registered end.
- Logs are taken about the origin o (the mean of the moved vertebra centroids, world RAS)
  rather than the world origin: the blend of two rotations is then a rotation about a point
  near the spine, not about a far-away scanner origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dataclass_field

import numpy as np
import SimpleITK as sitk
import torch
from scipy.spatial import cKDTree

from ..core.frames import apply_matrix
from ..core.labelmap import Labelmap, centroids_ras, label_boxes
from ..core.pose import se3_exp, se3_log
from ..core.volume import Volume, box_corners
from ..errors import InputError
from ..io.images import volume_to_image
from ..core.displacement import DisplacementField, unfold

_CHUNK_NODES = 1 << 20  # grid nodes exponentiated at a time (float64 twists: ~50 MB)


@dataclass(frozen=True)
class PolyRigidConfig:
    """spacing_mm: grid spacing of the field (world RAS mm; the field covers the CT's extent).
    power: exponent of the inverse-distance weights (1: the gentlest turn between neighbours;
    on the phantom with +-3 deg/+-2 mm independent vertebra motions, 2 mm grid, power 1 did
    not fold where 1.5 and 2 did). rigid_margin_mm: how far beyond the nodes of each moved
    vertebra's cells (those trilinear interpolation reads for its voxels) the field stays exactly
    rigid (default: a grid cell's diagonal, spacing * sqrt 3, which also covers the node beyond
    each cell that Slicer's cubic interpolation of a grid transform reads). gap_share: the
    margin never takes more than this share of the distance to the next vertebra, so that a
    narrow disc or facet gap keeps room for the turn from one pose to the next (without it the
    field folds there). unfold: where the blend still folds (a gap between two vertebrae a node or
    two wide, as at 1 mm where they nearly touch), smooth it outside the rigid zones until no
    node's Jacobian determinant is <= 0.05, and where that cannot be (the fold lies between two
    zones), let the zones' nodes within two of the other zone bend too
    (:func:`..core.displacement.unfold`)."""

    spacing_mm: float = 2.0
    power: float = 1.0
    rigid_margin_mm: float | None = None
    gap_share: float = 1.0 / 3.0
    unfold: bool = True

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0 or not self.power > 0 or not 0 <= self.gap_share < 1:
            raise InputError("poly-rigid field: spacing and power must be positive, the gap share in [0, 1)")
        if self.rigid_margin_mm is not None and self.rigid_margin_mm < 0:
            raise InputError("poly-rigid field: the rigid margin cannot be negative")

    @property
    def margin_mm(self) -> float:
        """The rigid zone's margin beyond each moved vertebra, mm (before the gap share)."""
        return self.spacing_mm * math.sqrt(3.0) if self.rigid_margin_mm is None else self.rigid_margin_mm


@dataclass
class PolyRigidField:
    """field: the deformation (world -> CT). poses: vertebra -> (4, 4) matrix_ras used, registered
    and inferred ones; inferred: the vertebrae that followed their neighbours, cranial -> caudal;
    unfolded_nodes: grid nodes smoothed to remove folds (:attr:`PolyRigidConfig.unfold`)."""

    field: DisplacementField
    poses: dict[str, np.ndarray]
    inferred: list[str] = dataclass_field(default_factory=list)
    unfolded_nodes: int = 0


def complete_poses(order: list[str], registered: dict[str, np.ndarray], origin: np.ndarray) -> dict[str, np.ndarray]:
    """Every vertebra of ``order`` (cranial -> caudal) -> matrix_ras; the unregistered ones
    interpolated in se(3) about ``origin`` (world RAS mm) between registered neighbours."""
    known = [i for i, name in enumerate(order) if name in registered]
    if not known:
        raise InputError("no registered vertebra to build the deformation from")
    twists = {i: _twist(registered[order[i]], origin) for i in known}
    poses = {}
    for index, name in enumerate(order):
        if name in registered:
            poses[name] = np.asarray(registered[name], dtype=np.float64)
            continue
        above = max((i for i in known if i < index), default=None)
        below = min((i for i in known if i > index), default=None)
        if above is None or below is None:
            twist = twists[above if below is None else below]
        else:
            t = (index - above) / (below - above)
            twist = (1.0 - t) * twists[above] + t * twists[below]
        poses[name] = _pose_of_twist(twist, origin)
    return poses


def polyrigid_field(labelmap: Labelmap, registered: dict[str, np.ndarray],
                    config: PolyRigidConfig | None = None) -> PolyRigidField:
    """The field that moves every vertebra of ``labelmap`` rigidly by its pose, smoothly between.

    registered: vertebra name -> (4, 4) matrix_ras (CT RAS -> world) of the registered
    vertebrae; the others follow them (:func:`complete_poses`). InputError for a name the
    labelmap does not hold or nothing registered.
    """
    config = config or PolyRigidConfig()
    order = list(labelmap.labels)
    unknown = [name for name in registered if name not in labelmap.labels]
    if unknown:
        raise InputError(f"vertebra {', '.join(unknown)} is not in the segmentation; present: {', '.join(order)}")
    if not registered:
        raise InputError("no registered vertebra to build the deformation from")
    centres = centroids_ras(labelmap)
    origin = np.mean([apply_matrix(registered[name], centres[name]) for name in registered], axis=0)
    poses = complete_poses(order, registered, origin)

    boxes = label_boxes(labelmap)
    grid = _field_grid(labelmap, poses, config.spacing_mm, boxes)
    reference = volume_to_image(grid)
    n_nodes = grid.array.size
    inverse_twists = np.stack([_twist(np.linalg.inv(poses[name]), origin) for name in order])

    moved = [_moved_voxels(labelmap, labelmap.labels[name], poses[name], grid, boxes[labelmap.labels[name]])
             for name in order]

    def distance(k: int) -> np.ndarray:  # (nodes,) float32 mm to vertebra k moved
        return _distance_to_cells(moved[k], reference).ravel()

    # One vertebra's distance map at a time (a (vertebrae, nodes) stack took ~260 bytes a node,
    # 10 GB at 1.25 mm on the real CT), so the distances are computed twice: first each node's
    # nearest and second-nearest vertebra distance and its owner (the first nearest, as argmin)...
    nearest = np.full(n_nodes, np.inf, dtype=np.float32)
    second = np.full(n_nodes, np.inf, dtype=np.float32)
    owner = np.zeros(n_nodes, dtype=np.int16)
    for k in range(len(order)):
        d = distance(k)
        closer = d < nearest
        second = np.where(closer, nearest, np.minimum(second, d))
        nearest = np.where(closer, d, nearest)
        owner[closer] = k
    _share_contested_nodes(owner, np.flatnonzero(second == 0), moved, grid.array.shape)
    # ... then the weights: a vertebra's margin is capped by its distance to the nearest *other*
    # vertebra, the second nearest where it is the owner.
    owner_margin = np.minimum(np.float32(config.margin_mm), np.float32(config.gap_share) * second)
    other_margin = np.minimum(np.float32(config.margin_mm), np.float32(config.gap_share) * nearest)
    zoned = nearest <= owner_margin
    del second, nearest
    twist_sum = np.zeros((n_nodes, 6), dtype=np.float32)
    weight_sum = np.zeros(n_nodes, dtype=np.float64)
    for k in range(len(order)):
        margin = np.where(owner == k, owner_margin, other_margin)
        weight = np.maximum(distance(k) - margin, np.float32(1e-3)) ** -np.float32(config.power)
        twist_sum += weight[:, None] * inverse_twists[k].astype(np.float32)
        weight_sum += weight
    del owner_margin, other_margin, margin, weight

    displacement = np.empty((n_nodes, 3), dtype=np.float64)
    for start in range(0, n_nodes, _CHUNK_NODES):
        part = slice(start, start + _CHUNK_NODES)
        kk, jj, ii = np.unravel_index(np.arange(start, min(start + _CHUNK_NODES, n_nodes)), grid.array.shape)
        world = grid.ijk_to_ras_points(np.stack([ii, jj, kk], axis=1).astype(np.float64))
        twist = twist_sum[part].astype(np.float64) / weight_sum[part, None]
        twist[zoned[part]] = inverse_twists[owner[part][zoned[part]]]
        # float32 exponentials: 1e-7 of a rotation is 3e-5 mm at 300 mm from the origin (0.1 s less on the real CT)
        matrices = se3_exp(torch.as_tensor(twist, dtype=torch.float32)).double().numpy()
        centred = world - origin
        ct = np.einsum("nij,nj->ni", matrices[:, :3, :3], centred) + matrices[:, :3, 3] + origin
        displacement[part] = ct - world
    del twist_sum, weight_sum
    field = DisplacementField(displacement.reshape(grid.array.shape + (3,)), grid.ijk_to_ras)
    unfolded = 0
    if config.unfold:
        zoned, owner = zoned.reshape(grid.array.shape), owner.reshape(grid.array.shape)
        unfolded = unfold(field, zoned, yielding=_meeting_nodes(zoned, owner))
    return PolyRigidField(field, poses, [name for name in order if name not in registered], unfolded)


def rigid_residuals(field: DisplacementField, labelmap: Labelmap, poses: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per vertebra, how far the field is from its rigid pose at the vertebra's CT voxels.

    For each voxel x of the vertebra (CT RAS), its world point y = M x is mapped back by the
    field; the residual is |field(y) - x| in mm. Returns name -> {mean_mm, p99_mm, max_mm, within_0_1_mm (the
    fraction of voxels under 0.1 mm), voxels}.
    """
    residuals = {}
    for name, label in labelmap.labels.items():
        if name not in poses:
            continue
        k, j, i = np.nonzero(labelmap.volume.array == label)
        ct = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(np.float64))
        error = np.linalg.norm(field.map_points(apply_matrix(poses[name], ct)) - ct, axis=1)
        residuals[name] = {"mean_mm": float(error.mean()), "p99_mm": float(np.percentile(error, 99)),
                           "max_mm": float(error.max()), "within_0_1_mm": float(np.mean(error < 0.1)),
                           "voxels": int(error.size)}
    return residuals


def _meeting_nodes(zoned: np.ndarray, owner: np.ndarray, reach: int = 2) -> np.ndarray:
    """(K, J, I) bool: the rigid-zone nodes with another vertebra's zone within ``reach`` nodes
    along a grid axis (where the central differences of the Jacobian span both zones)."""
    meeting = np.zeros(zoned.shape, dtype=bool)
    for axis in range(3):
        for step in range(1, reach + 1):
            near = [slice(None)] * 3
            far = [slice(None)] * 3
            near[axis], far[axis] = slice(0, -step), slice(step, None)
            near, far = tuple(near), tuple(far)
            across = zoned[near] & zoned[far] & (owner[near] != owner[far])
            meeting[near] |= across
            meeting[far] |= across
    return meeting


def _twist(matrix: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(6,) se(3) log of a 4x4 rigid matrix taken about ``origin``: log(T(-o) M T(o))."""
    centred = np.asarray(matrix, dtype=np.float64).copy()
    centred[:3, 3] = matrix[:3, :3] @ origin + matrix[:3, 3] - origin
    return se3_log(torch.as_tensor(centred)[None])[0].numpy()


def _pose_of_twist(twist: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_twist`: T(o) exp(twist) T(-o)."""
    centred = se3_exp(torch.as_tensor(twist)[None])[0].numpy()
    matrix = centred.copy()
    matrix[:3, 3] = centred[:3, 3] + origin - centred[:3, :3] @ origin
    return matrix


def _field_grid(labelmap: Labelmap, poses: dict[str, np.ndarray], spacing_mm: float, boxes: dict) -> Volume:
    """The field's grid (array of zeros): the CT's axes, nodes every ``spacing_mm``, covering the
    CT and every vertebra at its pose (grown by two nodes), so that no moved vertebra leaves it.
    boxes: label -> voxel box (:func:`..core.labelmap.label_boxes`)."""
    volume = labelmap.volume
    axes = volume.ijk_to_ras[:3, :3] / volume.spacing_mm  # unit columns
    origin = volume.ijk_to_ras[:3, 3]
    lo, hi = np.zeros(3), (np.array(volume.shape_ijk) - 1) * volume.spacing_mm
    for name, label in labelmap.labels.items():
        start, stop = boxes[label]
        corners = box_corners(start, stop - 1)
        along = (apply_matrix(poses[name], volume.ijk_to_ras_points(corners)) - origin) @ axes
        lo = np.minimum(lo, along.min(axis=0) - 2 * spacing_mm)
        hi = np.maximum(hi, along.max(axis=0) + 2 * spacing_mm)
    counts = np.floor((hi - lo) / spacing_mm).astype(int) + 1
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = axes * spacing_mm
    ijk_to_ras[:3, 3] = origin + axes @ lo
    return Volume(np.zeros(tuple(counts[::-1]), dtype=np.uint8), ijk_to_ras)


def _moved_voxels(labelmap: Labelmap, label: int, pose: np.ndarray, grid: Volume,
                  box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, 3) float32: the CT voxel centres of vertebra ``label`` (``box``: its voxel box) moved by
    ``pose``, in continuous (i, j, k) of the field's ``grid``."""
    start, stop = box
    crop = labelmap.volume.array[start[2]:stop[2], start[1]:stop[1], start[0]:stop[0]] == label
    k, j, i = np.nonzero(crop)
    ct = labelmap.volume.ijk_to_ras_points(np.stack([i, j, k], axis=1).astype(np.float64) + start)
    return apply_matrix(np.linalg.inv(grid.ijk_to_ras) @ pose, ct).astype(np.float32)


def _cell_corners(voxels_ijk: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(K, J, I) bool: every corner node of a grid cell holding one of ``voxels_ijk`` (continuous
    grid i, j, k): the nodes trilinear interpolation reads for those points."""
    cells = np.floor(voxels_ijk).astype(np.int64)
    shape_ijk = np.array(shape[::-1])
    corners = np.zeros(shape, dtype=bool)
    for corner in box_corners(np.zeros(3), np.ones(3)).astype(np.int64):
        node = cells + corner
        on = np.all((node >= 0) & (node < shape_ijk), axis=1)
        corners[node[on, 2], node[on, 1], node[on, 0]] = True
    return corners


def _distance_to_cells(voxels_ijk: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """(K, J, I) float32 distance (mm, 0 inside; inf when nothing lies on the grid) on the field's grid
    (``reference``, its image) to the corner nodes of the cells that hold a vertebra's moved voxel
    centres (:func:`_moved_voxels`): SimpleITK's signed Maurer distance map. (A mask resampled at
    the nodes instead loses processes thinner than a cell, and their voxels fell outside the rigid
    zone: up to 1.8 mm off their pose on the real CT.)"""
    inside = _cell_corners(voxels_ijk, sitk.GetArrayViewFromImage(reference).shape)
    if not inside.any():  # moved off the grid: it pulls on no node
        return np.full(inside.shape, np.inf, dtype=np.float32)
    image = sitk.GetImageFromArray(inside.astype(np.uint8))
    image.CopyInformation(reference)
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0).astype(np.float32)


def _share_contested_nodes(owner: np.ndarray, contested: np.ndarray, moved: list[np.ndarray],
                           shape: tuple[int, int, int]) -> None:
    """Give each ``contested`` node (flat indices; a corner of cells holding the voxels of two or
    more vertebrae) to the vertebra, among those, with the voxel centre nearest to it (Euclidean,
    in grid cells), in place in ``owner`` (flat, vertebra index). No grid can move both vertebrae
    rigidly there; this keeps each voxel's own corner nodes on its vertebra where it can."""
    if contested.size == 0:
        return
    kk, jj, ii = np.unravel_index(contested, shape)
    nodes = np.stack([ii, jj, kk], axis=1).astype(np.float64)
    best = np.full(contested.size, np.inf)
    for k, voxels in enumerate(moved):
        if voxels.size == 0:
            continue
        tree = cKDTree(voxels)
        # a corner of a cell holding one of k's voxels: a voxel within one cell along every axis
        corner = tree.query(nodes, p=np.inf, distance_upper_bound=1.0)[0] < 1.0
        if not corner.any():
            continue
        near = np.full(contested.size, np.inf)
        near[corner] = tree.query(nodes[corner])[0]
        closer = near < best
        best[closer] = near[closer]
        owner[contested[closer]] = k
