"""Registration accuracy: target registration error, pose errors, success rates, capture range,
segmentation overlap (Dice, HD95).

What the evaluation (:mod:`.evaluation`) and the benchmarks report, as plain numpy
functions. A registration result and its ground truth are both ``matrix_ras`` (4, 4): CT
RAS mm -> world RAS mm (DESIGN.md). Errors are measured on the vertebra itself:

- mTRE (mean target registration error): the mean distance, in mm, between where the
  estimate and the truth put each of the vertebra's points (its voxel centres, see
  :func:`vertebra_points`). It is the measure of the 2D/3D registration literature
  (van de Kraats et al., IEEE TMI 2005) and folds rotation and translation into one number
  on the scale of the anatomy.
- rotation error: the angle of the relative rotation ``R_est R_true^T``, degrees.
- translation error: how far apart the estimate and the truth put the vertebra's
  centroid, mm.

Success is mTRE below a threshold (2 mm by default, the clinical bar for pedicle screw
guidance); the capture range is the success rate as a function of the starting mTRE.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .volume import Volume

#: Default success thresholds (mm) and initial-mTRE bin edges (mm) of the capture range.
SUCCESS_THRESHOLDS_MM = (1.0, 2.0, 10.0)
CAPTURE_BINS_MM = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0)
#: Success rate a capture-range bin needs to count as "captured" (see :func:`capture_range`).
CAPTURE_MIN_RATE = 0.95


def _matrix(value, what: str) -> np.ndarray:
    matrix = np.asarray(value, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{what} must be a (4, 4) matrix, got shape {matrix.shape}")
    return matrix


def _points(points_ras) -> np.ndarray:
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points_ras must be (N, 3) with N >= 1, got shape {points.shape}")
    return points


def _rotation(value, what: str) -> np.ndarray:
    rotation = np.asarray(value, dtype=np.float64)
    if rotation.shape == (4, 4):
        rotation = rotation[:3, :3]
    if rotation.shape != (3, 3):
        raise ValueError(f"{what} must be a (3, 3) rotation or a (4, 4) matrix, got shape {rotation.shape}")
    return rotation


def mtre_mm(matrix_est, matrix_true, points_ras) -> float:
    """Mean target registration error (mm): mean over (N, 3) CT RAS points of |M_est p - M_true p|."""
    est, true = _matrix(matrix_est, "matrix_est"), _matrix(matrix_true, "matrix_true")
    points = _points(points_ras)
    moved_est = points @ est[:3, :3].T + est[:3, 3]
    moved_true = points @ true[:3, :3].T + true[:3, 3]
    return float(np.linalg.norm(moved_est - moved_true, axis=1).mean())


def rotation_error_deg(rotation_est, rotation_true) -> float:
    """Angle (degrees, in [0, 180]) of ``R_est R_true^T``; (3, 3) rotations or (4, 4) matrices.

    Computed as ``atan2(|axis part|, cos part)`` of the relative rotation, which stays
    accurate for tiny angles where ``arccos((trace - 1) / 2)`` loses precision.
    """
    relative = _rotation(rotation_est, "rotation_est") @ _rotation(rotation_true, "rotation_true").T
    skew = np.array([relative[2, 1] - relative[1, 2], relative[0, 2] - relative[2, 0], relative[1, 0] - relative[0, 1]])
    return math.degrees(math.atan2(0.5 * float(np.linalg.norm(skew)), 0.5 * (float(np.trace(relative)) - 1.0)))


def translation_error_mm(matrix_est, matrix_true, center_ras) -> float:
    """Distance (mm) between where the estimate and the truth put the point ``center_ras`` (the centroid)."""
    center = np.asarray(center_ras, dtype=np.float64)
    if center.shape != (3,):
        raise ValueError(f"center_ras must be 3 numbers, got shape {center.shape}")
    return mtre_mm(matrix_est, matrix_true, center[None])


def vertebra_points(mask: np.ndarray, volume: Volume | np.ndarray, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """Voxel centres (N, 3) RAS mm of a vertebra: the points its mTRE averages over.

    mask: (K, J, I) bool array (e.g. :func:`.io.labelmaps.vertebra_mask`) on the grid of
        ``volume`` (a :class:`.volume.Volume`, or its (4, 4) ijk_to_ras matrix).
    max_points: more voxels than this are subsampled to exactly ``max_points``, chosen
        uniformly without replacement by a generator seeded with ``seed`` and returned in
        voxel order, so the same mask and seed always give the same points.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3D (K, J, I) array, got shape {mask.shape}")
    ijk_to_ras = volume.ijk_to_ras if isinstance(volume, Volume) else _matrix(volume, "ijk_to_ras")
    if isinstance(volume, Volume) and volume.array.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the volume's {volume.array.shape}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    k, j, i = np.nonzero(mask)
    if len(i) == 0:
        raise ValueError("mask is empty: a vertebra needs at least one voxel")
    if len(i) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(i), size=max_points, replace=False))
        i, j, k = i[keep], j[keep], k[keep]
    ijk = np.stack([i, j, k], axis=1).astype(np.float64)
    return ijk @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def success_rates(mtres: Sequence[float], thresholds: Sequence[float] = SUCCESS_THRESHOLDS_MM) -> dict[float, float]:
    """Fraction of cases with mTRE strictly below each threshold (mm): {threshold: rate in [0, 1]}.

    NaN or infinite mTREs (a failed run) count as failures. Empty input -> NaN rates.
    """
    values = np.asarray(list(mtres), dtype=np.float64)
    if values.size == 0:
        return {float(t): math.nan for t in thresholds}
    values = np.where(np.isfinite(values), values, np.inf)
    return {float(t): float(np.mean(values < t)) for t in thresholds}


