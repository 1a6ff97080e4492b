"""The in-memory vertebra segmentation: an integer Volume numbered by a label scheme, its masks and centroids.

Whatever the file it came from (:mod:`..io.labelmaps`), the array follows ``Labelmap.scheme``:
``labelmap.volume.array == labelmap.scheme.label_of["L1"]`` is always the L1 mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .labels import LabelScheme, get_scheme, sort_vertebrae, vertebra_label
from .volume import Volume, grown_box

_SLAB_VOXELS = 1 << 22  # voxels counted at a time by _present_values (32 MiB as int64)
#: How far (mm, in the ijk_to_ras entries) a labelmap's grid may differ from its CT's.
GRID_TOLERANCE_MM = 1e-3


@dataclass
class Labelmap:
    """A vertebra segmentation.

    volume: integer Volume, array (K, J, I); 0 is background.
    scheme: the numbering of ``volume.array``.
    values: (computed) the nonzero label values present, ascending.
    """

    volume: Volume
    scheme: LabelScheme
    values: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not np.issubdtype(self.volume.array.dtype, np.integer):
            raise ValueError(f"labelmap array must be integer, got {self.volume.array.dtype}")
        self.scheme = get_scheme(self.scheme)
        self.values = _present_values(self.volume.array)

    @property
    def labels(self) -> dict[str, int]:
        """Vertebrae present: canonical name -> label value, cranial -> caudal."""
        names = [self.scheme.name_of[v] for v in self.values if v in self.scheme.name_of]
        return {name: self.scheme.label_of[name] for name in sort_vertebrae(names)}

    def resolve(self, vertebra: str | int) -> tuple[str, int]:
        """A vertebra name or raw integer label -> (name, label), checked to be present.

        The name of a raw label the scheme does not number is the label as text ("99").
        Raises InputError for an unknown name or a vertebra absent from the labelmap.
        """
        label = vertebra_label(vertebra, self.scheme)
        name = self.scheme.name_of.get(label, str(label))
        if label not in self.values:
            present = ", ".join(self.labels) or "none"
            raise InputError(
                f"vertebra {vertebra!r} ({self.scheme.name} label {label}) is not in the labelmap; present: {present}"
            )
        return name, label


def _present_values(array: np.ndarray) -> tuple[int, ...]:
    """Nonzero values of an integer (K, J, I) array, ascending.

    Small non-negative labels (the usual case) are counted slab by slab with bincount,
    which needs no sort and no full-size int64 copy of a CT-sized labelmap.
    """
    if array.size == 0:
        return ()
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi >= 1 << 16:
        return tuple(int(v) for v in np.unique(array) if v != 0)
    counts = np.zeros(hi + 1, dtype=np.int64)
    slab = max(1, _SLAB_VOXELS // max(1, array[0].size))
    for k in range(0, array.shape[0], slab):
        counts += np.bincount(array[k : k + slab].ravel().astype(np.intp), minlength=hi + 1)
    return tuple(int(v) for v in np.flatnonzero(counts) if v != 0)


def vertebra_mask(labelmap: Labelmap, vertebra: str | int) -> np.ndarray:
    """(K, J, I) bool mask of one vertebra (name or raw label); InputError if absent."""
    _, label = labelmap.resolve(vertebra)
    return labelmap.volume.array == label


def centroid_ras(labelmap: Labelmap, vertebra: str | int) -> np.ndarray:
    """(3,) centre of mass of one vertebra's voxels, RAS mm."""
    k, j, i = np.nonzero(vertebra_mask(labelmap, vertebra))
    return labelmap.volume.ijk_to_ras_points(np.array([i.mean(), j.mean(), k.mean()]))


def centroids_ras(labelmap: Labelmap) -> dict[str, np.ndarray]:
    """Centre of mass of every vertebra present: name -> (3,) RAS mm, cranial -> caudal.

    One pass over the labelled voxels (not one per vertebra), so it stays fast on a
    full-size CT.
    """
    array = labelmap.volume.array
    flat = np.flatnonzero(array)
    labels, inverse = np.unique(array.ravel()[flat], return_inverse=True)
    kji = np.unravel_index(flat, array.shape)
    counts = np.bincount(inverse)
    mean_ijk = np.stack([np.bincount(inverse, weights=axis) for axis in kji[::-1]], axis=1) / counts[:, None]
    row_of = {int(label): row for row, label in enumerate(labels)}
    return {
        name: labelmap.volume.ijk_to_ras_points(mean_ijk[row_of[label]]) for name, label in labelmap.labels.items()
    }


def neighbour_offsets(centroids: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, ...]:
    """(3,) CT RAS mm vectors from vertebra ``name``'s centroid to its labelled neighbours' (the
    entries before and after it in ``centroids``, cranial -> caudal, as :func:`centroids_ras` gives
    them). With one neighbour only, its mirror stands for the other side (the spine goes on beyond
    the labels); none when ``name`` is alone or absent."""
    names = list(centroids)
    if name not in centroids or len(names) < 2:
        return ()
    at = names.index(name)
    here = np.asarray(centroids[name], dtype=np.float64)
    offsets = [np.asarray(centroids[names[i]], dtype=np.float64) - here
               for i in (at - 1, at + 1) if 0 <= i < len(names)]
    if len(offsets) == 1:
        offsets.append(-offsets[0])
    return tuple(offsets)


def label_boxes(labelmap: Labelmap, margin_vox: int | tuple[int, int, int] = 0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every vertebra's label (of :attr:`Labelmap.labels`) -> its voxel box (start_ijk, stop_ijk) as
    :func:`.volume.bounding_box_ijk` gives it, in one pass over the array (scipy's find_objects),
    not one per vertebra."""
    from scipy.ndimage import find_objects

    array = labelmap.volume.array
    labels = list(labelmap.labels.values())
    slices = find_objects(array, max_label=max(labels, default=0))  # entry v - 1: label v's box
    boxes = {}
    for label in labels:
        found = slices[label - 1]
        boxes[label] = grown_box([s.start for s in found[::-1]], [s.stop for s in found[::-1]], margin_vox, array.shape)
    return boxes


def check_same_grid(labelmap: Labelmap, ct: Volume, what: str = "the labelmap") -> None:
    """InputError unless the labelmap lies on the CT's voxel grid (size, origin, spacing, direction)."""
    if labelmap.volume.array.shape != ct.array.shape or not np.allclose(
        labelmap.volume.ijk_to_ras, ct.ijk_to_ras, atol=GRID_TOLERANCE_MM
    ):
        raise InputError(
            f"{what} does not share the CT's voxel grid (size {labelmap.volume.shape_ijk} vs "
            f"{ct.shape_ijk}, or another origin/spacing/direction): resample it onto the CT"
        )
