"""The in-memory dense deformation: a displacement field on a grid of world points, in the resampling direction.

A :class:`DisplacementField` maps a world RAS point y (a point of the operating-room patient)
to the CT RAS point it came from, x = y + d(y): the direction ITK resamples in and the
"from parent" direction of a Slicer grid transform that is the CT's parent (DESIGN.md).
Inside a rigidly moved vertebra with pose M (CT RAS -> world), x = M^-1 y.

Here: the field, its points, its Jacobian determinant and folding statistics, and the
memory check of a grid. As a transform (warping images, the file on disk) it goes through
SimpleITK's ``DisplacementFieldTransform`` in :mod:`..io.displacement`, so what we compute is
what ITK and Slicer apply. Between grid nodes the displacement is trilinear; outside the
grid it is zero (ITK's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .volume import Volume

#: Nodes this close to the grid's faces are left out of the Jacobian statistics (Learn2Reg
#: crops the border too: finite differences there are one-sided).
_JACOBIAN_BORDER = 2
#: Grid slices (array axis 0) whose Jacobian matrices are formed at a time.
_JACOBIAN_SLAB = 16


@dataclass
class DisplacementField:
    """displacement: (K, J, I, 3) float64, RAS mm, at the grid nodes; ijk_to_ras: (4, 4) of
    the grid (world RAS mm). The map is y -> y + displacement(y), world -> CT."""

    displacement: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        self.displacement = np.asarray(self.displacement, dtype=np.float64)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.displacement.ndim != 4 or self.displacement.shape[-1] != 3:
            raise ValueError(f"displacement must be (K, J, I, 3), got {self.displacement.shape}")

    @property
    def grid(self) -> Volume:
        """The grid as a Volume (its array is the displacement magnitude, mm)."""
        return Volume(np.linalg.norm(self.displacement, axis=-1), self.ijk_to_ras)

    def map_points(self, points_ras: np.ndarray, border: bool = False) -> np.ndarray:
        """(N, 3) world RAS mm -> (N, 3) CT RAS mm, trilinear as ITK (zero displacement off the grid;
        with ``border``, the nearest edge node's, so that a composition does not jump at the edge)."""
        points = torch.as_tensor(np.asarray(points_ras, dtype=np.float64).reshape(-1, 3))
        return self.torch_map(torch.float64, border)(points).numpy()

    def torch_map(self, dtype: torch.dtype = torch.float32, border: bool = False):
        """The map as a torch function of (N, 3) world RAS mm (``dtype``) -> (N, 3) CT RAS mm, as
        :meth:`map_points` and differentiable in the points; the field is converted once, here."""
        field = torch.as_tensor(self.displacement, dtype=dtype).permute(3, 0, 1, 2)[None]  # (1, 3, K, J, I)
        size = np.array(self.displacement.shape[2::-1], dtype=np.float64)  # (I, J, K)
        ras_to_ijk = torch.as_tensor(np.linalg.inv(self.ijk_to_ras)[:3], dtype=dtype)
        scale = torch.as_tensor(2.0 / np.maximum(size - 1.0, 1.0), dtype=dtype)
        last = torch.as_tensor(size - 1.0, dtype=dtype)

        def mapped(points: torch.Tensor) -> torch.Tensor:
            ijk = points @ ras_to_ijk[:, :3].T + ras_to_ijk[:, 3]
            sampled = torch.nn.functional.grid_sample(
                field, (ijk * scale - 1.0).view(1, -1, 1, 1, 3), mode="bilinear",
                padding_mode="border" if border else "zeros", align_corners=True)[0, :, :, 0, 0].T
            if border:
                return points + sampled
            inside = ((ijk >= 0) & (ijk <= last)).all(-1, keepdim=True)
            return points + torch.where(inside, sampled, torch.zeros_like(sampled))

        return mapped

    def jacobian_determinant(self) -> np.ndarray:
        """(K, J, I) det(I + dd/dy) at the nodes, central differences in world mm.

        By hand (numpy gradients) because SimpleITK's DisplacementFieldJacobianDeterminant
        differentiates along the index axes scaled by spacing but ignores the grid's
        direction, which is wrong for any grid not aligned with LPS (every RAS-aligned one).
        """
        return _determinants(self.displacement, np.linalg.inv(self.ijk_to_ras[:3, :3]))


def _determinants(displacement: np.ndarray, index_to_world_inverse: np.ndarray) -> np.ndarray:
    """(K, J, I) Jacobian determinants of a (K, J, I, 3) displacement array (central differences,
    one-sided at its faces); index_to_world_inverse: the inverse of the grid's 3x3 index -> RAS."""
    depth = displacement.shape[0]
    determinant = np.empty(displacement.shape[:3])
    # A slab of K slices at a time, with one slice either side for the central differences
    # (the whole grid's 3x3 float64 matrices took ~200 bytes a node).
    for start in range(0, depth, _JACOBIAN_SLAB):
        stop = min(start + _JACOBIAN_SLAB, depth)
        low, high = max(start - 1, 0), min(stop + 1, depth)
        part = displacement[low:high]
        jacobian = np.empty(part.shape[:3] + (3, 3))
        for axis_ijk in range(3):  # d displacement / d index i, j, k (array axes 2, 1, 0)
            jacobian[..., :, axis_ijk] = np.gradient(part, axis=2 - axis_ijk)
        jacobian = jacobian[start - low:stop - low] @ index_to_world_inverse + np.eye(3)
        determinant[start:stop] = np.linalg.det(jacobian)
    return determinant


def unfold(field: DisplacementField, fixed: np.ndarray, yielding: np.ndarray | None = None,
           min_det: float = 0.05, rounds: int = 8) -> int:
    """Remove the field's folds in place: where the Jacobian determinant is <= ``min_det``, the
    displacement of the nearby free nodes is smoothed (each set to the mean of its six
    neighbours, eight Jacobi sweeps a round) until no node of the neighbourhood is <= ``min_det``;
    the neighbourhood grows by a node every other round, ``rounds`` at most.

    fixed: (K, J, I) bool, the nodes that must keep their displacement (e.g. the poly-rigid
    field's rigid zones). yielding: optional (K, J, I) bool, nodes of ``fixed`` that may change
    where a fold outlasts the rounds without them (a second set of rounds): a node's determinant
    depends on its neighbours only, so a fold between two fixed nodes goes only if one of them
    yields; where one outlasts that too, every node around it may change (a third set). Nodes
    within two of the grid's faces never change. Returns the number of nodes smoothed.

    By hand: neither SimpleITK nor MONAI repairs a field's folds while holding given nodes fixed.
    """
    from scipy import ndimage

    inverse = np.linalg.inv(field.ijk_to_ras[:3, :3])
    folded = _determinants(field.displacement, inverse) <= min_det
    b = _JACOBIAN_BORDER
    folded[:b] = folded[-b:] = False
    folded[:, :b] = folded[:, -b:] = False
    folded[:, :, :b] = folded[:, :, -b:] = False
    clusters, _ = ndimage.label(ndimage.binary_dilation(folded, iterations=2))
    pad = rounds // 2 + 4  # room for the largest neighbourhood and the determinants around it
    changed = 0
    for found in ndimage.find_objects(clusters):
        box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(found, folded.shape))
        held = [fixed[box]] if yielding is None else [fixed[box], fixed[box] & ~yielding[box], np.zeros_like(fixed[box])]
        changed += _unfold_box(field.displacement[box], held, inverse, min_det, rounds)
    return changed