def capture_range(
    initial_mtre: Sequence[float],
    final_mtre: Sequence[float],
    bins: Sequence[float] = CAPTURE_BINS_MM,
    threshold: float = 2.0,
    min_rate: float = CAPTURE_MIN_RATE,
) -> dict:
    """Success rate (final mTRE < ``threshold`` mm) binned by the initial mTRE (mm).

    ``bins`` are increasing edges: bin b holds initial mTREs in [bins[b], bins[b+1]); a
    last, open bin holds those at or above ``bins[-1]``. Returns::

        {"threshold_mm": 2.0,
         "bins": [{"low_mm", "high_mm" (None for the open bin), "count", "successes",
                   "success_rate" (None when empty)}, ...],
         "capture_range_mm": the upper edge of the last bin such that every non-empty
                             bin from 0 up to it succeeds at least ``min_rate`` of the
                             time (0.0 if the first non-empty bin already falls short;
                             None when there are no cases)}
    """
    initial = np.asarray(list(initial_mtre), dtype=np.float64)
    final = np.asarray(list(final_mtre), dtype=np.float64)
    if initial.shape != final.shape:
        raise ValueError(f"initial_mtre and final_mtre need the same length, got {initial.size} and {final.size}")
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bins must be at least two increasing edges, got {list(bins)}")
    success = np.where(np.isfinite(final), final, np.inf) < threshold
    rows, reach, open_chain = [], None, True
    for low, high in zip(edges, edges[1:] + [None]):
        inside = (initial >= low) & ((initial < high) if high is not None else True)
        count = int(inside.sum())
        hits = int((inside & success).sum())
        rate = hits / count if count else None
        rows.append({"low_mm": low, "high_mm": high, "count": count, "successes": hits, "success_rate": rate})
        if count and open_chain:
            if rate >= min_rate:
                reach = high if high is not None else float(initial[inside].max())
            else:
                open_chain = False
                reach = reach if reach is not None else 0.0
    return {"threshold_mm": float(threshold), "min_rate": float(min_rate), "bins": rows, "capture_range_mm": reach}


# --------------------------------------------------------------------------- segmentation overlap
def dice(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two bool masks of one grid (1.0 when both are empty)."""
    a, b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def dice_per_label(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice overlap 2|A∩B| / (|A| + |B|) of each label value between two (K, J, I) label arrays
    on one grid (NaN where the label is in neither)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    out = {}
    for label in labels:
        in_a, in_b = a == label, b == label
        out[int(label)] = dice(in_a, in_b) if in_a.any() or in_b.any() else math.nan
    return out


def hd95_mm(mask_a: np.ndarray, mask_b: np.ndarray, spacing_mm) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of two (K, J, I) masks
    on one grid of (I, J, K) ``spacing_mm``; MONAI's compute_hausdorff_distance on the masks' joint
    bounding box. inf when exactly one mask is empty, NaN when both are."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    mask_a, mask_b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    if not mask_a.any() and not mask_b.any():
        return math.nan
    if not (mask_a.any() and mask_b.any()):
        return math.inf
    either = mask_a | mask_b
    box = tuple(slice(max(0, int(np.flatnonzero(either.any(axis=tuple(x for x in range(3) if x != axis)))[0]) - 1),
                      int(np.flatnonzero(either.any(axis=tuple(x for x in range(3) if x != axis)))[-1]) + 2)
                for axis in range(3))
    tensors = [torch.as_tensor(m[box].astype(np.float32))[None, None] for m in (mask_a, mask_b)]
    spacing_kji = [float(s) for s in np.asarray(spacing_mm, float)[::-1]]
    return float(compute_hausdorff_distance(tensors[0], tensors[1], percentile=95, spacing=spacing_kji)[0, 0])
