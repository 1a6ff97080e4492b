"""Level names of detected vertebrae: consecutive along the spine, and, with the CT, where it projects.

:func:`name_levels` orders the detected centres along the spine and gives them consecutive names of
the standard chain C1..S1 (gaps allowed at a cost) that best agree with the detector's level
log-probabilities, so that one confused vertebra cannot break the sequence; a detection that would
shift its neighbours' names (a second box on a vertebra, one between two) is left unnamed and dropped.

The detector alone tells thoracic vertebrae apart poorly (they look alike). When the CT is known
(the clinical case: it is there before surgery) and roughly placed (its initial pose, tens of
millimetres off), :func:`ct_level_scores` adds where each of its vertebrae projects: the one 3D
translation of the CT that best explains the detections of every view together (a grid search:
the level log-probabilities plus a Gaussian of each detection's distance to the nearest projected
centre, at the patient, mm), then a 2D similarity per view fitted to the matched centres (the
rotation a translation cannot explain). The views share the translation, so a name shifted by one
level in one view costs its agreement with the other (both views see the cranio-caudal position).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.labels import VERTEBRAE
from ..geometry import XrayGeometry

#: The usual vertebrae, cranial -> caudal, that level naming counts along (no T13, L6).
CHAIN = tuple(name for name in VERTEBRAE if name not in ("T13", "L6"))
_CHAIN_INDEX = [VERTEBRAE.index(name) for name in CHAIN]
#: What leaving a detection unnamed (dropped) costs, nats: less than the names it would shift.
SKIP_NATS = 7.0


@dataclass
class ViewDetections:
    """The detections of one view for :func:`ct_level_scores`: centres_px (N, 2) (column, row) of the
    X-ray, level_log_probs (N, len(VERTEBRAE)) from the detector, and the view's geometry."""

    centers_px: np.ndarray
    level_log_probs: np.ndarray
    geometry: XrayGeometry


def name_levels(centers_px: np.ndarray, level_log_probs: np.ndarray, position: np.ndarray | None = None,
                gap_cost: float = 3.0, skip_cost: float | None = SKIP_NATS) -> list[str | None]:
    """Level names of N detections: centres_px (N, 2), level_log_probs (N, len(VERTEBRAE)).

    They are ordered along the spine (the first principal axis of the centres), named consecutively
    in :data:`CHAIN` up or down it, each skipped level costing ``gap_cost`` (nats); the assignment
    maximises the level log-probabilities plus ``position`` (N, len(CHAIN)) nats when given
    (:func:`ct_level_scores`), by dynamic programming. A detection may stay unnamed (None) for
    ``skip_cost`` nats (None: never): a second box on one vertebra, or one between two, would
    otherwise shift the names of all the vertebrae beyond it.
    """
    count = len(centers_px)
    if count == 0:
        return []
    if count > len(CHAIN) and skip_cost is None:
        raise ValueError(f"{count} detections cannot take {len(CHAIN)} different levels")
    scores = np.asarray(level_log_probs, dtype=np.float64)[:, _CHAIN_INDEX]
    if position is not None:
        scores = scores + position
    centers = np.asarray(centers_px, dtype=np.float64)
    direction = np.linalg.svd(centers - centers.mean(0), full_matrices=False)[2][0] if count > 1 else np.zeros(2)
    order = list(np.argsort(centers @ direction, kind="stable"))
    best, names = -np.inf, None
    for sequence in (order, order[::-1]):
        total, levels = _increasing_levels(scores[sequence], gap_cost, skip_cost)
        if total > best:
            best, names = total, {int(i): None if level < 0 else CHAIN[level] for i, level in zip(sequence, levels)}
    return [names[i] for i in range(count)]


def _increasing_levels(scores: np.ndarray, gap_cost: float, skip_cost: float | None = None) -> tuple[float, list[int]]:
    """Best strictly increasing levels for rows of (N, L) scores, -1 for a row left unnamed at
    ``skip_cost`` (None: every row is named): (total, levels)."""
    count, chain = scores.shape
    steps = np.arange(chain)
    # from level p to level l > p: total[p] - gap_cost * (l - p - 1)
    jump = -gap_cost * (steps[:, None] - steps[None, :] - 1.0)
    jump[steps[:, None] <= steps[None, :]] = -np.inf
    skip = -np.inf if skip_cost is None else -float(skip_cost)
    total, unnamed = np.full(chain, -np.inf), 0.0  # last named level l; none named yet
    back = np.zeros((count, chain), dtype=int)  # previous level, -1: none named before, -2: this row skipped
    for n in range(count):
        candidates = total[None, :] + jump
        previous = np.argmax(candidates, axis=1)
        named = np.maximum(candidates[steps, previous], unnamed) + scores[n]
        back[n] = np.where(candidates[steps, previous] >= unnamed, previous, -1)
        kept = total + skip
        back[n] = np.where(kept > named, -2, back[n])
        total, unnamed = np.maximum(named, kept), unnamed + skip
    level = int(np.argmax(total))
    if unnamed >= total[level]:
        return float(unnamed), [-1] * count
    levels, best = [], float(total[level])
    for n in range(count - 1, -1, -1):
        step = back[n, level]
        levels.append(-1 if step == -2 else level)
        if step == -1:
            levels += [-1] * n
            break
        if step >= 0:
            level = int(step)
    return best, levels[::-1]


