"""CT to CT vertebra by vertebra: every vertebra of the moving segmentation registered rigidly on
its own mask, the poses blended into one field by :mod:`.polyrigid`.

Between two CTs of one spine each vertebra moves rigidly and the tissue between them bends. From
the linear stage's matrix A (moving RAS <- fixed RAS, :mod:`.ct_pair`), vertebra k is registered
the other way round: the fixed CT onto the moving one, counting only the moving CT's voxels of
that vertebra (its label, so a neighbour that moved otherwise has no say; ``shell_mm`` can grow
it), by the iterative rigid registration of :mod:`.affine` started
at A^-1 (all vertebrae in one batch), on the two CTs cropped around the vertebra (its box, and that box mapped through
A^-1 grown by ``SEARCH_MM``), so that no level pools a whole CT. The matrix it returns,
fixed RAS <- moving RAS, is the vertebra's pose M_k (moving RAS -> fixed RAS, the direction of
``spinereg register``'s poses), and the poses go to
:func:`.polyrigid.polyrigid_field`: exactly rigid inside each vertebra, smooth and invertible
between, the vertebrae that could not be registered (too small, outside the fixed CT) following
their neighbours. :mod:`.freeform` then refines that field near the bone (``freeform.steps``, 0: off).
Only the moving segmentation is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dataclass_field, replace

import numpy as np

from ..core.displacement import DisplacementField
from ..core.frames import apply_matrix
from ..core.labelmap import Labelmap, label_boxes
from ..core.volume import Volume, bounding_box_ijk, box_corners, grown_box, mask_center_ras
from ..errors import InputError
from .affine import AffineConfig, Problem, register_affine_batch
from .freeform import FreeFormConfig, refine_near_bone
from .polyrigid import PolyRigidConfig, polyrigid_field

#: Vertebrae with fewer voxels than this follow their neighbours.
MIN_VOXELS = 200
#: How far (mm) a vertebra may move from the linear stage's pose: the fixed CT is cropped to its
#: box mapped there, grown by this and the registration's margin.
SEARCH_MM = 20.0


@dataclass
class ArticulatedConfig:
    """affine: the rigid registration of each vertebra (levels, steps, similarity; its transform
    is always rigid); shell_mm: the vertebra's mask grown by this; polyrigid: the blend (its
    grid spacing, mm). start_levels / start_steps: the linear stage before it runs only its first
    this many levels, each at most this many steps (a start within each vertebra's search, not an
    answer). freeform: the refinement of the blended field near the bone (:mod:`.freeform`)."""

    # (20, 10) steps, not (30, 20): 0.45 s against 0.7 s on the real CT, Dice 0.944 against 0.945
    # after the free-form refinement (0.971 against 0.973 on a phantom).
    affine: AffineConfig = dataclass_field(default_factory=lambda: AffineConfig(
        transform="rigid", similarity="ncc", levels_mm=(4.0, 2.0), steps=(20, 10), margin_mm=4.0))
    # The label alone: a 3 mm shell took the heads of the ribs and the discs in on the real CT
    # (mean vertebra Dice 0.887 against 0.900, 1.0 against 0.79 mm; the phantoms 0.946 / 0.943).
    shell_mm: float = 0.0
    # The linear stage's first level (8 mm) of three: 0.4 s against 3.9 s on the real CT, the
    # same Dice (0.900; 0.941 / 0.947 on the phantoms with one, two or three).
    start_levels: int = 1
    # 40 of its 80 steps: 0.15 s against 0.28 s on the real CT, the same Dice after the refinement
    # (0.947 / 0.945; 0.972 / 0.971 on a phantom with a +-3 deg / +-4 mm global motion).
    start_steps: int = 40
    # A 3.5 mm field, not the 2 mm of the poses' default: 2 mm took 2.5 s on a phantom pair, 3 mm
    # 0.6 s for the same Dice (0.938); 3.5 mm ~0.25 s less than 3 mm on the real CT, Dice after the
    # refinement 0.946 against 0.947 (0.970 against 0.972 on a phantom; 4 mm: 0.942), no folding.
    polyrigid: PolyRigidConfig = dataclass_field(default_factory=lambda: PolyRigidConfig(spacing_mm=3.5))
    freeform: FreeFormConfig = dataclass_field(default_factory=FreeFormConfig)


def vertebra_mask(moving_seg: Labelmap, label: int, shell_mm: float,
                  box: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The vertebra (grown by ``shell_mm``) as (start_ijk, stop_ijk, mask): the voxel box of the grown
    vertebra (stop exclusive) and the (K, J, I) bool mask of that crop of the moving grid; None
    when too small. ``box``: the label's voxel box when known (:func:`..core.labelmap.label_boxes`).
    Only that box, with room for the shell, is read (a scan or a distance map of the whole CT per
    vertebra is slow)."""
    from scipy.ndimage import distance_transform_edt

    if box is None:
        box = label_boxes(moving_seg).get(label)
        if box is None:
            return None
    spacing = moving_seg.volume.spacing_mm
    room = tuple(int(np.ceil(shell_mm / s)) + 1 for s in spacing) if shell_mm > 0 else 0
    start, stop = grown_box(*box, room, moving_seg.volume.array.shape)
    inside = moving_seg.volume.array[box_slices(start, stop)] == label
    if np.count_nonzero(inside) < MIN_VOXELS:
        return None
    if shell_mm <= 0:
        return start, stop, inside
    grown = distance_transform_edt(~inside, sampling=spacing[::-1]) <= shell_mm
    low, high = bounding_box_ijk(grown)
    return start + low, start + high, grown[box_slices(low, high)]