def _unfold_box(displacement: np.ndarray, held: list[np.ndarray], inverse: np.ndarray, min_det: float,
                rounds: int) -> int:
    """:func:`unfold` on a view of the field around one cluster of folds: a set of rounds for each
    mask of ``held`` nodes (the next one is tried only if a fold is left). Determinants are judged
    one node in from the box's faces (exact central differences) and nodes change two in (so that
    every determinant a change touches is judged)."""
    from scipy import ndimage

    judged = np.zeros(held[0].shape, dtype=bool)
    judged[1:-1, 1:-1, 1:-1] = True
    inside = np.zeros(held[0].shape, dtype=bool)
    inside[2:-2, 2:-2, 2:-2] = True
    changed = np.zeros(held[0].shape, dtype=bool)
    for fixed in held:
        free = inside & ~fixed
        for round_ in range(rounds):
            bad = (_determinants(displacement, inverse) <= min_det) & judged
            if not bad.any():
                return int(changed.sum())
            region = ndimage.binary_dilation(bad, iterations=1 + round_ // 2) & free
            if not region.any():
                break
            inner = region[1:-1, 1:-1, 1:-1]
            for _ in range(8):
                mean = (displacement[:-2, 1:-1, 1:-1] + displacement[2:, 1:-1, 1:-1] + displacement[1:-1, :-2, 1:-1]
                        + displacement[1:-1, 2:, 1:-1] + displacement[1:-1, 1:-1, :-2] + displacement[1:-1, 1:-1, 2:]) / 6.0
                displacement[1:-1, 1:-1, 1:-1][inner] = mean[inner]
            changed |= region
    return int(changed.sum())


def available_memory_bytes() -> int | None:
    """Memory the OS says is available (Linux MemAvailable), None where it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(nodes: int, bytes_per_node: float, spacing_mm: float, what: str = "the field grid") -> None:
    """InputError when ``nodes`` grid nodes of ``bytes_per_node`` each will not fit in the available
    memory (with a 25 % reserve), naming the grid spacing that would fit."""
    available = available_memory_bytes()
    need = nodes * bytes_per_node
    if available is None or need <= 0.75 * available:
        return
    fits = spacing_mm * (need / (0.75 * available)) ** (1.0 / 3.0)
    raise InputError(f"{what} ({nodes:,} nodes at {spacing_mm:g} mm) needs ~{need / 2**30:.1f} GiB but "
                     f"{available / 2**30:.1f} GiB is available: use a spacing of {math.ceil(fits * 10) / 10:g} mm or more")


def jacobian_stats(field: DisplacementField, within: np.ndarray | None = None) -> dict[str, float]:
    """Folding statistics of a field's Jacobian determinant J, over the grid's interior nodes.

    within: optional (K, J, I) bool mask of the nodes to count (e.g. the body). Returns
    min, max, mean of J; ``folding_percent`` (% of nodes with J <= 0) and ``sdlogj`` (the
    standard deviation of log J, J clipped to [1e-9, 1e9], as Learn2Reg computes it).
    """
    det = field.jacobian_determinant()
    keep = np.zeros(det.shape, dtype=bool)
    b = _JACOBIAN_BORDER
    keep[b:-b or None, b:-b or None, b:-b or None] = True
    if within is not None:
        keep &= within
    values = det[keep].astype(np.float64)
    if values.size == 0:
        raise ValueError("no grid node to take Jacobian statistics over")
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "folding_percent": float(100.0 * np.mean(values <= 0.0)),
        "sdlogj": float(np.log(np.clip(values, 1e-9, 1e9)).std()),
        "nodes": int(values.size),
    }