def ct_level_scores(views: Sequence[ViewDetections], centers_ras: Mapping[str, np.ndarray], sigma_mm: float = 8.0,
                    search_mm: float = 32.0, step_mm: float = 4.0, prior_mm: float = 25.0,
                    far_sigmas: float = 3.0) -> list[np.ndarray]:
    """Per view, (N, len(CHAIN)) nats: how well each detection's centre agrees with each level's projection.

    centers_ras: vertebra name -> (3,) centroid in world RAS mm at the CT's initial pose. The CT is
    shifted by the translation (a grid of ``step_mm`` within ``search_mm`` per axis, a Gaussian prior of
    ``prior_mm`` on it) that maximises, over all views, each detection's best level log-probability
    plus -d^2 / (2 sigma^2), d its distance (mm at the vertebra's depth) to that level's projected
    centre, at least -far^2 / 2 (a detection near no level, or of a level the CT lacks, costs that);
    then each view's projections are fitted to their matched detections by a 2D similarity, and the
    scores are taken there. Levels the CT lacks score -far^2 / 2 everywhere.
    """
    names = [name for name in CHAIN if name in centers_ras]
    floor = -0.5 * far_sigmas**2
    if not names or not any(len(v.centers_px) for v in views):
        return [np.full((len(v.centers_px), len(CHAIN)), floor) for v in views]
    chain_of = np.array([CHAIN.index(name) for name in names])
    centers = np.stack([np.asarray(centers_ras[name], dtype=np.float64) for name in names])  # (K, 3)
    axis = np.arange(-search_mm, search_mm + 1e-9, step_mm)
    shifts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # (G, 3)
    total = -0.5 * np.sum(shifts**2, axis=1) / prior_mm**2
    prepared = []
    for view in views:
        log_probs = np.asarray(view.level_log_probs, dtype=np.float64)[:, _CHAIN_INDEX]  # (N, L)
        magnification = np.array([view.geometry.magnification(c) for c in centers])
        mm_per_px = np.asarray(view.geometry.pixel_spacing) / magnification[:, None]  # (K, 2) at each level's depth
        prepared.append((log_probs, mm_per_px))
        if not len(view.centers_px):
            continue
        projected = view.geometry.project(centers[None] + shifts[:, None])  # (G, K, 2)
        q = _closeness(np.asarray(view.centers_px, dtype=np.float64), projected, mm_per_px, sigma_mm, floor)
        # (G, N): each detection's best level; a level the CT lacks only at the floor
        best = np.max(log_probs[None, :, chain_of] + q, axis=2)
        lacking = np.delete(log_probs, chain_of, axis=1)
        if lacking.shape[1]:
            best = np.maximum(best, lacking.max(axis=1)[None] + floor)
        total += best.sum(axis=1)
    shift = shifts[int(np.argmax(total))]
    out = []
    for view, (log_probs, mm_per_px) in zip(views, prepared):
        scores = np.full((len(view.centers_px), len(CHAIN)), floor)
        if len(view.centers_px):
            detected = np.asarray(view.centers_px, dtype=np.float64)
            projected = view.geometry.project(centers + shift)  # (K, 2)
            q = _closeness(detected, projected[None], mm_per_px, sigma_mm, floor)[0]  # (N, K)
            near = np.max(q, axis=1) > floor
            match = np.argmax(log_probs[:, chain_of] + q, axis=1)
            if np.count_nonzero(near) >= 3:
                projected = _similarity(projected[match[near]], detected[near], projected)
                q = _closeness(detected, projected[None], mm_per_px, sigma_mm, floor)[0]
            scores[:, chain_of] = q
        out.append(scores)
    return out


def _closeness(detected: np.ndarray, projected: np.ndarray, mm_per_px: np.ndarray, sigma_mm: float,
               floor: float) -> np.ndarray:
    """(G, N, K) nats -d^2 / (2 sigma^2), at least ``floor``: detected (N, 2) px against projected
    (G, K, 2) px, distances in mm at each level's depth (mm_per_px (K, 2))."""
    offset = (detected[None, :, None, :] - projected[:, None, :, :]) * mm_per_px[None, None]
    return np.maximum(-0.5 * np.sum(offset**2, axis=-1) / sigma_mm**2, floor)


def _similarity(source: np.ndarray, target: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (M, 2) moved by the 2D similarity (rotation, scale, translation) that best maps
    ``source`` (P, 2) onto ``target`` (P, 2) in least squares (Umeyama 1991; a few lines, no
    dependency for it)."""
    mean_s, mean_t = source.mean(0), target.mean(0)
    s, t = source - mean_s, target - mean_t
    u, singular, vt = np.linalg.svd(t.T @ s)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / max(np.sum(s**2), 1e-12))
    return (points - mean_s) @ (scale * rotation).T + mean_t