def box_slices(start_ijk, stop_ijk) -> tuple[slice, slice, slice]:
    """The (K, J, I) array slices of the voxel box [start, stop) given in (i, j, k)."""
    return tuple(slice(a, b) for a, b in zip(start_ijk[::-1], stop_ijk[::-1]))


def _around(volume: Volume, points_ras: np.ndarray, margin_mm: float) -> Volume:
    """The part of ``volume`` around ``points_ras`` (RAS mm) grown by ``margin_mm``: each vertebra's
    registration then pools and samples a small box, not the whole CT at every level."""
    ijk = volume.ras_to_ijk_points(np.concatenate([points_ras.min(0, keepdims=True) - margin_mm,
                                                   points_ras.max(0, keepdims=True) + margin_mm]))
    return volume.cropped(np.floor(ijk.min(0)).astype(int), np.ceil(ijk.max(0)).astype(int) + 1)


def start_config(linear: AffineConfig, config: ArticulatedConfig | None = None) -> AffineConfig:
    """The linear stage's config as the start of the vertebra-by-vertebra stage: its first levels
    only, and fewer steps."""
    config = config or ArticulatedConfig()
    keep = max(1, config.start_levels)
    return replace(linear, levels_mm=tuple(linear.levels_mm[:keep]),
                   steps=tuple(min(steps, config.start_steps) for steps in linear.steps[:keep]))


def articulated_field(fixed: Volume, moving: Volume, moving_seg: Labelmap, linear: np.ndarray,
                      config: ArticulatedConfig | None = None) -> tuple[DisplacementField, dict]:
    """The field (fixed RAS -> moving RAS) and an info dict (per vertebra: its pose and final
    loss; the vertebrae that followed their neighbours; the free-form refinement's info; the
    registrations' time and the whole stage's, s)."""
    config = config or ArticulatedConfig()
    started = time.perf_counter()
    f_lo, f_hi = fixed.bounds_ras()
    problems = {}
    start = np.linalg.inv(linear)
    boxes = label_boxes(moving_seg)
    for name, label in moving_seg.labels.items():
        grown = vertebra_mask(moving_seg, label, config.shell_mm, boxes[label])
        if grown is None:
            continue  # too small: it follows its neighbours
        start_ijk, stop_ijk, mask = grown
        near = moving.cropped(start_ijk, stop_ijk)
        centre = apply_matrix(start, mask_center_ras(mask, near))
        if np.any(centre < f_lo) or np.any(centre > f_hi):
            continue  # outside the fixed CT: it follows its neighbours
        corners = moving.ijk_to_ras_points(box_corners(start_ijk, stop_ijk))
        try:
            far = _around(fixed, apply_matrix(start, corners), config.affine.margin_mm + SEARCH_MM)
        except ValueError:
            continue  # its box misses the fixed CT: it follows its neighbours
        problems[name] = Problem(near, far, mask=mask, init=start)
    if not problems:
        raise InputError("no vertebra of the moving segmentation lies in the fixed CT: nothing to register")
    # All vertebrae at once: one optimisation of their stacked poses (each its own registration).
    results = register_affine_batch(list(problems.values()), config.affine)
    poses = {name: result.matrix for name, result in zip(problems, results)}
    vertebrae = {name: {"matrix_ras": result.matrix.tolist(), "loss": result.loss}
                 for name, result in zip(problems, results)}
    blended = polyrigid_field(moving_seg, poses, config.polyrigid)
    field, freeform = refine_near_bone(fixed, moving, moving_seg, blended.field, config.freeform)
    return field, {"vertebrae": vertebrae, "followed_neighbours": blended.inferred, "freeform": freeform,
                   "registration_s": results[0].info["time_s"], "time_s": time.perf_counter() - started}
