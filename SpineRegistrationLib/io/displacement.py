"""Displacement-field transform files (ITK ``.h5``) <-> :class:`~..core.displacement.DisplacementField`.

The file holds ITK's ``DisplacementFieldTransform_double_3_3``: the resampling direction
(world -> CT) in LPS, which Slicer's vtkMRMLTransformStorageNode loads as a grid transform
whose "from parent" map is the field (so, set as the CT's parent, it moves the CT and its
segmentation to the operating-room pose). Also the field's SimpleITK forms (vector image,
transform) and resampling images through it, which both the files and the warps use.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.displacement import DisplacementField
from ..core.frames import LPS_TO_RAS
from ..errors import InputError


def field_to_image(field: DisplacementField) -> sitk.Image:
    """The field as ITK holds it: a vector image in LPS, vectors in LPS mm."""
    vectors = field.displacement * np.array([-1.0, -1.0, 1.0])
    image = sitk.GetImageFromArray(np.ascontiguousarray(vectors), isVector=True)
    ijk_to_lps = LPS_TO_RAS @ field.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def field_from_image(image: sitk.Image) -> DisplacementField:
    """The inverse of :func:`field_to_image`."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("a displacement field is a 3D image of 3-vectors")
    vectors = sitk.GetArrayFromImage(image).astype(np.float64) * np.array([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return DisplacementField(vectors, LPS_TO_RAS @ ijk_to_lps)


def field_transform(field: DisplacementField) -> sitk.DisplacementFieldTransform:
    """A SimpleITK transform (world LPS -> CT LPS) applying ``field``, trilinear between nodes."""
    transform = sitk.DisplacementFieldTransform(field_to_image(field))
    transform.SetInterpolator(sitk.sitkLinear)
    return transform


def warp_image(image: sitk.Image, field: DisplacementField, reference: sitk.Image,
               labels: bool = False, default: float = 0.0) -> sitk.Image:
    """Resample ``image`` (CT space) onto ``reference``'s grid (world space) through the field:
    out(y) = image(y + d(y)). Labels take the nearest voxel, intensities are linear."""
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(image, reference, field_transform(field), interpolator, default, image.GetPixelID())




def write_displacement(field: DisplacementField, path: str | os.PathLike) -> None:
    """Write ``field`` as an ITK displacement-field transform (``.h5``)."""
    path = Path(path)
    if not path.name.lower().endswith((".h5", ".hdf5")):
        raise InputError(f"{path}: a displacement field is written as an ITK .h5 transform")
    try:
        sitk.WriteTransform(field_transform(field), str(path))
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
    return field_from_image(sitk.DisplacementFieldTransform(transform).GetDisplacementField())
