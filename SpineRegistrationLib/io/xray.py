"""2D X-ray images on disk <-> XrayImage (float32 (rows, cols), bone bright).

Any 2D image SimpleITK reads: PNG, TIFF, JPEG, NRRD, MHA, DICOM (DX/CR/XA). Row 0 is the
first row of the stored array (DESIGN.md); pixel values are kept as stored (no
rescaling), as float32.

Intensity is attenuation-like, bone bright. A DICOM image with PhotometricInterpretation
MONOCHROME1 (minimum displayed white, so bone is stored dark) comes back from
SimpleITK/ITK >= 5.1 already converted to MONOCHROME2 (ITK's GDCMImageIO inverts it
over the stored bit range), so bone is bright after ``read_xray`` without more work.
``invert=True`` (the CLI's ``--invert``) flips any image, after that, as
``max + min - x``, keeping the value range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import XrayGeometry
from .images import read_image_file, write_image_file

#: ITU-R BT.601 luma weights for RGB -> grey.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
_FLOAT_EXTENSIONS = (".nrrd", ".mha", ".mhd", ".tif", ".tiff", ".nii", ".nii.gz")
_PNG_MAX = 65535


@dataclass
class XrayImage:
    """One X-ray.

    array: (rows, cols) float32, bone bright.
    geometry: the view's XrayGeometry (size == (cols, rows)), or None when unknown.
    """

    array: np.ndarray
    geometry: XrayGeometry | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(columns, rows), the order XrayGeometry.size uses."""
        rows, cols = self.array.shape
        return cols, rows


def invert_intensities(array: np.ndarray) -> np.ndarray:
    """``max + min - x``: swap dark and bright, keeping the value range."""
    return array.max() + array.min() - array


def _to_grey_2d(image: sitk.Image, path) -> np.ndarray:
    """A SimpleITK image -> (rows, cols) float32; RGB(A) -> luma; single-slice 3D -> 2D."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        if array.shape[-1] not in (3, 4):
            raise InputError(f"{path} has {array.shape[-1]} components per pixel; an X-ray must be grey or RGB")
        array = (array[..., :3] @ _LUMA_WEIGHTS).astype(np.float32)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise InputError(f"{path} is a 3D image ({array.shape[0]} slices); an X-ray must be 2D")
        array = array[0]
    if array.ndim != 2:
        raise InputError(f"{path} is a {array.ndim}D image; an X-ray must be 2D")
    return array


def read_xray(path: str | os.PathLike, geometry: XrayGeometry | None = None, invert: bool = False) -> XrayImage:
    """Read a 2D X-ray as float32 (rows, cols), bone bright.

    geometry: if given, its size (columns, rows) must match the image.
    invert: flip intensities (``max + min - x``) for images stored bone-dark.
    Raises InputError for a missing/corrupt file, a 3D stack, a constant image or a
    size that does not match the geometry.
    """
    image = read_image_file(path)
    # DICOM MONOCHROME1 needs nothing here: ITK's reader already inverted it (module docstring).
    array = checked_xray_array(_to_grey_2d(image, path), str(path), geometry, invert)
    return XrayImage(array, geometry)


def checked_xray_array(
    array: np.ndarray, label: str, geometry: XrayGeometry | None = None, invert: bool = False
) -> np.ndarray:
    """An X-ray array validated (2D, finite, not constant, of the geometry's size) and
    optionally inverted (``max + min - x``): float32 (rows, columns). ``label`` names it in errors."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"{label} has shape {array.shape}; an X-ray must be a 2D (rows, columns) array")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{label} holds NaN or infinite pixel values")
    if array.max() == array.min():
        raise InputError(f"{label} is a constant image (every pixel is {array.min():g}); nothing to register to")
    if invert:
        array = invert_intensities(array)
    rows, cols = array.shape
    if geometry is not None and tuple(geometry.size) != (cols, rows):
        raise InputError(
            f"{label} is {cols} columns x {rows} rows but its geometry says size {list(geometry.size)} (columns, rows)"
        )
    return array


def check_xray_extension(path: str | os.PathLike) -> None:
    """InputError unless :func:`write_xray` can write ``path`` (by its extension).

    Lets a command refuse a bad output name before doing the work.
    """
    name = Path(path).name.lower()
    if not name.endswith((".png", *_FLOAT_EXTENSIONS)):
        raise InputError(f"cannot write X-ray {path}: expected extension .png or one of {', '.join(_FLOAT_EXTENSIONS)}")


def write_xray(image: np.ndarray | XrayImage, path: str | os.PathLike) -> None:
    """Write a (rows, cols) X-ray.

    ``.png``: 16-bit grey, the array's min..max scaled linearly to 0..65535 (absolute
    values are lost; a constant image is written as zeros).
    ``.nrrd``, ``.mha``, ``.mhd``, ``.tif``/``.tiff``, ``.nii(.gz)``: float32, values kept.
    """
    array = np.asarray(image.array if isinstance(image, XrayImage) else image, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"X-ray array must be 2D (rows, cols), got shape {array.shape}")
    check_xray_extension(path)
    name = Path(path).name.lower()
    if name.endswith(".png"):
        span = float(array.max() - array.min())
        scaled = (array - array.min()) / span * _PNG_MAX if span > 0 else np.zeros_like(array)
        out = sitk.GetImageFromArray(np.round(scaled).astype(np.uint16))
    else:
        out = sitk.GetImageFromArray(array)
    write_image_file(out, path)
