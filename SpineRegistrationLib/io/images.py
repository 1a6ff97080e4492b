"""3D images on disk <-> Volume (RAS), through SimpleITK.

The one place where an image's LPS geometry becomes RAS: SimpleITK (like ITK, DICOM,
NIfTI's and NRRD's readers) reports origin and direction in LPS, so

    ijk_to_ras = LPS_TO_RAS @ [direction * spacing | origin]

and ``write_volume`` applies the inverse. Formats: whatever SimpleITK reads (NIfTI
``.nii``/``.nii.gz``, NRRD, MetaImage ``.mha``/``.mhd``) and a folder holding a DICOM
series (the series with the most files when the folder holds several).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..core.frames import LPS_TO_RAS, homogeneous
from ..core.volume import Volume


def read_image_file(path: str | os.PathLike) -> sitk.Image:
    """Read any image SimpleITK reads (a DICOM series when ``path`` is a folder).

    Raises InputError, in one line, for a missing path or a file SimpleITK cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        return sitk.ReadImage(str(path))
    except RuntimeError:
        # SimpleITK's message is a multi-line ITK exception; the user needs only this.
        raise InputError(f"cannot read {path} as an image (corrupt or unsupported format)") from None


def _read_dicom_series(folder: Path) -> sitk.Image:
    """The DICOM series in ``folder`` with the most files (scouts and localizers are smaller)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def ijk_to_ras_of(image: sitk.Image) -> np.ndarray:
    """(4, 4) IJK -> RAS mm matrix of a 3D SimpleITK image (its geometry is LPS)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    return LPS_TO_RAS @ homogeneous(direction * spacing, image.GetOrigin())


def as_3d_scalar(image: sitk.Image, path: str | os.PathLike, what: str = "a CT") -> sitk.Image:
    """``image`` as a 3D scalar image, or InputError saying what it is instead.

    A 4D image whose 4th axis has length 1 is accepted (some tools store 3D as 4D).
    """
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(f"{path} has {components} components per voxel (vector/RGB); {what} must be a scalar 3D image")
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        size = image.GetSize()
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and size[2] == 1):
        hint = " (for DICOM, pass the series folder)" if Path(path).is_file() else ""
        raise InputError(f"{path} is a 2D image; {what} must be a 3D image{hint}")
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D image of size {size}; {what} must be a 3D image")
    return image


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D image (CT) as a Volume in RAS.

    Returns array (K, J, I) in the file's pixel type, ijk_to_ras (4, 4) in RAS mm.
    Raises InputError for a missing/corrupt file, a 2D, 4D or vector image.
    """
    image = as_3d_scalar(read_image_file(path), path)
    return Volume(sitk.GetArrayFromImage(image), ijk_to_ras_of(image))


def volume_to_image(volume: Volume) -> sitk.Image:
    """A Volume -> SimpleITK image with LPS geometry (the inverse of ``read_volume``)."""
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image


def write_image_file(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write with compression; InputError (one line) when the path cannot be written."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError:
        reason = "folder missing, not writable, or unsupported extension"
        raise InputError(f"cannot write image {path} ({reason})") from None


def write_volume(volume: Volume, path: str | os.PathLike) -> None:
    """Write a Volume (RAS) to NIfTI/NRRD/MHA; the file holds the usual LPS geometry."""
    write_image_file(volume_to_image(volume), path)
