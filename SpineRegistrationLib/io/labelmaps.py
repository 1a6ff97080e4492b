"""Vertebra labelmap files <-> :class:`~SpineRegistrationLib.core.labelmap.Labelmap`.

Read from a plain labelmap (NIfTI/NRRD/MHA, values numbered by ``verse`` or
``totalseg``) or from a Slicer ``.seg.nrrd`` (see ``segnrrd``). Whatever the source, a .seg.nrrd
is relabelled on reading to the scheme's numbering. The in-memory type, its masks and
centroids are :mod:`..core.labelmap` (re-exported here).
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ..core.labelmap import Labelmap, centroid_ras, centroids_ras, vertebra_mask
from ..core.labels import LabelScheme, get_scheme, guess_scheme_from_labels
from ..core.volume import Volume
from ..errors import InputError
from .images import as_3d_scalar, ijk_to_ras_of, read_image_file, volume_to_image, write_image_file
from . import segnrrd


def _integer_array(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Labels stored as floats (common in NIfTI) -> integers; InputError if not integral."""
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
        raise InputError(f"{path} is not a labelmap: it holds non-integer values")
    return array.astype(np.int32)


def read_labelmap(path: str | os.PathLike, scheme: str | LabelScheme = "auto") -> Labelmap:
    """Read a plain labelmap or a Slicer .seg.nrrd as a Labelmap (RAS).

    scheme: ``auto`` (from .seg.nrrd segment names, or from the label values of a plain
    labelmap, see ``labels.guess_scheme_from_labels``), ``verse`` or ``totalseg``.
    Raises InputError for an empty labelmap or one without any vertebra of the scheme.
    """
    auto = isinstance(scheme, str) and scheme.strip().lower() == "auto"
    scheme = "auto" if auto else get_scheme(scheme)  # a bad scheme fails before any reading
    image = read_image_file(path)
    if segnrrd.has_segment_metadata(image):
        array, scheme = segnrrd.labels_from_segments(image, path, scheme)
    else:
        image = as_3d_scalar(image, path, "a labelmap")
        array = _integer_array(sitk.GetArrayFromImage(image), path)
    labelmap = Labelmap(Volume(array, ijk_to_ras_of(image)), "verse" if scheme == "auto" else scheme)
    if not labelmap.values:
        raise InputError(f"labelmap {path} is empty (no nonzero voxels)")
    if scheme == "auto":
        labelmap.scheme = guess_scheme_from_labels(labelmap.values)
    if not labelmap.labels:
        shown = ", ".join(map(str, labelmap.values[:10])) + (", ..." if len(labelmap.values) > 10 else "")
        raise InputError(
            f"labelmap {path} has no vertebra labels of the {labelmap.scheme.name!r} scheme (values found: {shown})"
        )
    return labelmap


def write_labelmap(labelmap: Labelmap, path: str | os.PathLike) -> None:
    """Write a labelmap: ``.seg.nrrd`` -> Slicer segmentation, else a plain labelmap file."""
    if str(path).lower().endswith(".seg.nrrd"):
        segnrrd.write_seg_nrrd(labelmap, path)
    else:
        write_image_file(volume_to_image(labelmap.volume), path)


__all__ = ["Labelmap", "centroid_ras", "centroids_ras", "read_labelmap", "vertebra_mask", "write_labelmap"]
