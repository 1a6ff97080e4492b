"""Displacement-field transform files (ITK ``.h5``) <-> :class:`~..deform.field.DisplacementField`.

The file holds ITK's ``DisplacementFieldTransform_double_3_3``: the resampling direction
(world -> CT) in LPS, which Slicer's vtkMRMLTransformStorageNode loads as a grid transform
whose "from parent" map is the field (so, set as the CT's parent, it moves the CT and its
segmentation to the operating-room pose).
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ..deform.field import DisplacementField
from ..errors import InputError


def write_displacement(field: DisplacementField, path: str | os.PathLike) -> None:
    """Write ``field`` as an ITK displacement-field transform (``.h5``)."""
    path = Path(path)
    if not path.name.lower().endswith((".h5", ".hdf5")):
        raise InputError(f"{path}: a displacement field is written as an ITK .h5 transform")
    try:
        sitk.WriteTransform(field.to_transform(), str(path))
    except RuntimeError:
        raise InputError(f"cannot write transform {path} (folder missing or not writable)") from None


def read_displacement(path: str | os.PathLike) -> DisplacementField:
    """Read an ITK displacement-field transform file; InputError for a missing, corrupt or other kind."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"transform file not found: {path}")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError:
        raise InputError(f"cannot read {path} as an ITK transform (corrupt or unsupported)") from None
    if transform.GetName() == "CompositeTransform":
        transform = sitk.CompositeTransform(transform)
        if transform.GetNumberOfTransforms() == 1:
            transform = transform.GetNthTransform(0)
    if transform.GetName() != "DisplacementFieldTransform":
        raise InputError(f"{path} holds a {transform.GetName()}, not a displacement field")
    return DisplacementField.from_sitk_image(sitk.DisplacementFieldTransform(transform).GetDisplacementField())
